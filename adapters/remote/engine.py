"""The query engine every remote model runs on: cache, budget, rate limits, retries, concurrency.

How to use it (any request type: chat with images, text completions, a custom JSON endpoint)::

    from blackbox.adapters.remote.engine import QueryEngine
    from blackbox.adapters.remote.pricing import PriceTable
    from blackbox.adapters.remote.openai_transport import OpenAITransport   # or http_model.HTTPTransport
    from blackbox.adapters.remote.cache import ResponseCache
    from blackbox.queries import Budget

    transport = OpenAITransport(base_url="http://127.0.0.1:8000/v1", api_key_env="OPENAI_API_KEY",
                                kind="completions")             # or "chat" (default)
    engine = QueryEngine(transport, budget=Budget(max_tokens=50_000, max_cost=1.0),
                         cache=ResponseCache(), concurrency=16, rpm=600, tpm=200_000,
                         prices=PriceTable.load(), count_queries=True)
    responses = engine.map([{"model": "m", "prompt": "The capital of France is", "max_tokens": 1,
                             "logprobs": 5}, ...])           # concurrent; order kept
    responses[0].body            # the endpoint's JSON answer as a dict (usage, choices, logprobs...)
    one = engine.submit(request, replica=1)   # one request; replica > 0 = a deliberate repeat
    engine.stats.as_dict()       # sent / attempts / retries / cache hits / tokens / cost

* A request is a plain JSON-able dict: exactly what the transport sends (never the API key).
  The cache key is (transport endpoint, request, replica): a rerun or a resumed run pays nothing
  for what is already answered. Identical requests within one ``map`` are sent once.
* Budget: before a batch is sent, every uncached request reserves its worst-case tokens and cost
  (a generous static estimate until the endpoint has reported usage, then 1.25 x the largest
  prompt billed so far plus the maximum output)
  (and one query when ``count_queries``; leave it False when a :class:`~blackbox.queries.QueryRunner`
  already reserves queries on the same budget). If the batch does not fit, nothing is sent and
  :class:`~blackbox.errors.BudgetExceeded` is raised. Each answer settles its reservation from the
  reported ``usage``; a timed-out attempt (the provider may have billed it) is charged at its
  reservation.
* Retries (tenacity is the only retry layer; transports must not retry): 429, 5xx, timeouts,
  connection errors and malformed answers are retried with exponential backoff and jitter,
  honouring ``Retry-After``; 400/401/403/404 raise :class:`EndpointRefused` at once and stop the run.
* ``dry_run=True``: nothing is sent; answers are ``None`` and ``stats`` says what would be paid.
* ``validate(request, body)``: optional; raise :class:`RetryableError` for an answer that is
  unusable (e.g. no logprobs): it is paid and counted (``stats.unusable``), not cached, and retried.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from blackbox.errors import BudgetExceeded, InputError, ModelError
from blackbox.queries import Budget

from .pricing import PriceTable, default_token_estimate, max_output_tokens


class RetryableError(ModelError):
    """An attempt that failed in a way worth retrying (429, 5xx, timeout, connection, bad JSON)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 maybe_billed: bool = False):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.maybe_billed = maybe_billed


