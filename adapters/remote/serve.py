"""``blackbox serve``: an OpenAI-compatible chat server on loopback, backed by the embedded classifier
(and, for text, the embedded SmolLM2 on ``/v1/completions`` and ``/v1/chat/completions``: serve_lm.py).

``GET /v1/models`` lists ``efficientnet-lite0`` and ``GET /v1/models/efficientnet-lite0`` is its
model card, which describes the server to clients: ``input_view`` (how the model looks at an
image: the embedded classifier's centre crop at 224 x 224, so a client sends exactly that and the
remote map matches the local one) and ``pricing`` (zero: it is free). ``POST /v1/chat/completions``
takes one user message with a text part and an image part (a PNG/JPEG data URL) and answers closed
questions (``POST /v1/score`` with ``{"image": data URL, "label": ...}`` ->
``{"result": {"log_prob": ..}}`` is a plain JSON endpoint for the generic HTTP adapter):

* "Is there a {label} in this image?" -> "Yes" / "No"; with ``logprobs`` and ``top_logprobs`` the
  first token's alternatives are ``Yes`` with log p and ``No`` with log(1 - p), where p is the
  classifier's probability of the label (for the received image, resized to 224 x 224 if it is
  not already that size);
* a question asking for a 0-100 confidence -> round(100 p) as text.

With ``temperature > 0`` and ``n > 1`` answers are sampled from p (for the sampled-frequency
fallback). Usage is reported (a nominal 85 prompt tokens per image plus text/4), and
``system_fingerprint`` names this server. :class:`FaultPlan` injects faults (rate limits with
Retry-After, 500s, slow answers, malformed JSON, missing logprobs, a required API key) for tests
and benchmarks; every request and every paid (200) answer is counted.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from blackbox.errors import BlackboxError

SERVED_NAME = "efficientnet-lite0"
MAX_BODY = 32 << 20            # bytes per request body (a 4096 px PNG in base64 fits)
SERVE_MAX_PIXELS = 16_000_000  # pixels per image, checked before decoding (decompression bombs)
SOCKET_TIMEOUT = 10.0          # seconds a connection may sit idle mid-request (slow or lying clients)
MAX_CONNECTIONS = 64           # connections handled at once; more are closed at once
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_QUESTION = re.compile(r"\bis there (?:an?\s+|any\s+|the\s+)?(.+?)\s+in (?:this|the) (?:image|picture|photo)", re.I)
_CONFIDENCE = re.compile(r"confiden|0\s*(?:-|to)\s*100", re.I)


class ClassifierScorer:
    """p(label | image) from the embedded EfficientNet-Lite0, for the received image at 224 x 224."""

    name = SERVED_NAME

    def __init__(self, model=None):
        if model is None:
            from blackbox.adapters.embedded import embedded_model

            model = embedded_model()
        self.model = model
        self._targets: dict[str, int] = {}
        self._lock = threading.Lock()

    def input_view(self) -> dict:
        """How the classifier looks at an image (its own view rule), for the model card."""
        return {"kind": "center_crop", "size": int(self.model.input_size),
                "crop_fraction": float(self.model.crop_fraction)}

    def index(self, label: str) -> int:
        with self._lock:
            if label not in self._targets:  # an unknown label raises InputError (a 400)
                self._targets[label] = self.model.resolve_target(label).index
            return self._targets[label]

    def log_prob(self, image: np.ndarray, label: str) -> float:
        from blackbox.images import resize

        index = self.index(label)
        size = self.model.input_size
        if image.shape[:2] != (size, size):
            image = np.clip(resize(image, size, size, resample="bicubic"), 0.0, 1.0)
        return float(self.model.log_probs(image[None])[0, index])


class BrightnessScorer:
    """A cheap deterministic stand-in (benchmarks of the HTTP path): log p = -(1 - mean brightness)."""

    name = "brightness"

    def input_view(self) -> None:  # any view will do: clients use their default
        return None

    def log_prob(self, image: np.ndarray, label: str) -> float:
        return float(-1.0 + 0.98 * image.mean())


@dataclass
class FaultPlan:
    """Faults to inject, each with a probability per request (seeded), plus a fixed latency."""

    latency: float = 0.0
    rate_limit: float = 0.0        # answer 429 with Retry-After
    retry_after: float = 0.05
    server_error: float = 0.0      # answer 500
    slow: float = 0.0              # sleep slow_seconds before answering (past a client timeout)
    slow_seconds: float = 3.0
    malformed: float = 0.0         # 200 with a truncated JSON body
    missing_logprobs: float = 0.0  # 200 without logprobs although they were requested
    api_key: str | None = None     # when set, any other bearer token gets 401
    first: tuple = ()              # fault names forced on the first requests, in order
    seed: int = 0


@dataclass
class ServerCounters:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    paid: Counter = field(default_factory=Counter)  # request-body hash -> 200 answers

    @property
    def answered(self) -> int:
        return sum(self.paid.values())

    @property
    def duplicate_paid(self) -> int:
        return sum(c - 1 for c in self.paid.values() if c > 1)


def _decode_image(url) -> np.ndarray:
    """A data URL as a float image; at most SERVE_MAX_PIXELS, checked before decoding."""
    from blackbox.images import decode_image

    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise ValueError("only data: URLs are accepted (base64 PNG or JPEG)")
    try:
        raw = base64.b64decode(url.split(",", 1)[1], validate=False)
    except (ValueError, TypeError):
        raise ValueError("the image is not valid base64") from None
    return decode_image(io.BytesIO(raw), "the image", limit=min(SERVE_MAX_PIXELS, _max_pixels()))


def _max_pixels() -> int:
    from blackbox.images import max_pixels

    return max_pixels()


def _parts(body: dict) -> tuple[str, str | None]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    text, image = [], None
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            text.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    text.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    iu = part.get("image_url")
                    image = iu.get("url") if isinstance(iu, dict) else iu
    return " ".join(text), image


def _log_no(log_yes: float) -> float:
    return math.log(-math.expm1(log_yes)) if log_yes < -1e-12 else -30.0


def send_json(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict | None = None) -> None:
    """Answer ``data`` (JSON bytes) with ``status`` and a Content-Length."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stalls)
    timeout = SOCKET_TIMEOUT        # a connection idle this long mid-request is dropped
    server: "ModelServer"

    def log_message(self, format, *args):  # quiet; never logs headers (keys)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload, headers: dict | None = None, raw: bytes | None = None):
        with self.server.lock:  # counted before the answer leaves: a client that has it sees it counted
            self.server.counters.by_status[status] += 1
        send_json(self, status, raw if raw is not None else json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error", headers=None):
        self._send(status, {"error": {"message": message, "type": kind, "code": None}}, headers)

    def do_GET(self):
        route = self.path.rstrip("/")
        if not self._host_allowed():
            return
        if route in ("/v1/models", "/models"):
            if not self._authorised():
                return
            self._send(200, {"object": "list", "data": [self.server.model_card(), self.server.text_model.card()]})
        elif route.startswith(("/v1/models/", "/models/")):
            if not self._authorised():
                return
            if route.rsplit("/", 1)[1] != self.server.model_id:
                return self._error(404, f"The model '{route.rsplit('/', 1)[1]}' does not exist", "model_not_found")
            self._send(200, self.server.model_card())
        elif route == "/v1/stats":  # request counters (tests and benchmarks)
            if not self._authorised():
                return
            c = self.server.counters
            with self.server.lock:
                stats = {"requests": c.requests, "answered": c.answered, "duplicate_paid": c.duplicate_paid,
                         "max_in_flight": c.max_in_flight, "by_status": dict(c.by_status), "faults": dict(c.faults)}
            self._send(200, stats)
        else:
            self._error(404, f"no route {self.path}")

    def _authorised(self) -> bool:
        key = self.server.faults.api_key
        if key is None:
            return True
        if self.headers.get("Authorization", "") != f"Bearer {key}":
            self._error(401, "Incorrect API key provided.", "invalid_api_key")
            return False
        return True

    def _host_allowed(self) -> bool:
        """The Host header must name this server (a web page's DNS-rebinding requests do not)."""
        if str(self.server.server_address[0]) not in LOOPBACK:
            return True  # served to the network on purpose (an API key is required then)
        host = (self.headers.get("Host") or "").strip().lower()
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if name not in LOOPBACK:
            self._error(403, f"host {host!r} is not allowed")
            return False
        return True

    def _body(self) -> bytes | None:
        """The request body, or None after answering an error (size, type or a lying length)."""
        self.close_connection = True  # until the body is read whole, the connection cannot be reused
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":  # a web page cannot post JSON to us without a preflight
            self._error(415, "send the request as Content-Type: application/json")
            return None
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "send a Content-Length (no chunked bodies)")
            return None
        text = (self.headers.get("Content-Length") or "").strip()
        if not text.isdigit():
            self._error(400 if text else 411, f"bad Content-Length {text!r}" if text else "Content-Length required")
            return None
        length = int(text)
        if length > MAX_BODY:
            self._error(413, f"the request body is larger than {MAX_BODY >> 20} MB")
            return None
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, OSError):
            return None  # the client went quiet or away: drop the connection
        if len(raw) != length:
            return None
        self.close_connection = False
        return raw

    def do_POST(self):
        if not self._host_allowed():
            self.close_connection = True
            return
        raw = self._body()
        if raw is None:
            return
        srv = self.server
        with srv.lock:
            srv.counters.requests += 1
            number = srv.counters.requests
            roll = srv.rng.random()
            srv.counters.in_flight += 1
            srv.counters.max_in_flight = max(srv.counters.max_in_flight, srv.counters.in_flight)
        try:
            self._post(raw, roll, number)
        finally:
            with srv.lock:
                srv.counters.in_flight -= 1

    def _post(self, raw: bytes, roll: float, number: int):
        srv = self.server
        route = self.path.rstrip("/")
        if srv.text_model.handles(route, raw):  # the embedded LM: adapters/remote/serve_lm.py
            if self._authorised():
                status, payload = srv.text_model.answer(route, raw)
                self._send(status, payload)
            return
        if route not in ("/v1/chat/completions", "/chat/completions", "/v1/score"):
            return self._error(404, f"no route {self.path}")
        if not self._authorised():
            return
        if route == "/v1/score":
            return self._score(raw)
        f = srv.faults
        if f.latency:
            time.sleep(f.latency)
        # one roll per request decides its fault (probabilities stack in this order)
        edges = [("rate_limit", f.rate_limit), ("server_error", f.server_error), ("slow", f.slow),
                 ("malformed", f.malformed), ("missing_logprobs", f.missing_logprobs)]
        fault, acc = None, 0.0
        if number <= len(f.first):
            fault, edges = f.first[number - 1], []
        for name, p in edges:
            acc += p
            if roll < acc:
                fault = name
                break
        if fault:
            with srv.lock:
                srv.counters.faults[fault] += 1
        if fault == "rate_limit":
            return self._error(429, "Rate limit reached; try again later.", "rate_limit_error",
                               {"Retry-After": f"{f.retry_after:g}"})
        if fault == "server_error":
            return self._error(500, "The server had an error while processing your request.", "server_error")
        if fault == "slow":
            time.sleep(f.slow_seconds)
        try:
            body = json.loads(raw or b"{}")
            text, url = _parts(body)
            if body.get("model") != srv.model_id:
                return self._error(404, f"The model '{body.get('model')}' does not exist", "model_not_found")
            if url is None:
                return self._error(400, "this server needs an image part in the user message")
            image = _decode_image(url)
            confidence = bool(_CONFIDENCE.search(text))
            m = _QUESTION.search(text)
            if not m:
                return self._error(400, "ask 'Is there a {label} in this image?'")
            n = int(body.get("n") or 1)
            temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
            k = int(body.get("top_logprobs") or 0)
            if not (1 <= n <= 128 and 0 <= k <= 20 and 0 <= temperature <= 2):
                return self._error(400, "n must be 1..128, top_logprobs 0..20 and temperature 0..2")
            log_yes = min(0.0, max(srv.scorer.log_prob(image, m.group(1).strip(" ?.")), -100.0))
        except BlackboxError as exc:  # an unknown label, an image too large or not an image
            return self._error(400, str(exc))
        except (ValueError, TypeError, AttributeError, OSError, OverflowError) as exc:
            return self._error(400, f"bad request: {exc}")
        p = math.exp(log_yes)
        want_lp = bool(body.get("logprobs")) and fault != "missing_logprobs" and not srv.no_logprobs
        choices = []
        for i in range(n):
            if confidence:
                token = str(int(round(100 * p)))
            elif temperature > 0 and n > 1:
                with srv.lock:
                    token = "Yes" if srv.rng.random() < p else "No"
            else:
                token = "Yes" if p >= 0.5 else "No"
            choice = {"index": i, "finish_reason": "length" if not confidence else "stop",
                      "message": {"role": "assistant", "content": token}, "logprobs": None}
            if want_lp:
                alts = sorted([("Yes", log_yes), ("No", _log_no(log_yes))], key=lambda t: -t[1])
                own = dict(alts).get(token, 0.0)
                choice["logprobs"] = {"content": [{
                    "token": token, "logprob": own, "bytes": list(token.encode()),
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts[:k]]}]}
            choices.append(choice)
        prompt_tokens = 85 + len(text) // 4
        payload = {"id": f"chatcmpl-{hashlib.sha1(raw).hexdigest()[:16]}", "object": "chat.completion",
                   "created": int(time.time()), "model": srv.model_id, "system_fingerprint": srv.fingerprint,
                   "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                                 "total_tokens": prompt_tokens + n}}
        if fault is None:  # a full, well-formed answer the client receives
            with srv.lock:
                srv.counters.paid[hashlib.sha256(raw).hexdigest()] += 1
        if fault == "malformed":
            data = json.dumps(payload).encode()
            return self._send(200, None, raw=data[: len(data) // 2])
        self._send(200, payload)


    def _score(self, raw: bytes):
        """A plain JSON endpoint (for the generic HTTP adapter): {image, label} -> {log_prob}."""
        srv = self.server
        if srv.faults.latency:
            time.sleep(srv.faults.latency)
        try:
            body = json.loads(raw or b"{}")
            log_p = srv.scorer.log_prob(_decode_image(body["image"]), str(body["label"]))
        except BlackboxError as exc:  # an unknown label, an image too large or not an image
            return self._error(400, str(exc))
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            return self._error(400, f"bad request: {exc}")
        with srv.lock:
            srv.counters.paid[hashlib.sha256(raw).hexdigest()] += 1
        self._send(200, {"result": {"log_prob": max(log_p, -100.0)}, "model": srv.model_id})


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, host: str = "127.0.0.1", port: int = 0, scorer=None, faults: FaultPlan | None = None,
                 model_id: str = SERVED_NAME, no_logprobs: bool = False, verbose: bool = False,
                 price: dict | None = None, text_model=None):
        super().__init__((host, port), _Handler)
        from blackbox import __version__

        from .serve_lm import ServedLM

        self.scorer = scorer if scorer is not None else ClassifierScorer()
        self.faults = faults or FaultPlan()
        self.model_id = model_id
        self.no_logprobs = no_logprobs
        self.verbose = verbose
        self.fingerprint = f"blackbox-serve-{__version__}"
        self.text_model = text_model if text_model is not None else ServedLM(fingerprint=self.fingerprint)
        self.counters = ServerCounters()
        self.lock = threading.Lock()
        self.rng = random.Random(self.faults.seed)
        self.price = dict(price) if price is not None else {"input": 0.0, "output": 0.0}
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread: threading.Thread | None = None

    def model_card(self) -> dict:
        """What this server says about its model: OpenAI's model object plus how the model looks
        at an image and what a request costs (USD per million tokens)."""
        card = {"id": self.model_id, "object": "model", "created": 0, "owned_by": "blackbox",
                "pricing": {**self.price, "unit": "USD per 1M tokens"}}
        view = self.scorer.input_view() if hasattr(self.scorer, "input_view") else None
        if view:
            card["input_view"] = view
        return card

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return  # the client gave up (e.g. its timeout) or went quiet: nothing to report
        super().handle_error(request, client_address)

    def process_request(self, request, client_address):
        """At most MAX_CONNECTIONS handled at once: a flood of idle connections cannot pin the
        server's threads (each also times out after SOCKET_TIMEOUT)."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ModelServer":
        """Serve in a background thread (tests, benchmarks); stop with :meth:`stop`."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def serve(host: str = "127.0.0.1", port: int = 8000, announce: Callable[[str], None] = print, **kwargs) -> None:
    """Run until interrupted (the ``blackbox serve`` command)."""
    server = ModelServer(host, port, **kwargs)
    announce(f"serving {server.model_id} (OpenAI-compatible) on {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
