"""A deliberately misbehaving OpenAI-compatible server for the fault tests (loopback only).

The endpoint is hostile, not a mock of ours: it speaks HTTP on 127.0.0.1 and counts what a real
provider would bill: every request it starts answering with a 200 is *paid*, with the tokens its
``usage`` reports and their price. A behaviour decides each answer::

    with Hostile(behaviour) as srv:         # behaviour(handler, request_json, number) -> None
        ... srv.url, srv.paid, srv.tokens, srv.cost, srv.requests

The default behaviour answers the yes/no question like a sane model (P(Yes) from the image's
brightness) with first-token logprobs and usage.
"""
from __future__ import annotations

import base64
import io
import json
import math
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from blackbox.adapters.remote.serve import send_json

PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens (the server's own model card)
MODEL = "hostile-vision"


def p_yes(request: dict) -> float:
    """P(Yes) for the request's image: its contrast (0.05..0.95), which blurring a patch lowers."""
    from PIL import Image

    try:
        url = request["messages"][0]["content"][1]["image_url"]["url"]
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            contrast = float(np.asarray(im.convert("L"), dtype=np.float32).std() / 255.0 / 0.3)
    except Exception:  # noqa: BLE001 - a hostile server does not care
        contrast = 0.5
    return 0.05 + 0.9 * min(contrast, 1.0)


def completion(request: dict, *, prompt_tokens: int = 100, logprobs=True, yes=None, no=None,
               content: str | None = None) -> dict:
    """A well-formed chat completion for a yes/no question (overridable pieces)."""
    p = p_yes(request)
    yes = math.log(p) if yes is None else yes
    no = math.log(1 - p) if no is None else no
    if content is not None:
        token = content
    elif "0 to 100" in json.dumps(request):
        token = str(int(round(100 * p)))
    elif (request.get("temperature") or 0) > 0:  # sampled: Yes with probability p
        token = "Yes" if random.random() < p else "No"
    else:
        token = "Yes" if p >= 0.5 else "No"
    choice = {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": token},
              "logprobs": None}
    if logprobs and request.get("logprobs"):
        choice["logprobs"] = {"content": [{"token": token, "logprob": yes if token == "Yes" else no,
                                           "top_logprobs": [{"token": "Yes", "logprob": yes},
                                                            {"token": "No", "logprob": no}]}]}
    return {"id": "x", "object": "chat.completion", "model": MODEL, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Hostile"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.rstrip("/").endswith(f"/models/{MODEL}"):
            return self.json(200, {"id": MODEL, "object": "model", "pricing": PRICE})
        self.json(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        with self.server.lock:
            self.server.requests += 1
            number = self.server.requests
        try:
            request = json.loads(raw)
        except ValueError:
            request = {}
        try:
            self.server.behaviour(self, request, number)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client gave up: fine

    # -- what behaviours call -----------------------------------------------------------------
    def pay(self, usage: dict | None) -> None:
        """Bill this request (a provider bills what it started answering with a 200)."""
        usage = usage or {}
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        with self.server.lock:
            self.server.paid += 1
            self.server.tokens += tokens
            self.server.cost += (int(usage.get("prompt_tokens") or 0) * PRICE["input"]
                                 + int(usage.get("completion_tokens") or 0) * PRICE["output"]) / 1e6

    def json(self, status: int, payload, raw: bytes | None = None, headers: dict | None = None) -> None:
        send_json(self, status, raw if raw is not None else json.dumps(payload).encode(), headers)

    def answer(self, payload: dict) -> None:
        """A paid 200 answer."""
        self.pay(payload.get("usage") if isinstance(payload, dict) else None)
        self.json(200, payload)

    def trickle(self, seconds: float = 30.0, every: float = 0.2) -> None:
        """Slow-loris: a paid 200 whose body comes one byte at a time, never finishing in time."""
        self.pay({"prompt_tokens": 100, "completion_tokens": 1})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.server.stopping:
            self.wfile.write(b" ")
            self.wfile.flush()
            time.sleep(every)

    def flood(self, megabytes: int = 50) -> None:
        """A paid 200 with a body of ``megabytes`` (valid JSON padded with spaces)."""
        payload = json.dumps(completion({}, logprobs=False)).encode()
        size = megabytes << 20
        self.pay({"prompt_tokens": 100, "completion_tokens": 1})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(payload)
        chunk = b" " * (1 << 20)
        left = size - len(payload)
        while left > 0 and not self.server.stopping:
            self.wfile.write(chunk[:left])
            left -= len(chunk)


def sane(handler: Handler, request: dict, number: int) -> None:
    handler.answer(completion(request))


class Hostile(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour=sane):
        super().__init__(("127.0.0.1", 0), Handler)
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.requests = self.paid = self.tokens = 0
        self.cost = 0.0
        self.stopping = False
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        pass  # a client that hangs up is part of the game

    def __enter__(self) -> "Hostile":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True
        self.shutdown()
        self.server_close()
        self._thread.join(5)
