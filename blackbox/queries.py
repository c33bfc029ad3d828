"""The query layer: what a black box is, what a query costs, and who counts.

A *query function* takes a batch of inputs (an array whose first axis is the batch) and returns
one float per input. Everything in blackbox (estimators, saliency, prompt tuning, alignment) talks
to models only through query functions wrapped in a :class:`QueryRunner`, which batches, checks
the :class:`Budget` before every call, times the model and reports progress.

One counter: ``Budget.queries`` counts *billable requests*, and whoever makes a request reserves
it. For a local model a request is one input, so the runner reserves one query per input. A
query function that sends its requests through a metered engine (a remote model) says so by
carrying the budget it spends from as ``fn.budget``; the runner then adopts that budget and
leaves the counting to the engine, which reserves every attempt that can be billed (the first
attempt, a capability probe, the samples of a fallback score, retries of paid-but-unusable
answers) and settles tokens and money on the same budget. Cached answers cost nothing.

Stages: a run whose later queries depend on earlier answers (a second stage that re-measures
what the first ranked highest, a round rationed from the variance so far) marks the boundary
with :meth:`QueryRunner.stage`. Locally that does nothing. A model that collects its requests
for a provider's batch interface (answering placeholders until the batch is back) raises
:class:`StagePending` there when this run has used placeholders: the caller sends the batch and
runs again from the start, now answered from the cache, so every stage sees real answers.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from .errors import BudgetExceeded, InputError, ModelError


class StagePending(Exception):
    """A run reached a stage boundary (or its end) having used answers that are not there yet:
    its requests are waiting to be sent as a batch. Not an error: send the batch, then run again."""


@runtime_checkable
class QueryFunction(Protocol):
    """A black box: a batch of ``n`` inputs in, ``n`` floats out (forward passes only)."""

    def __call__(self, inputs: np.ndarray) -> np.ndarray: ...


@dataclass
class Reservation:
    """Spending held back for one call before it is made; settled from what it really cost."""

    queries: int
    tokens: int = 0
    cost: float = 0.0
    settled: bool = False


@dataclass
class Budget:
    """Caps on billable requests (and, for paid APIs, tokens, money and wall time) never overspent.

    Every request first *reserves* its worst-case spending; a reservation that would pass a cap,
    or that comes after the deadline (``max_seconds`` after the budget was made), raises
    :class:`BudgetExceeded` before anything is sent. After the request the reservation is
    *settled* with the usage actually reported (tokens and cost can come in under the estimate),
    or *released* when nothing billable happened. Thread-safe, so concurrent requests (and
    workers) share one budget. ``None`` means no cap.
    """

    max_queries: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    max_seconds: float | None = None
    queries: int = 0
    tokens: int = 0
    cost: float = 0.0
    _held: Reservation = field(default_factory=lambda: Reservation(0), repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)
    _started: float = field(default_factory=time.monotonic, repr=False, compare=False)

    def __post_init__(self):
        for name in ("max_queries", "max_tokens", "max_cost", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    @property
    def remaining(self) -> int | None:
        """Queries that can still be reserved (None when queries are not capped)."""
        if self.max_queries is None:
            return None
        with self._lock:
            return self.max_queries - self.queries - self._held.queries

    def seconds_left(self) -> float | None:
        """Wall-clock seconds until the deadline (None without one; <= 0 once it has passed)."""
        if self.max_seconds is None:
            return None
        return self._started + self.max_seconds - time.monotonic()

    def reserve(self, queries: int, tokens: int = 0, cost: float = 0.0) -> Reservation:
        if queries < 0 or tokens < 0 or cost < 0:
            raise ValueError("a reservation cannot be negative")
        left = self.seconds_left()
        if left is not None and left <= 0:
            raise BudgetExceeded(f"deadline reached: the run may take {_fmt(self.max_seconds)} s (--deadline)")
        with self._lock:
            checks = (
                ("queries", self.max_queries, self.queries + self._held.queries + queries),
                ("tokens", self.max_tokens, self.tokens + self._held.tokens + tokens),
                ("cost", self.max_cost, self.cost + self._held.cost + cost),
            )
            for what, cap, would_be in checks:
                if cap is not None and would_be > cap + 1e-12:
                    spent = {"queries": self.queries, "tokens": self.tokens, "cost": self.cost}[what]
                    raise BudgetExceeded(
                        f"budget exhausted: {what} cap is {_fmt(cap)}, {_fmt(spent)} spent"
                        f"{', ' + _fmt(would_be - spent) + ' more requested' if would_be > spent else ''}"
                    )
            self._held.queries += queries
            self._held.tokens += tokens
            self._held.cost += cost
            return Reservation(queries, tokens, cost)

    def settle(self, reservation: Reservation, tokens: int | None = None,
               cost: float | None = None, queries: int | None = None) -> None:
        """Turn a reservation into spending. Usage defaults to what was reserved."""
        with self._lock:
            if reservation.settled:
                raise RuntimeError("reservation settled twice")
            reservation.settled = True
            self._held.queries -= reservation.queries
            self._held.tokens -= reservation.tokens
            self._held.cost -= reservation.cost
            self.queries += reservation.queries if queries is None else queries
            self.tokens += reservation.tokens if tokens is None else tokens
            self.cost += reservation.cost if cost is None else cost

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call was never made."""
        self.settle(reservation, tokens=0, cost=0.0, queries=0)

    def grow(self, reservation: Reservation, tokens: int = 0, cost: float = 0.0) -> None:
        """Hold more tokens/cost for an unsettled reservation (its worst case went up); raises
        :class:`BudgetExceeded` (holding nothing more) if that would pass a cap."""
        extra = self.reserve(0, tokens, cost)
        reservation.tokens += extra.tokens
        reservation.cost += extra.cost

    def record(self, queries: int = 0, tokens: int = 0, cost: float = 0.0) -> None:
        """Count spending that has already happened (an answer that arrived after its
        reservation was given back): no cap check, since it cannot be undone."""
        with self._lock:
            self.queries += queries
            self.tokens += tokens
            self.cost += cost

    def summary(self) -> dict:
        return {"queries": self.queries, "max_queries": self.max_queries, "tokens": self.tokens,
                "max_tokens": self.max_tokens, "cost": round(self.cost, 6), "max_cost": self.max_cost,
                "max_seconds": self.max_seconds}


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class KeyedInputs:
    """A batch of inputs known by content keys before they exist: ``keys[i]`` identifies input
    ``i`` (a hash of what determines it, e.g. the points an image space renders), and
    ``build(indices)`` makes those inputs. A query function that caches answers by content
    (``fn.keyed = True``: a remote model) looks answers up by key and builds only what it must
    send, so a cached rerun renders nothing; for any other the runner builds the batch."""

    def __init__(self, keys, build: Callable[[np.ndarray], np.ndarray], _index: np.ndarray | None = None):
        self.keys = list(keys)
        self._build = build
        self._index = np.arange(len(self.keys)) if _index is None else _index

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, part: slice) -> "KeyedInputs":
        if not isinstance(part, slice):
            raise TypeError("KeyedInputs take slices; use build([i]) for one input")
        return KeyedInputs(self.keys[part], self._build, self._index[part])

    def build(self, indices=None) -> np.ndarray:
        """The inputs at ``indices`` of this batch (all by default), as an array."""
        which = self._index if indices is None else self._index[np.asarray(indices, dtype=np.int64)]
        return self._build(which)

    def __array__(self, dtype=None, copy=None):
        built = self.build()
        return built if dtype is None else built.astype(dtype)


