"""The query engine every remote model runs on: cache, budget, rate limits, retries, concurrency.

How to use it (any request type: chat with images, text completions, a custom JSON endpoint)::

    from blackbox.adapters.remote.engine import QueryEngine
    from blackbox.adapters.remote.openai_transport import OpenAITransport   # or http_model.HTTPTransport
    from blackbox.queries import Budget

    transport = OpenAITransport(base_url="http://127.0.0.1:8000/v1", api_key_env="OPENAI_API_KEY",
                                kind="completions")             # or "chat" (default)
    with QueryEngine(transport, budget=Budget(max_queries=500, max_tokens=50_000, max_cost=1.0),
                     cache=True, concurrency=16, rpm=600, tpm=200_000, model="m") as engine:
        responses = engine.map([{"model": "m", "prompt": "The capital of France is", "max_tokens": 1,
                                 "logprobs": 5}, ...])       # concurrent; order kept
    responses[0].body            # the endpoint's JSON answer as a dict (usage, choices, logprobs...)
    engine.stats.as_dict()       # sent / attempts / retries / cache hits / tokens / cost

The engine is three parts, each in its own module:

* this front: the cache, de-duplication, the dry run, and what one attempt does with an answer
  (:meth:`QueryEngine.accept`: charge it, validate it, cache it);
* :mod:`.spending`: what may be spent (a reservation per billable attempt, its worst case and
  how that grows, settlement from the reported usage, the slow-start window);
* :mod:`.sending`: how requests go out (threads, rate limits, tenacity retries, Ctrl-C);
* :mod:`.batching`: how they go out through the provider's Batch API instead (half price, later).

and every outcome of an attempt (retry or not, maybe billed or not) is judged in :mod:`.outcomes`.

* A request is a plain JSON-able dict: exactly what the transport sends (never the API key).
  The cache key is (transport endpoint, request, replica): a rerun or a resumed run pays nothing
  for what is already answered. Identical requests within one ``map`` are sent once.
* Budget (one counter, see :mod:`blackbox.queries`): before a batch is sent, all its uncached
  requests reserve at once: if they do not fit, nothing is sent and
  :class:`~blackbox.errors.BudgetExceeded` is raised. Never more is in flight than the cap can pay.
* The budget's deadline (``max_seconds``) cuts every attempt: a request gets the smaller of
  ``timeout`` and the time left, as one wall-clock deadline (the transports enforce it on
  connect + send + read).
* Retries: 429, 5xx, timeouts, connection errors and malformed answers are retried with
  exponential backoff and jitter, honouring ``Retry-After``; 400/401/403/404 raise
  :class:`~blackbox.errors.EndpointRefused` at once and stop the run.
* ``validate(request, body)`` (per engine or per ``map`` call): raise
  :class:`~blackbox.errors.RetryableError` (e.g. :func:`.outcomes.unusable`) for an answer that
  cannot be used (e.g. no logprobs): it is paid and counted (``stats.unusable``), never cached,
  and retried. Only validated answers are cached.
* ``dry_run=True``: nothing is sent; answers are ``None`` and ``stats`` says what would be paid,
  sent one by one and through the Batch API.
* Batch API: ``map(requests, batch=True)`` sends the uncached requests as one batch, waits and
  answers from what came back (a fixed set of requests scored at once, e.g. an evaluation pass).
  A run whose requests are drawn in stages *collects* instead (:meth:`QueryEngine.collect`):
  requests without an answer are kept and answered ``None`` (placeholders), a stage gate
  (:meth:`QueryEngine.stage_gate`) raises :class:`~blackbox.queries.StagePending` once the run
  has used one, and :meth:`QueryEngine.send_batch` sends what was collected. Requests the
  capability probe must answer at once are sent one by one (``map(..., sync=True)``).
* Ctrl-C: the batch stops sending, answers in flight get half a second to arrive (they are
  cached), then :class:`KeyboardInterrupt` goes on; no thread keeps the process alive.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Protocol, Sequence

from blackbox.errors import EndpointRefused, InputError, ModelError, RetryableError
from blackbox.queries import Budget, Reservation, StagePending

from .outcomes import unusable, verdict_of
from .pricing import PriceTable, default_token_estimate
from .sending import Sender
from .spending import SlowStart, Spending


class Transport(Protocol):
    """Sends one request dict and returns the endpoint's JSON answer as a dict.

    ``endpoint`` identifies where requests go (URL without credentials) for the cache key.
    ``send`` must not retry; ``timeout`` is a wall-clock deadline for the whole attempt; what goes
    wrong it raises as the errors :mod:`.outcomes` makes. ``usage(body)`` returns
    ``(prompt_tokens, completion_tokens)`` or ``None``."""

    endpoint: str

    def send(self, request: dict, timeout: float) -> dict: ...

    def usage(self, body: dict) -> tuple[int, int] | None: ...


# -- results and counters ------------------------------------------------------------------------
@dataclass
class Response:
    body: dict | None          # the endpoint's JSON answer (None in a dry run)
    cached: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    attempts: int = 0

    @classmethod
    def from_cache(cls, value: dict) -> "Response":
        return cls(value["body"], True, value.get("prompt_tokens", 0), value.get("completion_tokens", 0),
                   value.get("cost"), 0)

    def cache_entry(self) -> dict:
        return {"body": self.body, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost": self.cost}


@dataclass
class EngineStats:
    requested: int = 0        # requests asked of the engine (after de-duplication)
    cache_hits: int = 0
    sent: int = 0             # requests answered by the endpoint with a usable answer
    attempts: int = 0         # every HTTP attempt, including failed ones
    retries: int = 0
    failed_attempts: int = 0
    maybe_billed: int = 0     # attempts sent but never answered (timeouts): charged at their reservation
    unusable: int = 0         # answered (and paid) but rejected by ``validate``: retried
    overshoots: int = 0       # answers that billed more than their reservation (the bound then grows)
    would_send: int = 0       # dry run: requests that would be paid
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_known: bool = True
    estimated_tokens: int = 0  # dry run: reserved-token estimate for would_send requests
    estimated_cost: float = 0.0
    estimated_batch_cost: float = 0.0  # dry run: the same, sent through the Batch API (the probe at once)
    batches: int = 0          # batches created at the provider
    batched: int = 0          # answers taken from batches
    batch_hits: int = 0       # answers paid earlier in this batched run, read back by its reruns
    seconds: float = 0.0
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["cost"] = round(self.cost, 6) if self.cost_known else None
        d["estimated_cost"] = round(self.estimated_cost, 6)
        d["estimated_batch_cost"] = round(self.estimated_batch_cost, 6)
        d["seconds"] = round(self.seconds, 3)
        return d


def request_key(endpoint: str, request: dict, replica: int = 0) -> str:
    """The cache key: endpoint, request content and replica index (never credentials)."""
    blob = json.dumps({"endpoint": endpoint, "request": request, "replica": int(replica)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _open_cache(cache):
    """``True``: the default on-disk cache in the user cache folder; ``False``/``None``: none."""
    if cache is True:
        from .cache import ResponseCache

        return ResponseCache()
    return None if cache is False else cache


@dataclass
class _Call:
    """What one ``map`` call does to requests it really sends."""

    prepare: Callable[[dict], dict] | None
    validate: Callable[[dict, dict], None] | None


class QueryEngine:
    """Concurrent, cached, budgeted, rate-limited and retried requests over a :class:`Transport`."""

    def __init__(self, transport: Transport, *, budget: Budget | None = None, cache=None,
                 concurrency: int = 16, rpm: float | None = None, tpm: float | None = None,
                 max_attempts: int = 6, timeout: float = 60.0, backoff: float = 0.5,
                 max_wait: float = 60.0, prices: PriceTable | str | None = None, model: str | None = None,
                 token_estimate=default_token_estimate, dry_run: bool = False, validate=None):
        if concurrency < 1:
            raise InputError("concurrency must be >= 1")
        if max_attempts < 1:
            raise InputError("max_attempts must be >= 1")
        if not timeout > 0:
            raise InputError(f"the timeout must be > 0 seconds, got {timeout}")
        self.transport = transport
        self.cache = _open_cache(cache)
        self.concurrency = int(concurrency)
        self.rpm, self.tpm = rpm, tpm
        self.max_attempts, self.timeout = int(max_attempts), float(timeout)
        self.backoff, self.max_wait = float(backoff), float(max_wait)
        self.dry_run = dry_run
        self.validate = validate  # (request, body) -> None; raise RetryableError for unusable answers
        self.stats = EngineStats()
        self.spending = Spending(budget if budget is not None else Budget(),
                                 prices if isinstance(prices, PriceTable) else PriceTable.load(prices),
                                 model, token_estimate, SlowStart(self.concurrency), getattr(transport, "tier", None))
        self.sender = Sender(self.spending, self.stats, concurrency=self.concurrency, rpm=rpm, tpm=tpm,
                             max_attempts=self.max_attempts, backoff=self.backoff, max_wait=self.max_wait)
        self.collecting = False
        self.batcher = None  # made when the Batch API is first used (see _batching)

    # the spending side's settings, as attributes of the engine
    budget = property(lambda self: self.spending.budget)
    prices = property(lambda self: self.spending.prices)
    model = property(lambda self: self.spending.model,
                     lambda self, value: setattr(self.spending, "model", value))
    token_estimate = property(lambda self: self.spending.token_estimate,
                              lambda self, value: setattr(self.spending, "token_estimate", value))

    def __enter__(self) -> "QueryEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public ---------------------------------------------------------------------------------
    def submit(self, request: dict, replica: int = 0) -> Response:
        return self.map([request], [replica])[0]

    def map(self, requests: Sequence[dict], replicas: Sequence[int] | None = None,
            prepare: Callable[[dict], dict] | None = None, validate=None, *, sync: bool = False,
            batch: bool = False) -> list[Response]:
        """Answer ``requests`` (concurrently, in order). Raises BudgetExceeded before sending
        anything if the uncached ones do not fit the budget; stops on the first refusal.

        ``prepare(request) -> request``, when given, turns a request into what is sent, in the
        worker thread and only for cache misses: requests can then carry a content hash of a
        large input (an image) and be encoded only when they are really sent. ``validate``
        overrides the engine's own for this call (``False``: accept any answer). ``batch``: send
        the uncached requests through the Batch API as one batch and wait for it. While the engine
        collects, uncached requests are collected and answered ``None``, unless ``sync``."""
        replicas = list(replicas) if replicas is not None else [0] * len(requests)
        if len(replicas) != len(requests):
            raise ValueError("one replica index per request")
        validate = self.validate if validate is None else (validate or None)
        t0 = time.perf_counter()
        keys = self._keys(requests, replicas)
        unique: dict[str, dict] = {}
        for key, req in zip(keys, requests):
            unique.setdefault(key, req)
        answers = self._cached(list(unique))
        misses = [k for k in unique if k not in answers]
        self.stats.add(requested=len(unique))
        if misses and self.dry_run:
            answers.update((key, self._plan(unique[key], sync)) for key in misses)
        elif misses and (batch or (self.collecting and not sync)):
            answers.update(self._collect([(k, unique[k]) for k in misses], prepare, validate, batch))
        elif misses:
            sent = self._send([(k, unique[k]) for k in misses], _Call(prepare, validate))
            if self.collecting and self.batcher is not None:  # paid in this batched run (see _cached)
                self.batcher.answers.update(sent)
            answers.update(sent)
        self.stats.add(seconds=time.perf_counter() - t0)
        return [answers[k] for k in keys]

    def lookup(self, requests: Sequence[dict], replicas: Sequence[int] | None = None) -> list[Response | None]:
        """Cached answers only (None where there is none); nothing is sent or reserved."""
        keys = self._keys(requests, replicas)
        found = self._cached(keys)
        self.stats.add(requested=len(found))
        return [found.get(k) for k in keys]

    def remember(self, requests: Sequence[dict], replicas: Sequence[int], responses: Sequence[Response]) -> None:
        """Store answers under other requests too (aliases: e.g. an image known by the points
        that render it as well as by its pixels), so :meth:`lookup` finds them."""
        held = self.batcher.answers if self.batcher is not None else None
        for key, r in zip(self._keys(requests, replicas), responses):
            if r is not None and r.body is not None:
                if self.cache is not None:
                    self._store(key, r)
                if held is not None and not r.cached:  # paid in this run (see _cached)
                    held[key] = r

    def accept(self, key: str, request: dict, reservation: Reservation, body: dict,
               validate: Callable[[dict, dict], None] | None = None, batch: bool = False) -> Response:
        """Take the endpoint's answer ``body`` to ``request``: charge it on the budget (settling
        ``reservation``; ``batch``: at the Batch API's price), check it with ``validate`` (an
        unusable answer is paid, counted and raised as retryable, never cached), cache it under ``key``."""
        charge = self.spending.charge(reservation, request, self.transport.usage(body), batch)
        self.stats.add(prompt_tokens=charge.prompt_tokens, completion_tokens=charge.completion_tokens,
                       cost=charge.cost or 0.0, overshoots=int(charge.overshoot))
        if charge.cost is None:
            self.stats.cost_known = False
        if validate is not None:
            try:
                validate(request, body)
            except RetryableError as exc:
                self.stats.add(failed_attempts=1, unusable=1)
                raise unusable(str(exc)) from None
        response = Response(body, False, charge.prompt_tokens, charge.completion_tokens, charge.cost, 0)
        if self.cache is not None:
            self._store(key, response)
        self.stats.add(sent=1)
        return response

    # -- the Batch API ------------------------------------------------------------------------
    def collect(self, on: bool = True) -> None:
        """Collect uncached requests for a batch (answering placeholders) instead of sending them;
        refused (InputError) when this engine cannot batch."""
        if on and not self.dry_run:
            self._batching()
        self.collecting = on

    def stage_gate(self) -> Callable[[], None] | None:
        """A check for one run's stage boundaries: raises StagePending once the run (since this
        gate was made) has been answered a placeholder. None when not collecting."""
        if not self.collecting or self.batcher is None:
            return None
        batcher, mark = self.batcher, self.batcher.handed

        def gate() -> None:
            if batcher.handed > mark:
                raise StagePending(f"{len(batcher.spool.lines)} requests wait to be sent as a batch")
        return gate

    def send_batch(self, progress: bool = True) -> int:
        """Send the collected requests through the Batch API and take the answers (see
        :mod:`.batching`); how many were collected."""
        return self.batcher.send(progress) if self.batcher is not None else 0

    def answered(self, keys: Sequence[str]) -> set[str]:
        """Which of these cache keys have an answer (nothing is counted)."""
        found = set(self.cache.get_many(list(keys))) if self.cache is not None else set()
        held = self.batcher.answers if self.batcher is not None else {}
        return found | {k for k in keys if k in held}

    def _batching(self):
        """The engine's Batcher, made on first use: the transport must reach a Batch API, and the
        query cache must be there to keep the batches and their answers (resuming relies on it)."""
        if self.batcher is None:
            from .batch_records import BatchRecords
            from .batching import Batcher

            make = getattr(self.transport, "batch_api", None)
            if make is None:
                raise InputError(f"{self.transport.endpoint} has no Batch API here: batching is for "
                                 "OpenAI-compatible endpoints (gpt-vision, openai:<model>)")
            if self.cache is None or not hasattr(self.cache, "connection"):
                raise InputError("batching keeps its batch ids and answers in the query cache, so that a stopped run "
                                 "can collect its batch: it needs the cache (drop --no-cache)")
            api = make(max_attempts=self.max_attempts, backoff=self.backoff, max_wait=self.max_wait,
                       timeout=self.timeout)
            self.batcher = Batcher(self, api, BatchRecords(self.cache))
        return self.batcher

    def _collect(self, jobs: list[tuple[str, dict]], prepare, validate, now: bool) -> dict[str, Response]:
        """Collect ``jobs`` for a batch: placeholders, or (``now``) the batch's answers."""
        batcher = self._batching()
        batcher.record(jobs, prepare, validate)
        if not now:
            batcher.handed += len(jobs)
            return {key: Response(None, False) for key, _ in jobs}
        batcher.send(progress=False)
        found = self._cached([key for key, _ in jobs])
        if len(found) < len(jobs):
            raise ModelError(f"the batch left {len(jobs) - len(found)} requests without an answer")
        return found

    def close(self):
        """Stop the engine's threads; never waits on an attempt still in flight."""
        self.sender.close()
        if self.batcher is not None:
            self.batcher.spool.clear()
        if self.sender.in_flight == 0:
            if hasattr(self.transport, "close"):
                self.transport.close()
            if self.cache is not None and hasattr(self.cache, "close"):
                self.cache.close()

    # -- inside ---------------------------------------------------------------------------------
    def _keys(self, requests: Sequence[dict], replicas: Sequence[int] | None) -> list[str]:
        replicas = list(replicas) if replicas is not None else [0] * len(requests)
        return [request_key(self.transport.endpoint, r, k) for r, k in zip(requests, replicas)]

    def _cached(self, keys: list[str]) -> dict[str, Response]:
        """Answers already there, counted: cache hits, and answers of this process's batches
        (``batch_hits``: paid in this run, they are no cache hits)."""
        found = self.cache.get_many(keys) if self.cache is not None else {}
        answers = {key: Response.from_cache(value) for key, value in found.items()}
        held = self.batcher.answers if self.batcher is not None else {}
        answers.update((k, held[k]) for k in keys if k in held)  # as paid (not cached): remember() keeps them so
        ours = sum(k in held for k in answers)
        self.stats.add(cache_hits=len(answers) - ours, batch_hits=ours)
        return answers

    def _store(self, key: str, response: Response) -> None:
        self.cache.put(key, response.cache_entry(), endpoint=self.transport.endpoint)

    def _plan(self, request: dict, sync: bool = False) -> Response:
        """A dry run's answer: nothing, and what sending it would reserve counted, one by one and
        through the Batch API (``sync``: a request a batched run sends at once all the same)."""
        tokens, cost = self.spending.estimate(request)
        batched = cost if sync else self.spending.cost_bound(request, tokens, batch=True) or 0.0
        self.stats.add(would_send=1, estimated_tokens=tokens, estimated_cost=cost, estimated_batch_cost=batched)
        return Response(None, False)

    def _send(self, jobs: list[tuple[str, dict]], call: _Call) -> dict[str, Response]:
        held = self.spending.reserve_all([req for _, req in jobs])  # the whole batch fits, or nothing is sent
        try:
            return self.sender.run([(k, req, r) for (k, req), r in zip(jobs, held)], partial(self._attempt, call))
        finally:
            for reservation in held:
                self.spending.release(reservation)

    def _attempt(self, call: _Call, key: str, request: dict, reservation: Reservation) -> Response:
        """One HTTP attempt, run in a worker thread; an answer is settled and cached right here,
        so an answer that arrives is never lost (even when the caller was interrupted)."""
        self.stats.add(attempts=1)
        try:
            sent = call.prepare(request) if call.prepare else request
            body = self.transport.send(sent, self.spending.deadline(self.timeout))
        except (RetryableError, EndpointRefused) as exc:
            billed = verdict_of(exc).billed
            self.stats.add(failed_attempts=1, maybe_billed=int(billed))
            if billed:
                self.spending.settle(reservation)
            raise
        return self.accept(key, request, reservation, body, call.validate)
