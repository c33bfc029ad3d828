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
``system_fingerprint`` names this server. Settings a user tries the remote path with: ``latency``
(seconds added to each answer, like a hosted model's), ``api_key`` (any other bearer token gets
401) and ``no_logprobs`` (answers never carry logprobs, so clients fall back).

It also offers OpenAI's Batch API (``/v1/files``, ``/v1/batches``: serve_batch.py), each line
answered by :meth:`ModelServer.answer` as if it had been sent alone, so ``--batch`` can be tried
offline. An upload (multipart, the one kind of POST that is not JSON) must carry an
``Authorization`` header, which a web page cannot add to a cross-site request without a
preflight this server never grants.

Extension points (for servers built on this one): every response leaves through
:meth:`Handler.send`, :meth:`ModelServer.answer` turns one authorised POST into a :class:`Reply`,
and :meth:`ModelServer.batch_expired` says when a batch has run out of time.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from blackbox.errors import BlackboxError

from .serve_batch import MAX_FILE_BYTES, WINDOW, BatchService, Refused, route_of
from .serve_lm import CHAT, COMPLETIONS, ServedLM

SERVED_NAME = "efficientnet-lite0"
MAX_BODY = 32 << 20            # bytes per request body (a 4096 px PNG in base64 fits)
SERVE_MAX_PIXELS = 16_000_000  # pixels per image, checked before decoding (decompression bombs)
SOCKET_TIMEOUT = 10.0          # seconds a connection may sit idle mid-request (slow or lying clients)
MAX_CONNECTIONS = 64           # connections handled at once; more are closed at once
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SCORE = "/v1/score"
POST_ROUTES = (*CHAT, *COMPLETIONS, SCORE)
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


def _logprobs(token: str, log_yes: float, top: int) -> dict:
    """The first token's log-probability and its ``top`` likeliest alternatives, as OpenAI lists them."""
    alts = sorted([("Yes", log_yes), ("No", _log_no(log_yes))], key=lambda t: -t[1])
    return {"content": [{"token": token, "logprob": dict(alts).get(token, 0.0), "bytes": list(token.encode()),
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                          for t, lp in alts[:top]]}]}


@dataclass
class Reply:
    """One response: its status, its JSON payload and any extra headers."""

    status: int
    payload: object
    headers: dict | None = None

    @classmethod
    def error(cls, status: int, message: str, kind: str = "invalid_request_error",
              headers: dict | None = None) -> "Reply":
        """An error as OpenAI's API words it."""
        return cls(status, {"error": {"message": message, "type": kind, "code": None}}, headers)

    def encode(self) -> bytes:
        """The body as sent."""
        return json.dumps(self.payload).encode()


class FileReply(Reply):
    """A file's content, sent as it is."""

    def encode(self) -> bytes:
        return self.payload


