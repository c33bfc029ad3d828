"""Where the images of :func:`blackbox.explain_many` are explained: in this process, in a local
process pool, or on a Ray cluster (:mod:`blackbox.many.ray_executor`, imported only when asked for).

Every executor runs :func:`run_task` (one image) in a worker that has built its own model from a
picklable description (:class:`ModelHandle`) and draws on the run's shared budget
(:class:`~blackbox.many.ledger.SharedBudget` over one ledger). Remote models also share one query
cache, and each of ``share`` workers gets ``1/share`` of the rate limits and of the concurrency.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import BlackboxError, BudgetExceeded, InputError
from ..models import ImageModel, as_image_model
from ..queries import Budget, StagePending
from .ledger import SharedBudget, SQLiteLedger

EXECUTORS = ("serial", "pool", "ray")


# -- the model, as workers rebuild it --------------------------------------------------------------
class ModelHandle:
    """What a worker needs to get the model: ``build(budget=, cache=, share=, threads=)``."""

    picklable = True
    remote = False

    def __init__(self, target):
        self.target = target

    @staticmethod
    def of(model) -> "ModelHandle":
        if isinstance(model, ImageModel) or callable(getattr(model, "score_fn", None)):
            return InstanceHandle(model)
        if hasattr(model, "build"):
            return SpecHandle(model)
        if callable(model):
            return FactoryHandle(model)
        raise InputError("model must be an image model, a model description (blackbox.adapters.model_spec) "
                         "or a function that builds one")

    def make_cache(self):
        return None

    def describe(self) -> dict:
        return {"model": getattr(self.target, "name", None) or getattr(self.target, "__qualname__", repr(self.target))}


class InstanceHandle(ModelHandle):
    """A model built in this process: serial runs only (models are never pickled)."""

    picklable = False

    def build(self, **_):
        return self.target


class SpecHandle(ModelHandle):
    """A description such as :class:`blackbox.adapters.spec.ModelSpec`."""

    @property
    def remote(self) -> bool:
        return bool(getattr(self.target, "remote", False))

    def build(self, **kwargs):
        return self.target.build(**kwargs)

    def make_cache(self):
        return self.target.make_cache() if hasattr(self.target, "make_cache") else None

    def describe(self) -> dict:
        return self.target.describe() if hasattr(self.target, "describe") else {"model": repr(self.target)}


class FactoryHandle(ModelHandle):
    """A picklable zero-argument function that returns a model (e.g. the user's own torch model)."""

    def build(self, **_):
        return self.target()


# -- one image ------------------------------------------------------------------------------------
@dataclass
class Task:
    """One attempt at one image; ``owner`` names the reservations it holds in the ledger."""

    name: str
    source: str | None
    digest: str
    target: Any
    pixels: np.ndarray = field(repr=False)
    owner: str = ""


def task_for(item, owner: str) -> Task:
    return Task(item.name, item.source, item.digest, item.target, item.pixels(), owner)


@dataclass
class Job:
    """Everything a worker needs besides the image; small and picklable.

    Workers spend from a :class:`~blackbox.many.ledger.SharedBudget` over ``ledger``, except a model
    instance run in this process (``ledger`` None), which spends from ``local_budget``, else
    from the budget its query functions carry (a remote model's), else from a fresh one."""

    handle: ModelHandle
    ledger: Any
    queries: int
    options: dict
    faithfulness: int | None = None
    progress: bool = False
    share: int = 1
    threads: int | None = None
    cache: Any = None
    batch: bool = False   # the model collects requests for its batch interface (serial runs only)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    local_budget: Budget | None = field(default=None, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    @classmethod
    def create(cls, handle: ModelHandle, budget: Budget | None, folder, **kwargs) -> "Job":
        """For a model description, a fresh ledger for this run (in the results folder, else a
        temporary one) with what ``budget`` has left as its caps."""
        if isinstance(handle, InstanceHandle):
            return cls(handle, None, local_budget=budget, **kwargs)
        tmp = None
        if folder is not None:
            path = folder.ledger_path
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(f"{path}{suffix}"):
                    os.unlink(f"{path}{suffix}")
        else:
            tmp = tempfile.mkdtemp(prefix="blackbox-ledger-")
            path = os.path.join(tmp, "budget.sqlite")
        caps = {}
        if budget is not None:
            caps = {f"max_{k}": None if getattr(budget, f"max_{k}") is None
                    else getattr(budget, f"max_{k}") - getattr(budget, k) for k in ("queries", "tokens", "cost")}
            left = budget.seconds_left()
            caps["deadline"] = None if left is None else time.time() + left
        return cls(handle, SQLiteLedger(path, **caps), _tmp=tmp, **kwargs)

    @property
    def queries_per_image(self) -> int:
        return self.queries + (2 * (self.faithfulness + 1) if self.faithfulness else 0)

    def ledger_queries(self) -> int:
        return int(self.ledger.totals()["queries"]) if self.ledger is not None else 0

    def reclaim(self, owner: str | None = None) -> None:
        self.ledger.reclaim(owner)

    def finish(self, budget: Budget | None) -> dict:
        """What the run spent. A ledger is closed (anything still held counts as spent) and its
        spending added to ``budget``; a local budget already counted it."""
        if self.ledger is None:
            worker = _WORKER.get(self.key)
            spent = worker.spent() if worker is not None else {k: 0 for k in ("queries", "tokens", "cost")}
            caps = worker.budget if worker is not None else budget
            return {**spent, **{f"max_{k}": getattr(caps, f"max_{k}", None) for k in ("queries", "tokens", "cost")}}
        self.ledger.reclaim(None)
        totals = self.ledger.totals()
        if budget is not None:
            budget.record(int(totals["queries"]), int(totals["tokens"]), float(totals["cost"]))
        self.ledger.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return {k: totals[k] for k in ("queries", "tokens", "cost", "max_queries", "max_tokens", "max_cost")}


def _counts(budget: Budget) -> tuple:
    return budget.queries, budget.tokens, budget.cost


@dataclass
class Worker:
    """A worker's model and the budget it spends from: the run's shared budget, else the caller's,
    else the model's own meter (a remote model's), else a fresh one."""

    model: Any
    budget: Budget
    before: tuple = (0, 0, 0.0)

    @classmethod
    def over(cls, model, budget: Budget | None) -> "Worker":
        model = as_image_model(model)
        budget = budget if budget is not None else model.budget or Budget()
        return cls(model, budget, _counts(budget))

    def spent(self) -> dict:
        return {k: b - a for k, a, b in zip(("queries", "tokens", "cost"), self.before, _counts(self.budget))}


_WORKER: dict = {}  # job key -> Worker: the model is built once per worker process


def _limit_threads(threads: int | None) -> None:
    if not threads:
        return
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def _worker(job: Job) -> Worker:
    worker = _WORKER.get(job.key)
    if worker is None:
        _WORKER.clear()  # a long-lived (Ray) worker keeps one model, the current run's
        if job.ledger is None:
            worker = Worker.over(job.handle.build(), job.local_budget)
        else:
            budget = SharedBudget(job.ledger)
            worker = Worker.over(job.handle.build(budget=budget, cache=job.cache, share=job.share,
                                                  threads=job.threads), budget)
        _limit_threads(job.threads)  # after the build: torch may have been imported by it
        if job.batch:
            worker.model.collect(True)
        _WORKER[job.key] = worker
    return worker


def run_task(job: Job, task: Task):
    """Explain one image in a worker; every outcome comes back as an ImageResult (never pickled errors)."""
    from .results import ImageResult

    def failed(status, exc):
        return ImageResult(task.name, task.source, task.digest, status, task.target, error=str(exc),
                           details={"kind": type(exc).__name__})
    try:
        worker = _worker(job)
    except BlackboxError as exc:  # the model cannot be built here: the driver stops the run
        return failed("error", exc)
    if isinstance(worker.budget, SharedBudget):
        worker.budget.owner = task.owner
    try:
        return explain_image(worker, job, task)
    except StagePending:  # its requests wait for the run's next batch: the driver sends it, then again
        return ImageResult(task.name, task.source, task.digest, "waiting", task.target)
    except BudgetExceeded as exc:
        return failed("stopped", exc)
    except InputError as exc:
        return failed("failed", exc)
    except BlackboxError as exc:  # the model or the endpoint: the driver stops the run
        return failed("error", exc)


def _usage(model) -> dict:
    """Requests paid (one by one, or earlier in this batched run) and read from the cache."""
    u = model.usage() or {}
    return {"paid": u.get("sent", 0) + u.get("batch_hits", 0), "cached": u.get("cache_hits", 0)} if u else {}


def explain_image(worker: Worker, job: Job, task: Task):
    """One image as ``blackbox.explain`` would explain it alone, plus its top-5 and (if asked)
    its faithfulness, all paid from the worker's budget."""
    from ..saliency import Saliency
    from ..saliency.pipeline import explain_image as pipeline
    from .results import ImageResult

    started = time.perf_counter()
    model = worker.model
    before = _usage(model)
    options = dict(job.options)
    seed = options.pop("seed", 0)
    done = pipeline(model, task.pixels, target=task.target, queries=job.queries,
                    explainer=Saliency.from_options(**options), seed=seed, budget=worker.budget, progress=job.progress,
                    faithfulness=job.faithfulness)
    result, view = done.result, done.result.view
    after = _usage(model)
    details = {**result.summary(), "signed": result.signed, **{k: after[k] - before.get(k, 0) for k in after},
               "worker": _worker_name()}
    return ImageResult(task.name, task.source, task.digest, "stopped" if done.stopped_by_budget else "done",
                       task.target, done.target.label, done.target.index, done.top5, result.queries,
                       time.perf_counter() - started, done.faithfulness, details, (view.original, view.box, view.size),
                       result.map, result.cells, result.stderr, error=result.stopped if done.stopped_by_budget else None)


def _worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


# -- executors ------------------------------------------------------------------------------------
class SerialExecutor:
    """Here, one image after another (the model may be an instance)."""

    name = "serial"
    crash_errors: tuple = ()

    def __init__(self):
        self.slots = 1
        self.queue = 1

    def start(self, job: Job) -> None:
        self.job = job

    def submit(self, task: Task) -> Future:
        future: Future = Future()
        try:
            future.set_result(run_task(self.job, task))
        except Exception as exc:  # a bug: raised by the driver
            future.set_exception(exc)
        return future

    def send_batch(self, progress: bool = True) -> int:
        """Send what the images waiting have collected, as one batch (see :func:`run_task`)."""
        worker = _WORKER.get(self.job.key)
        return worker.model.send_batch(progress) if worker is not None else 0

    def close(self) -> None:
        worker = _WORKER.get(self.job.key) if getattr(self, "job", None) is not None else None
        if worker is not None and self.job.batch:
            worker.model.collect(False)


class ProcessPool:
    """Local worker processes (spawned; one intra-op thread each), each in a pool of its own, so
    a worker that dies takes down only the images it held: the driver counts what they held as
    spent and sends them again, and a fresh process takes the dead one's place."""

    name = "pool"
    crash_hint = ("; a script that uses a process pool must call explain_many under "
                  "`if __name__ == \"__main__\":` (workers are spawned and import the script)")

    def __init__(self, workers: int | None = None, threads: int = 1):
        from concurrent.futures.process import BrokenProcessPool

        self.crash_errors = (BrokenProcessPool,)
        self.slots = int(workers or os.cpu_count() or 1)
        self.queue = 2 * self.slots  # one image running and one waiting per worker
        self.threads = threads
        self._pools: list = [None] * self.slots
        self._busy = [0] * self.slots
        self._lock = threading.Lock()

    def start(self, job: Job) -> None:
        self.job = replace(job, share=self.slots, threads=self.threads)

    def _pool(self, i: int):
        if self._pools[i] is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pools[i] = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pools[i]

    def submit(self, task: Task) -> Future:
        with self._lock:
            i = min(range(self.slots), key=self._busy.__getitem__)
            self._busy[i] += 1
            pool = self._pool(i)
        future = pool.submit(run_task, self.job, task)
        future.add_done_callback(lambda f, i=i, pool=pool: self._done(f, i, pool))
        return future

    def _done(self, future: Future, i: int, pool) -> None:
        with self._lock:
            self._busy[i] -= 1
            if not future.cancelled() and isinstance(future.exception(), self.crash_errors) and self._pools[i] is pool:
                self._pools[i] = None  # its process died: the next image there starts a new one
                threading.Thread(target=pool.shutdown, kwargs={"wait": False}, daemon=True).start()

    def close(self) -> None:
        for pool in self._pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pools = [None] * self.slots
