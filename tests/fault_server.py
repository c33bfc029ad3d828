"""A loopback test server: ``blackbox serve``'s ModelServer with injected faults and counters.

Tests and benchmarks need an endpoint that misbehaves the way hosted ones do (rate limits with
Retry-After, 500s, slow answers, malformed JSON, answers without the logprobs asked for) and that
counts what a provider would: every request, every status (counted before the response leaves, so
a client holding an answer sees it counted), every paid answer by request body (a body paid twice is
a duplicate). It speaks real HTTP on 127.0.0.1::

    srv = FaultServer(scorer=BrightnessScorer(), faults=FaultPlan(rate_limit=0.1)).start()
    ... srv.url, srv.counters.answered, srv.counters.duplicate_paid ...; srv.stop()

Batches (the server's Batch API) are answered line by line through the same ``answer``, so their
lines are counted and faulted alike; ``FaultPlan.expire_batches`` makes the first batches expire
half-done. ``GET /v1/stats`` returns the counters as JSON (for a server in another process). Run
as a script, it serves until terminated and prints its URL first (``python tests/fault_server.py --help``).
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np

from blackbox.adapters.remote.serve import Handler, ModelServer, Reply
from blackbox.adapters.remote.serve_lm import CHAT

FAULTS = ("rate_limit", "server_error", "slow", "malformed", "missing_logprobs")


class BrightnessScorer:
    """A cheap deterministic scorer for the HTTP path: log p = -1 + 0.98 x mean brightness."""

    name = "brightness"

    def input_view(self) -> None:  # describes no view: clients use their own
        return None

    def log_prob(self, image: np.ndarray, label: str) -> float:
        return float(-1.0 + 0.98 * image.mean())


@dataclass
class FaultPlan:
    """Faults injected into image chat answers, each with a probability per request (seeded)."""

    rate_limit: float = 0.0        # answer 429 with Retry-After
    retry_after: float = 0.05
    server_error: float = 0.0      # answer 500
    slow: float = 0.0              # sleep slow_seconds before answering (past a client's timeout)
    slow_seconds: float = 3.0
    malformed: float = 0.0         # a 200 whose JSON body is cut in half
    missing_logprobs: float = 0.0  # a 200 without the logprobs asked for
    first: tuple = ()              # faults forced on the first image chat requests, in order
    expire_batches: tuple = ()     # the n-th batch created expires after this many of its lines
    seed: int = 0


@dataclass
class Counters:
    requests: int = 0              # POSTs received
    in_flight: int = 0
    max_in_flight: int = 0
    chats: int = 0                 # image chat requests that reached the fault draw
    by_status: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    paid: Counter = field(default_factory=Counter)  # request-body hash -> full 200 answers

    @property
    def answered(self) -> int:
        return sum(self.paid.values())

    @property
    def duplicate_paid(self) -> int:
        return sum(c - 1 for c in self.paid.values() if c > 1)

    def snapshot(self) -> dict:
        return {"requests": self.requests, "answered": self.answered, "duplicate_paid": self.duplicate_paid,
                "max_in_flight": self.max_in_flight, "by_status": dict(self.by_status), "faults": dict(self.faults)}


class Truncated(Reply):
    """A 200 whose body stops half-way (malformed JSON)."""

    def encode(self) -> bytes:
        data = super().encode()
        return data[: len(data) // 2]


class CountingHandler(Handler):
    server: "FaultServer"

    def send(self, status: int, data: bytes, headers: dict | None = None) -> None:
        with self.server.lock:  # counted before the answer leaves: a client that has it sees it counted
            self.server.counters.by_status[status] += 1
        super().send(status, data, headers)

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/stats":
            return super().do_GET()
        if self.host_allowed() and self.authorised():
            with self.server.lock:
                stats = self.server.counters.snapshot()
            stats["batches"] = self.server.batch_sizes()
            self.reply(Reply(200, stats))

    def do_POST(self):
        c = self.server.counters
        with self.server.lock:
            c.requests += 1
            c.in_flight += 1
            c.max_in_flight = max(c.max_in_flight, c.in_flight)
        try:
            super().do_POST()
        finally:
            with self.server.lock:
                c.in_flight -= 1


class FaultServer(ModelServer):
    """ModelServer (same arguments) plus ``faults``; ``counters`` count what it was sent and paid."""

    handler_class = CountingHandler

    def __init__(self, *args, faults: FaultPlan | None = None, **settings):
        super().__init__(*args, **settings)
        self.faults = faults or FaultPlan()
        self.counters = Counters()
        self._draws = random.Random(self.faults.seed)

    def answer(self, route: str, raw: bytes) -> Reply:
        image_chat = route in CHAT and not self.text_model.handles(route, raw)
        fault = self._fault() if image_chat else None
        if fault == "rate_limit":
            return Reply.error(429, "Rate limit reached; try again later.", "rate_limit_error",
                               {"Retry-After": f"{self.faults.retry_after:g}"})
        if fault == "server_error":
            return Reply.error(500, "The server had an error while processing your request.", "server_error")
        if fault == "slow":
            time.sleep(self.faults.slow_seconds)
        reply = super().answer(route, raw)
        if reply.status != 200:
            return reply
        if fault is None:  # a full, well-formed answer, counted before the handler sends it
            with self.lock:
                self.counters.paid[hashlib.sha256(raw).hexdigest()] += 1
        if fault == "missing_logprobs":
            for choice in reply.payload["choices"]:
                choice["logprobs"] = None
        return Truncated(reply.status, reply.payload, reply.headers) if fault == "malformed" else reply

    def batch_expired(self, batch, answered: int) -> bool:
        """The batches ``faults.expire_batches`` names (in the order they were created) run out of
        time after that many of their lines."""
        with self.batches.lock:
            number = list(self.batches.batches).index(batch.id)
        plan = self.faults.expire_batches
        return (number < len(plan) and answered >= plan[number]) or super().batch_expired(batch, answered)

    def batch_sizes(self) -> list[int]:
        """The requests of every batch created, in order."""
        with self.batches.lock:
            return [b.counts["total"] or None for b in self.batches.batches.values()]

    def _fault(self) -> str | None:
        """This image chat request's fault (forced for the first ones, else drawn), counted."""
        first = self.faults.first
        with self.lock:
            self.counters.chats += 1
            number, draw = self.counters.chats, self._draws.random()
            fault = first[number - 1] if number <= len(first) else self._drawn(draw)
            if fault:
                self.counters.faults[fault] += 1
        return fault

    def _drawn(self, draw: float) -> str | None:
        """The fault a uniform draw picks, the probabilities stacked in the order of FAULTS."""
        edge = 0.0
        for name in FAULTS:
            edge += getattr(self.faults, name)
            if draw < edge:
                return name
        return None


def main(argv=None) -> None:
    """Serve in this process until terminated; the first line printed is the URL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-id", default="bench-vision")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument("--scorer", choices=("brightness", "classifier"), default="brightness",
                        help="brightness (cheap) or classifier (the embedded model, as `blackbox serve` answers)")
    for f in fields(FaultPlan):
        if f.name not in ("first", "expire_batches"):
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    opts = vars(parser.parse_args(argv))
    plan = FaultPlan(**{f.name: opts[f.name] for f in fields(FaultPlan) if f.name not in ("first", "expire_batches")})
    if opts["scorer"] == "classifier":
        from blackbox.adapters.remote.serve import ClassifierScorer

        scorer = ClassifierScorer()
    else:
        scorer = BrightnessScorer()
    srv = FaultServer(port=opts["port"], scorer=scorer, model_id=opts["model_id"], latency=opts["latency"],
                      faults=plan)
    print(srv.url, flush=True)
    try:
        srv.serve_forever(poll_interval=0.05)
    finally:
        srv.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