def keyed_points(points: np.ndarray, salt: str, render: Callable[[np.ndarray], np.ndarray]) -> KeyedInputs:
    """Inputs rendered from ``points`` (one row each) by ``render(points_subset) -> inputs``,
    keyed by sha256(salt, row): ``salt`` must identify everything else rendering depends on
    (the image, the baseline, the grid, the rendering code's version)."""
    import hashlib

    rows = np.ascontiguousarray(points, dtype=np.float64)
    prefix = hashlib.sha256(salt.encode())
    keys = []
    for row in rows:
        h = prefix.copy()
        h.update(row.tobytes())
        keys.append(h.hexdigest())
    return KeyedInputs(keys, lambda which: render(rows[which]))


@dataclass
class SpendRecord:
    """What a runner has spent: queries, model calls and the time spent inside the model."""

    queries: int = 0
    calls: int = 0
    model_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def as_dict(self) -> dict:
        return {"queries": self.queries, "calls": self.calls,
                "model_seconds": round(self.model_seconds, 4),
                "wall_seconds": round(self.wall_seconds, 4)}


class QueryRunner:
    """Wrap a query function: batching, budget checks, timing, progress.

    ``runner(inputs)`` sends ``inputs`` in chunks of ``batch_size``. Before each chunk it reserves
    one query per input from the budget, so a run stops with :class:`BudgetExceeded` *before* the
    first query that would overspend; everything answered until then has been counted and
    returned by earlier calls. A *metered* query function (one that carries ``fn.budget``: its
    engine counts the billable requests) is not counted again here: the runner adopts its budget
    (passing another one is an error). ``record.queries`` counts inputs evaluated either way.
    Output shape and finiteness are checked, so a broken model fails loudly instead of
    poisoning an estimate.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], budget: Budget | None = None,
                 batch_size: int = 32, progress: bool | Any = False, total: int | None = None,
                 description: str = "queries"):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        own = getattr(fn, "budget", None)
        if own is not None and budget is not None and budget is not own:
            raise InputError("this query function spends from its own Budget (its engine counts the requests): "
                             "give the QueryRunner that budget, or none")
        self.fn = fn
        self.metered = own is not None
        self.budget = own if own is not None else budget if budget is not None else Budget()
        self.batch_size = batch_size
        self.record = SpendRecord()
        self.on_stage: Callable[[], None] | None = None  # wired by whoever runs the job (see stage)
        self._bar = None
        if progress:
            self.start_progress(total, description)

    def stage(self) -> None:
        """Mark a stage boundary: what is asked next depends on the answers so far. Calls
        ``on_stage`` (which raises :class:`StagePending` when those answers are placeholders)."""
        if self.on_stage is not None:
            self.on_stage()

    def start_progress(self, total: int | None, description: str = "queries"):
        from tqdm.auto import tqdm

        self.close()
        self._bar = tqdm(total=total, desc=description, unit="q", leave=False, dynamic_ncols=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def accepts_keys(self) -> bool:
        """True when the query function takes :class:`KeyedInputs` (it caches by content)."""
        return bool(getattr(self.fn, "keyed", False))

    def __call__(self, inputs: np.ndarray | "KeyedInputs") -> np.ndarray:
        keyed = isinstance(inputs, KeyedInputs)
        if not keyed:
            inputs = np.asarray(inputs)
        n = len(inputs)
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            if keyed and not self.accepts_keys:
                chunk = chunk.build()
            reservation = None if self.metered else self.budget.reserve(len(chunk))
            t0 = time.perf_counter()
            try:
                values = np.asarray(self.fn(chunk), dtype=np.float64).reshape(-1)
            except BaseException:
                if reservation is not None:
                    self.budget.release(reservation)
                raise
            self.record.model_seconds += time.perf_counter() - t0
            if reservation is not None:
                self.budget.settle(reservation)
            self.record.queries += len(chunk)
            self.record.calls += 1
            if values.shape != (len(chunk),):
                raise ModelError(f"the model returned {values.size} scores for {len(chunk)} inputs")
            if not np.all(np.isfinite(values)):
                raise ModelError("the model returned a non-finite score (nan or inf)")
            out[start:start + len(chunk)] = values
            if self._bar is not None:
                self._bar.update(len(chunk))
        return out
