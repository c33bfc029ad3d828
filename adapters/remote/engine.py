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

* A request is a plain JSON-able dict: exactly what the transport sends (never the API key).
  The cache key is (transport endpoint, request, replica): a rerun or a resumed run pays nothing
  for what is already answered. Identical requests within one ``map`` are sent once.
* Budget (one counter, see :mod:`blackbox.queries`): every HTTP attempt that can be billed holds
  one query and its worst-case tokens and cost while it is in flight: first attempts, probes,
  samples and retries alike; an attempt the endpoint cannot have billed (429, 5xx, refused
  connection) keeps its hold for the retry, an attempt that may have been billed (an answer,
  usable or not, or a request sent and never answered) is settled. Before a batch is sent, all its
  uncached requests reserve at once: if they do not fit, nothing is sent and
  :class:`~blackbox.errors.BudgetExceeded` is raised. The worst case per request is the static
  token estimate until the endpoint has billed a prompt, then 1.25 x the largest prompt it has
  billed plus the maximum output; when an answer bills more than its reservation, the factor
  grows to twice the growth seen, and every request tops up its reservation right before it is
  sent, waiting for answers in flight when the cap is short, so
  never more is in flight than the cap can pay. A token- or money-capped engine also sends in a
  window that starts at one request and doubles per answer billed within its reservation (back
  to one after an answer that billed more), so a misjudged bound is found out early.
* The budget's deadline (``max_seconds``) cuts every attempt: a request gets the smaller of
  ``timeout`` and the time left, as one wall-clock deadline (the transports enforce it on
  connect + send + read).
* Retries (tenacity is the only retry layer; transports must not retry): what is retried and
  what may have been billed is judged in :mod:`.outcomes` (429, 5xx, timeouts, connection errors
  and malformed answers are retried with exponential backoff and jitter, honouring
  ``Retry-After``; 400/401/403/404 raise :class:`EndpointRefused` at once and stop the run).
* ``validate(request, body)`` (per engine or per ``map`` call): raise :class:`RetryableError` for
  an answer that cannot be used (e.g. no logprobs): it is paid and counted (``stats.unusable``),
  never cached, and retried. Only validated answers are cached.
* ``dry_run=True``: nothing is sent; answers are ``None`` and ``stats`` says what would be paid.
* Ctrl-C: the batch stops sending, answers in flight get half a second to arrive (they are
  cached), then :class:`KeyboardInterrupt` goes on; no thread keeps the process alive.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from blackbox.errors import BudgetExceeded, EndpointRefused, InputError, ModelError, RetryableError
from blackbox.queries import Budget, Reservation

from .outcomes import retry_delay, should_retry, unusable, verdict_of
from .pricing import PriceTable, default_token_estimate, max_output_tokens

INTERRUPT_GRACE = 0.5  # seconds answers in flight get to arrive after Ctrl-C


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
        d["seconds"] = round(self.seconds, 3)
        return d


