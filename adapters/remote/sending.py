"""How a batch of requests goes out: concurrency, rate limits, retries and Ctrl-C.

A :class:`Sender` runs its own asyncio loop in a daemon thread. Each request is one task that,
per attempt:

1. takes one of ``concurrency`` slots and holds its worst case right then (the bound may have
   grown since the batch was reserved; when the cap is short and answers are in flight, it waits
   for them to settle: they usually come in under their bound);
2. when tokens or money are capped, waits for room in the slow-start window;
3. takes its share of the rate limits (aiolimiter: ``rpm`` requests and ``tpm`` reserved tokens
   a minute, as smooth buckets of about one second);
4. runs the attempt in a worker thread of a :class:`DaemonPool`.

tenacity is the only retry layer: it retries what :func:`.outcomes.should_retry` says, after
:func:`.outcomes.retry_delay`. On the first failure the requests not yet sent are dropped, the
ones in flight finish (their answers are paid, so they are settled and cached), then the error is
raised. Ctrl-C: sending stops, answers in flight get ``INTERRUPT_GRACE`` seconds to arrive, then
:class:`KeyboardInterrupt` goes on; no thread keeps the process alive.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from blackbox.errors import BudgetExceeded, ModelError
from blackbox.queries import Reservation

from .outcomes import retry_delay, should_retry
from .spending import Spending

INTERRUPT_GRACE = 0.5  # seconds answers in flight get to arrive after Ctrl-C
CHECK_EVERY = 0.5      # seconds between checks while waiting for answers in flight


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
    """Raised in the sender's own tasks when the caller was interrupted (Ctrl-C)."""


@dataclass
class _Run:
    """One call of :meth:`Sender.run`: its attempt function, its answers, what stops it."""

    attempt: Callable[[str, dict, Reservation], Any]
    answers: dict = field(default_factory=dict)
    abort: BaseException | None = None

    def check(self) -> None:
        if self.abort is not None:
            raise self.abort


async def _limiters(concurrency: int, rpm: float | None, tpm: float | None):
    """The slots, the rate limits and the condition notified whenever an attempt finishes, made
    in the loop they serve."""
    from aiolimiter import AsyncLimiter

    def per_minute(rate):  # a smooth bucket (about one second's worth), not a minute-long burst
        per_second = rate / 60.0
        return AsyncLimiter(per_second, 1.0) if per_second >= 1 else AsyncLimiter(1, 1.0 / per_second)

    return (asyncio.Semaphore(concurrency), per_minute(rpm) if rpm else None,
            per_minute(tpm) if tpm else None, asyncio.Condition())


class Sender:
    """Sends jobs ``(key, request, reservation)`` concurrently, each through ``attempt(key,
    request, reservation) -> response`` (run in a worker thread; it must settle what it is paid
    for), retried per :mod:`.outcomes`; reservations are held and topped up on ``spending``."""

    def __init__(self, spending: Spending, stats, *, concurrency: int = 16, rpm: float | None = None,
                 tpm: float | None = None, max_attempts: int = 6, backoff: float = 0.5, max_wait: float = 60.0):
        self.spending, self.stats = spending, stats
        self.max_attempts, self.backoff, self.max_wait = max_attempts, backoff, max_wait
        self.in_flight = 0
        self._pool = DaemonPool(concurrency)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackbox-remote-loop", daemon=True)
        self._thread.start()
        self._slots, self._rpm, self._tpm, self._changed = asyncio.run_coroutine_threadsafe(
            _limiters(concurrency, rpm, tpm), self._loop).result()

    def run(self, jobs: Sequence[tuple[str, dict, Reservation]], attempt: Callable[[str, dict, Reservation], Any]) -> dict:
        """Send every job; ``{key: response}`` once all are answered, else the first error."""
        run = _Run(attempt)
        future = asyncio.run_coroutine_threadsafe(self._send_all(jobs, run), self._loop)
        try:
            future.result()
        except KeyboardInterrupt:
            # stop sending; answers in flight get a moment to arrive (and be cached), then go
            self._loop.call_soon_threadsafe(setattr, run, "abort", _Interrupted("interrupted"))
            try:
                future.result(timeout=INTERRUPT_GRACE)
            except BaseException:
                future.cancel()
            raise
        except BaseException:
            future.cancel()
            raise
        return run.answers

    def close(self) -> None:
        """Stop the loop and the workers; never waits on an attempt still in flight."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=1)
        self._pool.shutdown()

    # -- in the loop ----------------------------------------------------------------------------
    async def _send_all(self, jobs, run: _Run):
        tasks = [asyncio.ensure_future(self._send_one(key, req, res, run)) for key, req, res in jobs]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise run.abort or errors[0]

    async def _send_one(self, key, request, reservation: Reservation, run: _Run):
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        held, attempts = reservation, 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts), retry=retry_if_exception(should_retry), reraise=True,
            wait=lambda state: retry_delay(state.outcome.exception() if state.outcome else None,
                                           state.attempt_number, self.backoff, self.max_wait),
            before_sleep=lambda state: self.stats.add(retries=1))
        try:
            async for attempt in retrying:
                with attempt:
                    run.check()
                    attempts += 1
                    async with self._slots:
                        held = await self._hold(held, request)
                        response = await self._gated(key, request, held, run)
        except BaseException as exc:
            if not should_retry(exc):
                run.abort = run.abort or exc
                raise
            error = ModelError(f"the endpoint failed {attempts} attempt(s) in a row; last error: {exc}")
            run.abort = run.abort or error
            raise error from None
        finally:
            if held is not reservation:
                self.spending.release(held)
        response.attempts = attempts
        run.answers[key] = response

    async def _hold(self, held: Reservation, request: dict) -> Reservation:
        """The reservation for the next attempt: a new one when the last attempt was billed
        (settled), else the same one topped up to the current bound."""
        if held.settled:
            return await self._when_budget_allows(lambda: self.spending.reserve(request))
        await self._when_budget_allows(lambda: self.spending.top_up(held, request))
        return held

    async def _when_budget_allows(self, action):
        """Run ``action()`` (a reservation); while the cap is short and answers are in flight, wait
        for them to settle and try again."""
        while True:
            try:
                return action()
            except BudgetExceeded:
                if self.in_flight == 0:
                    raise
            async with self._changed:
                await self._next_change()

    async def _next_change(self) -> None:
        """Wait (holding ``_changed``) until an attempt finishes, or ``CHECK_EVERY`` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), CHECK_EVERY)
        except asyncio.TimeoutError:
            pass

    async def _gated(self, key, request, reservation: Reservation, run: _Run):
        """One attempt in the slow-start window and under the rate limits, in a worker thread."""
        await self._enter(run)
        try:
            run.check()
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None:
                await self._tpm.acquire(min(float(reservation.tokens), self._tpm.max_rate))
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, run.attempt, key, request, reservation)
        finally:
            self.in_flight -= 1
            async with self._changed:
                self._changed.notify_all()

    async def _enter(self, run: _Run) -> None:
        """Count one more attempt in flight, when tokens or money are capped once the slow-start
        window has room."""
        if self.spending.capped:
            async with self._changed:
                while self.in_flight >= self.spending.window.size:
                    await self._next_change()
                    run.check()
                self.in_flight += 1
        else:
            self.in_flight += 1