class EndpointRefused(ModelError):
    """The endpoint refused the request (400/401/403/404...): retrying cannot help."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Transport(Protocol):
    """Sends one request dict and returns the endpoint's JSON answer as a dict.

    ``endpoint`` identifies where requests go (URL without credentials) for the cache key.
    ``send`` must not retry; it raises :class:`RetryableError` or :class:`EndpointRefused`.
    ``usage(body)`` returns ``(prompt_tokens, completion_tokens)`` or ``None``."""

    endpoint: str

    def send(self, request: dict, timeout: float) -> dict: ...

    def usage(self, body: dict) -> tuple[int, int] | None: ...


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify_status(status: int, message: str, retry_after: float | None = None) -> ModelError:
    """The error an HTTP status maps to: retryable (408/409/429/5xx) or a refusal (other 4xx)."""
    if status in (408, 409, 429) or status >= 500:
        return RetryableError(f"HTTP {status}: {message}", status=status, retry_after=retry_after)
    hint = {401: "check the API key (--api-key-env / OPENAI_API_KEY)",
            403: "the key has no access to this model or endpoint",
            404: "check --base-url and the model name",
            400: "the endpoint rejected the request"}.get(status, "")
    return EndpointRefused(f"the endpoint refused the request (HTTP {status}): {message}"
                           + (f"; {hint}" if hint else ""), status)


# -- results and counters ------------------------------------------------------------------------
@dataclass
class Response:
    body: dict | None          # the endpoint's JSON answer (None in a dry run)
    cached: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    attempts: int = 0


@dataclass
class EngineStats:
    requested: int = 0        # requests asked of the engine (after de-duplication)
    cache_hits: int = 0
    sent: int = 0             # requests answered by the endpoint (paid)
    attempts: int = 0         # every HTTP attempt, including failed ones
    retries: int = 0
    failed_attempts: int = 0
    maybe_billed: int = 0     # timed-out attempts charged at their reservation
    unusable: int = 0         # answered (and paid) but rejected by ``validate``: retried
    would_send: int = 0       # dry run: requests that would be paid
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_known: bool = True
    estimated_tokens: int = 0  # dry run: reserved-token estimate for would_send requests
    estimated_cost: float = 0.0
    seconds: float = 0.0
    _lock: Any = field(default_factory=threading.Lock, repr=False)

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


class QueryEngine:
    """Concurrent, cached, budgeted, rate-limited and retried requests over a :class:`Transport`."""

    def __init__(self, transport: Transport, *, budget: Budget | None = None, cache=None,
                 concurrency: int = 16, rpm: float | None = None, tpm: float | None = None,
                 max_attempts: int = 6, timeout: float = 60.0, backoff: float = 0.5,
                 max_wait: float = 60.0, prices: PriceTable | str | None = None, model: str | None = None,
                 token_estimate=default_token_estimate, count_queries: bool = False,
                 dry_run: bool = False, validate=None):
        if concurrency < 1:
            raise InputError("concurrency must be >= 1")
        if max_attempts < 1:
            raise InputError("max_attempts must be >= 1")
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
        self.count_queries = count_queries
        self.dry_run = dry_run
        self.validate = validate  # (request, body) -> None; raise RetryableError for unusable answers
        self.stats = EngineStats()
        self._settle_lock = threading.Lock()
        self._seen_prompt_tokens = 0
        if self.budget.max_cost is not None and (model is None or self.prices.price(model) is None):
            raise InputError(f"no price for model {model!r}, so a --max-cost cap cannot be enforced: "
                             "add it to prices.json in the user config folder or pass --prices FILE")
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="blackbox-remote")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackbox-remote-loop", daemon=True)
        self._thread.start()
        self._limiters = asyncio.run_coroutine_threadsafe(self._make_limiters(), self._loop).result()

    async def _make_limiters(self):
        from aiolimiter import AsyncLimiter

        def per_minute(rate):  # a smooth bucket (about one second's worth), not a minute-long burst
            per_second = rate / 60.0
            return AsyncLimiter(per_second, 1.0) if per_second >= 1 else AsyncLimiter(1, 1.0 / per_second)

        return (asyncio.Semaphore(self.concurrency),
                per_minute(self.rpm) if self.rpm else None,
                per_minute(self.tpm) if self.tpm else None)

    # -- public ---------------------------------------------------------------------------------
    def submit(self, request: dict, replica: int = 0) -> Response:
        return self.map([request], [replica])[0]

    def map(self, requests: Sequence[dict], replicas: Sequence[int] | None = None,
            prepare: Callable[[dict], dict] | None = None) -> list[Response]:
        """Answer ``requests`` (concurrently, in order). Raises BudgetExceeded before sending
        anything if the uncached ones do not fit the budget; stops on the first refusal.

        ``prepare(request) -> request``, when given, turns a request into what is sent, in the
        worker thread and only for cache misses: requests can then carry a content hash of a
        large input (an image) and be encoded only when they are really sent."""
        replicas = list(replicas) if replicas is not None else [0] * len(requests)
        if len(replicas) != len(requests):
            raise ValueError("one replica index per request")
        t0 = time.perf_counter()
        keys = [request_key(self.transport.endpoint, r, k) for r, k in zip(requests, replicas)]
        unique: dict[str, dict] = {}
        for key, req in zip(keys, requests):
            unique.setdefault(key, req)
        answers: dict[str, Response] = {}
        if self.cache is not None:
            for key, value in self.cache.get_many(list(unique)).items():
                answers[key] = Response(value["body"], True, value.get("prompt_tokens", 0),
                                        value.get("completion_tokens", 0), value.get("cost"), 0)
        misses = [k for k in unique if k not in answers]
        with self.stats._lock:
            self.stats.requested += len(unique)
            self.stats.cache_hits += len(unique) - len(misses)
        if misses and self.dry_run:
            for key in misses:
                tokens = self._estimate(unique[key])
                with self.stats._lock:
                    self.stats.would_send += 1
                    self.stats.estimated_tokens += tokens
                    self.stats.estimated_cost += self._cost_of(unique[key], tokens) or 0.0
                answers[key] = Response(None, False)
        elif misses:
            reservations = self._reserve_all([unique[k] for k in misses])
            future = asyncio.run_coroutine_threadsafe(
                self._send_all([(k, unique[k], r) for k, r in zip(misses, reservations)], answers, prepare),
                self._loop)
            try:
                future.result()
            except BaseException:
                future.cancel()
                raise
            finally:
                for r in reservations:
                    self._release(r)
        with self.stats._lock:
            self.stats.seconds += time.perf_counter() - t0
        return [answers[k] for k in keys]

    def close(self):
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self.transport, "close"):
            self.transport.close()

    # -- budget ---------------------------------------------------------------------------------
    def _estimate(self, request: dict) -> int:
        est = self.token_estimate(request)
        out = max_output_tokens(request)
        if self._seen_prompt_tokens:  # learned: 1.25 x the largest prompt the endpoint has billed
            est = int(self._seen_prompt_tokens * 1.25) + 16 + out
        return est

    def _model_of(self, request: dict) -> str | None:
        return request.get("model") or self.model

    def _cost_of(self, request: dict, tokens: int) -> float | None:
        model = self._model_of(request)
        if model is None:
            return None
        out = min(max_output_tokens(request), tokens)  # the rest of the reservation is prompt
        return self.prices.cost(model, tokens - out, out)

    def _reserve_all(self, requests: list[dict]):
        held = []
        try:
            for req in requests:
                tokens = self._estimate(req)
                cost = self._cost_of(req, tokens) or 0.0
                held.append(self.budget.reserve(1 if self.count_queries else 0, tokens, cost))
        except BudgetExceeded:
            for r in held:
                self.budget.release(r)
            raise
        return held

    # -- sending --------------------------------------------------------------------------------
    async def _send_all(self, jobs, answers, prepare=None):
        batch = {"abort": None, "prepare": prepare}
        tasks = [asyncio.ensure_future(self._send_one(key, req, res, answers, batch)) for key, req, res in jobs]
        # on the first failure the requests not yet sent are dropped, the ones in flight finish
        # (their answers are paid for, so they are settled and cached), then the error is raised
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = batch["abort"] or errors[0]
            raise first

    def _wait(self, state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return min(after, self.max_wait)
        import random

        expo = self.backoff * (2 ** (state.attempt_number - 1))
        return min(self.max_wait, expo + random.uniform(0, self.backoff))

    def _settle(self, reservation, tokens=None, cost=None):
        """Settle once; spending reported after a reservation was given back is still recorded."""
        with self._settle_lock:
            if not reservation.settled:
                self.budget.settle(reservation, tokens=tokens, cost=cost)
                return
        late = self.budget.reserve(0)
        self.budget.settle(late, tokens=reservation.tokens if tokens is None else tokens,
                           cost=reservation.cost if cost is None else cost)

    def _release(self, reservation):
        with self._settle_lock:
            if not reservation.settled:
                self.budget.release(reservation)

    def _attempt(self, key, request, reservation, prepare=None):
        """One HTTP attempt, run in a worker thread; a success is settled and cached right here,
        so an answer that arrives is never lost (even when the caller was interrupted)."""
        with self.stats._lock:
            self.stats.attempts += 1
        try:
            body = self.transport.send(prepare(request) if prepare else request, self.timeout)
        except RetryableError as exc:
            with self.stats._lock:
                self.stats.failed_attempts += 1
                self.stats.maybe_billed += bool(exc.maybe_billed)
            if exc.maybe_billed:
                self._settle(reservation)
            raise
        except EndpointRefused:
            with self.stats._lock:
                self.stats.failed_attempts += 1
            raise
        usage = self.transport.usage(body)
        prompt, completion = usage if usage else (0, 0)
        model = self._model_of(request)
        cost = self.prices.cost(model, prompt, completion) if model else None
        if usage:
            self._settle(reservation, tokens=prompt + completion, cost=cost if cost is not None else reservation.cost)
        else:  # no usage reported: charge the reservation (never under-count)
            self._settle(reservation)
        if self.validate is not None:
            try:
                self.validate(request, body)  # paid, but unusable: counted, then retried
            except RetryableError:
                with self.stats._lock:
                    self.stats.failed_attempts += 1
                    self.stats.unusable += 1
                    self.stats.prompt_tokens += prompt
                    self.stats.completion_tokens += completion
                    self.stats.cost += cost or 0.0
                raise
        if self.cache is not None:
            self.cache.put(key, {"body": body, "prompt_tokens": prompt, "completion_tokens": completion,
                                 "cost": cost}, endpoint=self.transport.endpoint)
        with self.stats._lock:
            self.stats.sent += 1
            self.stats.prompt_tokens += prompt
            self.stats.completion_tokens += completion
            if cost is None:
                self.stats.cost_known = False
            else:
                self.stats.cost += cost
            self._seen_prompt_tokens = max(self._seen_prompt_tokens, prompt)
        return Response(body, False, prompt, completion, cost, 0)

    async def _send_one(self, key, request, reservation, answers, batch):
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

        semaphore, rpm, tpm = self._limiters
        loop = asyncio.get_running_loop()
        holder = {"reservation": reservation}
        attempts = 0

        def before_sleep(state):
            with self.stats._lock:
                self.stats.retries += 1

        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                 retry=retry_if_exception_type(RetryableError), reraise=True,
                                 before_sleep=before_sleep)
        try:
            async for attempt in retrying:
                with attempt:
                    if batch["abort"] is not None:
                        raise batch["abort"]
                    attempts += 1
                    if holder["reservation"].settled:  # the last attempt was charged: reserve anew
                        holder["reservation"] = self._reserve_all([request])[0]
                    async with semaphore:
                        if batch["abort"] is not None:
                            raise batch["abort"]
                        if rpm is not None:
                            await rpm.acquire()
                        if tpm is not None:
                            await tpm.acquire(min(float(holder["reservation"].tokens), tpm.max_rate))
                        response = await loop.run_in_executor(self._pool, self._attempt, key, request,
                                                              holder["reservation"], batch["prepare"])
        except RetryableError as exc:
            error = ModelError(f"the endpoint failed {attempts} attempt(s) in a row; last error: {exc}")
            batch["abort"] = batch["abort"] or error
            raise error from None
        except BaseException as exc:
            batch["abort"] = batch["abort"] or exc
            raise
        finally:
            if holder["reservation"] is not reservation:
                self._release(holder["reservation"])
        response.attempts = attempts
        answers[key] = response


def finite_or(value: Any, default: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default