def request_key(endpoint: str, request: dict, replica: int = 0) -> str:
    """The cache key: endpoint, request content and replica index (never credentials)."""
    blob = json.dumps({"endpoint": endpoint, "request": request, "replica": int(replica)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class DaemonPool(Executor):
    """A fixed set of daemon worker threads: an attempt abandoned at Ctrl-C never keeps the
    process alive (``ThreadPoolExecutor`` joins its threads at exit)."""

    def __init__(self, workers: int, name: str = "blackbox-remote"):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def _work(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting coroutine
                future.set_exception(exc)

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = False):
        for _ in self._threads:
            self._queue.put(None)


class _Interrupted(Exception):
    """Raised in the engine's own tasks when the caller was interrupted (Ctrl-C)."""


@dataclass
class _Batch:
    prepare: Callable[[dict], dict] | None
    validate: Callable[[dict, dict], None] | None
    abort: BaseException | None = None


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
        self.budget = budget if budget is not None else Budget()
        if cache is True:  # the default on-disk cache in the user cache folder
            from .cache import ResponseCache

            cache = ResponseCache()
        self.cache = None if cache is False else cache
        self.concurrency = int(concurrency)
        self.rpm, self.tpm = rpm, tpm
        self.max_attempts, self.timeout = int(max_attempts), float(timeout)
        self.backoff, self.max_wait = float(backoff), float(max_wait)
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable.load(prices)
        self.model = model
        self.token_estimate = token_estimate
        self.dry_run = dry_run
        self.validate = validate  # (request, body) -> None; raise RetryableError for unusable answers
        self.stats = EngineStats()
        self._settle_lock = threading.Lock()
        self._largest_prompt = 0      # the largest prompt the endpoint has billed for one request
        self._factor = 1.25           # reservation = factor x that (doubles after each overshoot)
        self._window = 1              # capped engines: requests in flight allowed now (slow start)
        self._in_flight = 0
        if self.budget.max_cost is not None and (model is None or self.prices.price(model) is None):
            raise InputError(f"no price for model {model!r}, so a --max-cost cap cannot be enforced: "
                             "add it to prices.json in the user config folder or pass --prices FILE")
        self._pool = DaemonPool(self.concurrency)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackbox-remote-loop", daemon=True)
        self._thread.start()
        self._limiters = asyncio.run_coroutine_threadsafe(self._make_limiters(), self._loop).result()

    async def _make_limiters(self):
        from aiolimiter import AsyncLimiter

        def per_minute(rate):  # a smooth bucket (about one second's worth), not a minute-long burst
            per_second = rate / 60.0
            return AsyncLimiter(per_second, 1.0) if per_second >= 1 else AsyncLimiter(1, 1.0 / per_second)

        self._changed = asyncio.Condition()  # notified whenever an attempt finishes
        return (asyncio.Semaphore(self.concurrency),
                per_minute(self.rpm) if self.rpm else None,
                per_minute(self.tpm) if self.tpm else None)

    def __enter__(self) -> "QueryEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public ---------------------------------------------------------------------------------
    def submit(self, request: dict, replica: int = 0) -> Response:
        return self.map([request], [replica])[0]

    def map(self, requests: Sequence[dict], replicas: Sequence[int] | None = None,
            prepare: Callable[[dict], dict] | None = None, validate=None) -> list[Response]:
        """Answer ``requests`` (concurrently, in order). Raises BudgetExceeded before sending
        anything if the uncached ones do not fit the budget; stops on the first refusal.

        ``prepare(request) -> request``, when given, turns a request into what is sent, in the
        worker thread and only for cache misses: requests can then carry a content hash of a
        large input (an image) and be encoded only when they are really sent. ``validate``
        overrides the engine's own for this call (``False``: accept any answer)."""
        replicas = list(replicas) if replicas is not None else [0] * len(requests)
        if len(replicas) != len(requests):
            raise ValueError("one replica index per request")
        validate = self.validate if validate is None else (validate or None)
        t0 = time.perf_counter()
        keys = [request_key(self.transport.endpoint, r, k) for r, k in zip(requests, replicas)]
        unique: dict[str, dict] = {}
        for key, req in zip(keys, requests):
            unique.setdefault(key, req)
        answers: dict[str, Response] = {}
        if self.cache is not None:
            for key, value in self.cache.get_many(list(unique)).items():
                answers[key] = Response.from_cache(value)
        misses = [k for k in unique if k not in answers]
        self.stats.add(requested=len(unique), cache_hits=len(unique) - len(misses))
        if misses and self.dry_run:
            for key in misses:
                tokens = self._bound(unique[key])
                self.stats.add(would_send=1, estimated_tokens=tokens,
                               estimated_cost=self._cost_bound(unique[key], tokens) or 0.0)
                answers[key] = Response(None, False)
        elif misses:
            self._send_batch([(k, unique[k]) for k in misses], answers, _Batch(prepare, validate))
        self.stats.add(seconds=time.perf_counter() - t0)
        return [answers[k] for k in keys]

    def lookup(self, requests: Sequence[dict], replicas: Sequence[int] | None = None) -> list[Response | None]:
        """Cached answers only (None where there is none); nothing is sent or reserved."""
        replicas = list(replicas) if replicas is not None else [0] * len(requests)
        keys = [request_key(self.transport.endpoint, r, k) for r, k in zip(requests, replicas)]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        self.stats.add(requested=len(found), cache_hits=len(found))
        return [Response.from_cache(found[k]) if k in found else None for k in keys]

    def remember(self, requests: Sequence[dict], replicas: Sequence[int], responses: Sequence[Response]) -> None:
        """Store answers under other requests too (aliases: e.g. an image known by the points
        that render it as well as by its pixels), so :meth:`lookup` finds them."""
        if self.cache is None:
            return
        for request, replica, r in zip(requests, replicas, responses):
            if r is not None and r.body is not None:
                self.cache.put(request_key(self.transport.endpoint, request, replica),
                               {"body": r.body, "prompt_tokens": r.prompt_tokens,
                                "completion_tokens": r.completion_tokens, "cost": r.cost},
                               endpoint=self.transport.endpoint)

    def close(self):
        """Stop the engine's threads; never waits on an attempt still in flight."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=1)
        self._pool.shutdown()
        if self._in_flight == 0:
            if hasattr(self.transport, "close"):
                self.transport.close()
            if self.cache is not None and hasattr(self.cache, "close"):
                self.cache.close()

    # -- budget ---------------------------------------------------------------------------------
    def _bound(self, request: dict) -> int:
        """Worst-case tokens for one request: the static estimate until the endpoint has billed
        something, then ``factor`` x the largest prompt billed for one request, plus the output.
        The factor starts at 1.25; when an answer bills more than its reservation it becomes at
        least twice that prompt over the largest one before (twice the growth seen)."""
        if not self._largest_prompt:
            return int(self.token_estimate(request))
        return int(self._factor * self._largest_prompt) + 16 + max_output_tokens(request)

    def _cost_bound(self, request: dict, tokens: int) -> float | None:
        model = request.get("model") or self.model
        out = min(max_output_tokens(request), tokens)  # the rest of the bound is prompt
        return self.prices.cost(model, tokens - out, out) if model else None

    def _reserve(self, request: dict) -> Reservation:
        tokens = self._bound(request)
        return self.budget.reserve(1, tokens, self._cost_bound(request, tokens) or 0.0)

    def _top_up(self, reservation: Reservation, request: dict) -> None:
        tokens = self._bound(request)
        if tokens > reservation.tokens:
            extra = tokens - reservation.tokens
            cost = self._cost_bound(request, tokens) or 0.0
            self.budget.grow(reservation, extra, max(0.0, cost - reservation.cost))

    def _settle(self, reservation: Reservation, tokens=None, cost=None):
        """Settle once; spending reported after a reservation was given back is still recorded."""
        with self._settle_lock:
            if not reservation.settled:
                self.budget.settle(reservation, tokens=tokens, cost=cost)
                return
        self.budget.record(1, reservation.tokens if tokens is None else tokens,
                           reservation.cost if cost is None else cost)

    def _release(self, reservation: Reservation):
        with self._settle_lock:
            if not reservation.settled:
                self.budget.release(reservation)

    async def _when_budget_allows(self, action):
        """Run ``action()`` (a reservation); while the cap is short and answers are in flight, wait
        for them to settle (they usually come in under their bound) and try again."""
        while True:
            try:
                return action()
            except BudgetExceeded:
                if self._in_flight == 0:
                    raise
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

    # -- sending --------------------------------------------------------------------------------
    def _send_batch(self, jobs, answers, batch: _Batch):
        held = []
        try:
            for _, req in jobs:  # the whole batch must fit before anything is sent
                held.append(self._reserve(req))
        except BudgetExceeded:
            for r in held:
                self.budget.release(r)
            raise
        future = asyncio.run_coroutine_threadsafe(
            self._send_all([(k, req, r) for (k, req), r in zip(jobs, held)], answers, batch), self._loop)
        try:
            future.result()
        except KeyboardInterrupt:
            # stop sending; answers in flight get a moment to arrive (and be cached), then go
            self._loop.call_soon_threadsafe(setattr, batch, "abort", _Interrupted("interrupted"))
            try:
                future.result(timeout=INTERRUPT_GRACE)
            except BaseException:
                future.cancel()
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            for r in held:
                self._release(r)

    async def _send_all(self, jobs, answers, batch: _Batch):
        tasks = [asyncio.ensure_future(self._send_one(key, req, res, answers, batch)) for key, req, res in jobs]
        # on the first failure the requests not yet sent are dropped, the ones in flight finish
        # (their answers are paid for, so they are settled and cached), then the error is raised
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise batch.abort or errors[0]

    def _wait(self, state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return retry_delay(exc, state.attempt_number, self.backoff, self.max_wait)

    def _attempt_timeout(self) -> float:
        left = self.budget.seconds_left()
        if left is None:
            return self.timeout
        if left <= 0:
            raise BudgetExceeded(f"deadline reached: the run may take {self.budget.max_seconds:g} s (--deadline)")
        return min(self.timeout, left)

    def _attempt(self, key, request, reservation, batch: _Batch):
        """One HTTP attempt, run in a worker thread; a success is settled and cached right here,
        so an answer that arrives is never lost (even when the caller was interrupted)."""
        self.stats.add(attempts=1)
        try:
            sent = batch.prepare(request) if batch.prepare else request
            body = self.transport.send(sent, self._attempt_timeout())
        except (RetryableError, EndpointRefused) as exc:
            billed = verdict_of(exc).billed
            self.stats.add(failed_attempts=1, maybe_billed=int(billed))
            if billed:
                self._settle(reservation)
            raise
        usage = self.transport.usage(body)
        prompt, completion = usage if usage else (0, 0)
        model = request.get("model") or self.model
        cost = self.prices.cost(model, prompt, completion) if model else None
        if usage:
            reserved = reservation.tokens
            self._settle(reservation, tokens=prompt + completion, cost=cost if cost is not None else reservation.cost)
            with self._settle_lock:
                if prompt + completion > reserved and self._largest_prompt:
                    # the endpoint bills more than we thought: reserve twice its growth from now on
                    # and send one request at a time again
                    self._factor = min(max(self._factor, 2.0 * prompt / self._largest_prompt), 64.0)
                    self._window = 1
                    self.stats.add(overshoots=1)
                else:
                    self._window = min(self.concurrency, 2 * self._window)
                self._largest_prompt = max(self._largest_prompt, prompt)
        else:  # no usage reported: charge the reservation (never under-count)
            self._settle(reservation)
            self._window = min(self.concurrency, 2 * self._window)
        self.stats.add(prompt_tokens=prompt, completion_tokens=completion, cost=cost or 0.0)
        if cost is None:
            self.stats.cost_known = False
        if batch.validate is not None:
            try:
                batch.validate(request, body)  # paid, but unusable: counted, not cached, retried
            except RetryableError as exc:
                self.stats.add(failed_attempts=1, unusable=1)
                raise unusable(str(exc)) from None
        if self.cache is not None:
            self.cache.put(key, {"body": body, "prompt_tokens": prompt, "completion_tokens": completion,
                                 "cost": cost}, endpoint=self.transport.endpoint)
        self.stats.add(sent=1)
        return Response(body, False, prompt, completion, cost, 0)

    def _capped(self) -> bool:
        return self.budget.max_tokens is not None or self.budget.max_cost is not None

    async def _gated_attempt(self, key, request, reservation, batch: _Batch):
        """One attempt under the rate limits. A token- or money-capped engine sends in a window
        that starts at one request, doubles with every answer billed within its reservation and
        falls back to one when an answer bills more (slow start): what the endpoint really bills
        is learned before many requests are in flight on a guess."""
        if self._capped():
            async with self._changed:
                while self._in_flight >= self._window:
                    try:
                        await asyncio.wait_for(self._changed.wait(), 0.5)
                    except asyncio.TimeoutError:
                        pass
                    if batch.abort is not None:
                        raise batch.abort
                self._in_flight += 1
        else:
            self._in_flight += 1
        try:
            if batch.abort is not None:
                raise batch.abort
            _, rpm, tpm = self._limiters
            if rpm is not None:
                await rpm.acquire()
            if tpm is not None:
                await tpm.acquire(min(float(reservation.tokens), tpm.max_rate))
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._attempt, key, request, reservation, batch)
        finally:
            self._in_flight -= 1
            async with self._changed:
                self._changed.notify_all()

    async def _send_one(self, key, request, reservation, answers, batch: _Batch):
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        semaphore = self._limiters[0]
        holder = {"reservation": reservation}
        attempts = 0

        def before_sleep(state):
            self.stats.add(retries=1)

        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                 retry=retry_if_exception(should_retry), reraise=True,
                                 before_sleep=before_sleep)
        try:
            async for attempt in retrying:
                with attempt:
                    if batch.abort is not None:
                        raise batch.abort
                    attempts += 1
                    async with semaphore:  # reserve right before sending: the bound may have grown
                        if holder["reservation"].settled:  # the last attempt may have been billed
                            holder["reservation"] = await self._when_budget_allows(lambda: self._reserve(request))
                        else:
                            await self._when_budget_allows(lambda: self._top_up(holder["reservation"], request))
                        response = await self._gated_attempt(key, request, holder["reservation"], batch)
        except BaseException as exc:
            if not should_retry(exc):
                batch.abort = batch.abort or exc
                raise
            error = ModelError(f"the endpoint failed {attempts} attempt(s) in a row; last error: {exc}")
            batch.abort = batch.abort or error
            raise error from None
        finally:
            if holder["reservation"] is not reservation:
                self._release(holder["reservation"])
        response.attempts = attempts
        answers[key] = response