class _Refusal(Exception):
    """A request answered with an error instead of a completion."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.reply = Reply.error(status, message, kind)


@dataclass
class _Question:
    """A chat request about one image: 'Is there a {label} ...?', or a 0-100 confidence."""

    text: str
    image: np.ndarray
    label: str
    confidence: bool
    n: int
    temperature: float
    top: int        # top_logprobs asked for
    logprobs: bool  # logprobs asked for


def _question(body: dict, model_id: str) -> _Question:
    """The question a chat request asks; raises _Refusal (or ValueError, a 400) when it asks none."""
    text, url = _parts(body)
    if body.get("model") != model_id:
        raise _Refusal(404, f"The model '{body.get('model')}' does not exist", "model_not_found")
    if url is None:
        raise _Refusal(400, "this server needs an image part in the user message")
    image = _decode_image(url)
    match = _QUESTION.search(text)
    if not match:
        raise _Refusal(400, "ask 'Is there a {label} in this image?'")
    n = int(body.get("n") or 1)
    temperature = 1.0 if body.get("temperature") is None else float(body["temperature"])
    top = int(body.get("top_logprobs") or 0)
    if not (1 <= n <= 128 and 0 <= top <= 20 and 0 <= temperature <= 2):
        raise _Refusal(400, "n must be 1..128, top_logprobs 0..20 and temperature 0..2")
    return _Question(text, image, match.group(1).strip(" ?."), bool(_CONFIDENCE.search(text)), n, temperature,
                     top, bool(body.get("logprobs")))


def send_json(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict | None = None) -> None:
    """Answer ``data`` (JSON bytes, unless ``headers`` name another Content-Type) with ``status``
    and a Content-Length."""
    headers = dict(headers or {})
    handler.send_response(status)
    handler.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
    handler.send_header("Content-Length", str(len(data)))
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


class Handler(BaseHTTPRequestHandler):
    """One connection to a :class:`ModelServer`: checks the request, then sends the server's reply."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stalls)
    timeout = SOCKET_TIMEOUT        # a connection idle this long mid-request is dropped
    server: "ModelServer"

    def log_message(self, format, *args):  # quiet; never logs headers (keys)
        if self.server.verbose:
            super().log_message(format, *args)

    def send(self, status: int, data: bytes, headers: dict | None = None) -> None:
        """Every response leaves here: ``data`` (JSON bytes) with ``status``."""
        send_json(self, status, data, headers)

    def reply(self, reply: Reply) -> None:
        self.send(reply.status, reply.encode(), reply.headers)

    def refuse(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self.reply(Reply.error(status, message, kind))

    def do_GET(self):
        route = self.path.rstrip("/")
        if not self.host_allowed():
            return
        kind, ids, query = route_of(self.path)
        if route in ("/v1/models", "/models") or route.startswith(("/v1/models/", "/models/")):
            if self.authorised():
                self.reply(self.server.models(route))
        elif kind in ("batches", "batch", "file", "content"):
            if self.authorised():
                self.reply(self.server.batch_request(kind, ids, query))
        else:
            self.refuse(404, f"no route {self.path}")

    def do_POST(self):
        if not self.host_allowed():
            self.close_connection = True
            return
        kind, ids, _ = route_of(self.path)
        if kind == "files" and not self.headers.get("Authorization"):
            self.close_connection = True  # the body is not read: the connection cannot be reused
            return self.refuse(401, "an upload needs an Authorization header")
        raw = self.read_body(upload=kind == "files")
        if raw is None:
            return
        route = self.path.rstrip("/")
        if route not in POST_ROUTES and kind not in ("files", "batches", "cancel"):
            return self.refuse(404, f"no route {self.path}")
        if not self.authorised():
            return
        if kind:
            return self.reply(self.server.batch_request(kind, ids, raw, self.headers.get("Content-Type", "")))
        if self.server.latency:
            time.sleep(self.server.latency)
        self.reply(self.server.answer(route, raw))

    def authorised(self) -> bool:
        """True when no key is required or the request carries it; otherwise answers 401."""
        key = self.server.api_key
        given = self.headers.get("Authorization", "").encode("utf-8", "replace")
        if key is None or hmac.compare_digest(given, f"Bearer {key}".encode()):
            return True
        self.refuse(401, "Incorrect API key provided.", "invalid_api_key")
        return False

    def host_allowed(self) -> bool:
        """The Host header must name this server (a web page's DNS-rebinding requests do not)."""
        if str(self.server.server_address[0]) not in LOOPBACK:
            return True  # served to the network on purpose (an API key is required then)
        host = (self.headers.get("Host") or "").strip().lower()
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if name not in LOOPBACK:
            self.refuse(403, f"host {host!r} is not allowed")
            return False
        return True

    def read_body(self, upload: bool = False) -> bytes | None:
        """The request body, or None after answering an error (size, type or a lying length).
        JSON only (a web page cannot post JSON to us without a preflight), except an ``upload``:
        multipart, up to a request file's size (its Authorization header is the safeguard)."""
        self.close_connection = True  # until the body is read whole, the connection cannot be reused
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        wanted = "multipart/form-data" if upload else "application/json"
        if ctype != wanted:
            self.refuse(415, f"send the request as Content-Type: {wanted}")
            return None
        if self.headers.get("Transfer-Encoding"):
            self.refuse(411, "send a Content-Length (no chunked bodies)")
            return None
        text = (self.headers.get("Content-Length") or "").strip()
        if not text.isdigit():
            self.refuse(400 if text else 411, f"bad Content-Length {text!r}" if text else "Content-Length required")
            return None
        length, limit = int(text), MAX_FILE_BYTES + (1 << 20) if upload else MAX_BODY
        if length > limit:
            self.refuse(413, f"the request body is larger than {limit >> 20} MB")
            return None
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, OSError):
            return None  # the client went quiet or away: drop the connection
        if len(raw) != length:
            return None
        self.close_connection = False
        return raw


class ModelServer(ThreadingHTTPServer):
    """The server: ``scorer`` answers image questions (the embedded classifier unless given),
    ``text_model`` text requests (the embedded SmolLM2, loaded on the first one). ``latency`` adds
    seconds to each answer; with ``api_key`` set, any other bearer token gets 401; ``no_logprobs``
    leaves logprobs out of every image answer; ``seed`` seeds the sampled answers."""

    daemon_threads = True
    request_queue_size = 256
    handler_class = Handler

    def __init__(self, host: str = "127.0.0.1", port: int = 0, scorer=None, model_id: str = SERVED_NAME, *,
                 latency: float = 0.0, api_key: str | None = None, no_logprobs: bool = False, seed: int = 0,
                 verbose: bool = False, price: dict | None = None, text_model=None):
        super().__init__((host, port), self.handler_class)
        from blackbox import __version__

        self.scorer = scorer if scorer is not None else ClassifierScorer()
        self.model_id = model_id
        self.latency = latency
        self.api_key = api_key
        self.no_logprobs = no_logprobs
        self.verbose = verbose
        self.fingerprint = f"blackbox-serve-{__version__}"
        self.text_model = text_model if text_model is not None else ServedLM(fingerprint=self.fingerprint)
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.price = dict(price) if price is not None else {"input": 0.0, "output": 0.0, "batch": 0.5}
        self.batches = BatchService(self)
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

    def models(self, route: str) -> Reply:
        """``GET /v1/models`` (the list) or ``GET /v1/models/{id}`` (one card)."""
        if route in ("/v1/models", "/models"):
            return Reply(200, {"object": "list", "data": [self.model_card(), self.text_model.card()]})
        name = route.rsplit("/", 1)[1]
        if name != self.model_id:
            return Reply.error(404, f"The model '{name}' does not exist", "model_not_found")
        return Reply(200, self.model_card())

    def answer(self, route: str, raw: bytes) -> Reply:
        """The reply to one authorised POST to one of POST_ROUTES (``raw``: its JSON body)."""
        if self.text_model.handles(route, raw):  # the embedded LM: adapters/remote/serve_lm.py
            return Reply(*self.text_model.answer(route, raw))
        if route == SCORE:
            return self.score(raw)
        return self.chat(raw)

    def chat(self, raw: bytes) -> Reply:
        """A chat completion answering a question about an image."""
        try:
            question = _question(json.loads(raw or b"{}"), self.model_id)
            log_yes = min(0.0, max(self.scorer.log_prob(question.image, question.label), -100.0))
        except _Refusal as refusal:
            return refusal.reply
        except BlackboxError as exc:  # an unknown label, an image too large or not an image
            return Reply.error(400, str(exc))
        except (ValueError, TypeError, AttributeError, OSError, OverflowError) as exc:
            return Reply.error(400, f"bad request: {exc}")
        return Reply(200, self._completion(raw, question, log_yes))

    def _completion(self, raw: bytes, question: _Question, log_yes: float) -> dict:
        with_logprobs = question.logprobs and not self.no_logprobs
        choices = []
        for i in range(question.n):
            token = self._token(question, math.exp(log_yes))
            choices.append({"index": i, "finish_reason": "stop" if question.confidence else "length",
                            "message": {"role": "assistant", "content": token},
                            "logprobs": _logprobs(token, log_yes, question.top) if with_logprobs else None})
        prompt_tokens = 85 + len(question.text) // 4
        return {"id": f"chatcmpl-{hashlib.sha1(raw).hexdigest()[:16]}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model_id, "system_fingerprint": self.fingerprint,
                "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": question.n,
                                              "total_tokens": prompt_tokens + question.n}}

    def _token(self, question: _Question, p: float) -> str:
        """One answer: the confidence as text, a sample from p, or the likelier of Yes and No."""
        if question.confidence:
            return str(int(round(100 * p)))
        if question.temperature > 0 and question.n > 1:
            with self.lock:
                return "Yes" if self.rng.random() < p else "No"
        return "Yes" if p >= 0.5 else "No"

    def batch_request(self, kind: str, ids: list[str], raw: bytes | str = b"", content_type: str = "") -> Reply:
        """One authorised request to the Batch API (see serve_batch.py): ``kind`` from
        :func:`~.serve_batch.route_of`, ``raw`` the body of a POST or the query of a GET."""
        service = self.batches
        try:
            if kind == "content":
                return FileReply(200, service.file(ids[0]).data, {"Content-Type": "application/octet-stream"})
            if kind == "file":
                return Reply(200, service.file(ids[0]).card())
            if kind == "batch":
                return Reply(200, service.batch(ids[0]).card())
            if kind == "cancel":
                return Reply(*service.cancel(ids[0]))
            if kind == "files":
                return Reply(*service.upload(content_type, raw))
            if kind == "batches" and isinstance(raw, str):
                return Reply(*service.listing(raw))
            return Reply(*service.create(raw))
        except Refused as exc:
            return Reply.error(exc.status, str(exc))
        except (ValueError, TypeError) as exc:
            return Reply.error(400, f"bad request: {exc}")

    def batch_expired(self, batch, answered: int) -> bool:
        """Has ``batch`` (``answered`` lines done) run out of its completion window?"""
        return time.time() >= batch.created + WINDOW

    def score(self, raw: bytes) -> Reply:
        """A plain JSON endpoint (for the generic HTTP adapter): {image, label} -> {log_prob}."""
        try:
            body = json.loads(raw or b"{}")
            log_p = self.scorer.log_prob(_decode_image(body["image"]), str(body["label"]))
        except BlackboxError as exc:  # an unknown label, an image too large or not an image
            return Reply.error(400, str(exc))
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            return Reply.error(400, f"bad request: {exc}")
        return Reply(200, {"result": {"log_prob": max(log_p, -100.0)}, "model": self.model_id})

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
        """Serve in a background thread; stop with :meth:`stop`."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.batches.closing.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def serve(host: str = "127.0.0.1", port: int = 8000, announce: Callable[[str], None] = print, **settings) -> None:
    """Run until interrupted (the ``blackbox serve`` command); ``settings`` go to :class:`ModelServer`."""
    server = ModelServer(host, port, **settings)
    announce(f"serving {server.model_id} (OpenAI-compatible) on {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
