"""Explain images on a Ray cluster (``explain_many(..., executor="ray", address=...)``).

Imported only when that executor is asked for, and ``ray`` itself only here (the ``[ray]``
extra), so the core stays importable without it. Ray is orchestration, not a model: it lives in
the core next to the process pool, while models stay behind their adapters and are rebuilt in
each Ray worker from their description.

What is shared across the cluster, and how:

* **budget**: the run's ledger (an SQLite file on the driver's machine) is served by one actor
  pinned to the driver's node; every reservation of every worker goes through it, so no worker
  can take what another holds or spent;
* **query cache** (remote models): one actor on the driver's node serves the driver's cache file,
  so an answer paid on one node is never paid again on another (e.g. when an image is retried
  after its worker died);
* **rate limits**: each of the ``slots`` concurrent tasks gets ``1/slots`` of the rpm/tpm and of
  the concurrency, so together they stay within the endpoint's limits.

A task whose worker or node dies is reported to the driver, which counts what it held as spent
and runs the image again (its answered queries come from the cache).
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import BudgetExceeded, MissingDependency
from .executors import Job, Task, run_task


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "ray", "executor='ray'") from None
    return ray


class LedgerService:
    """The run's ledger inside an actor; a refused reservation comes back as a value, not a
    Ray error, so workers raise a plain :class:`BudgetExceeded`."""

    def __init__(self, ledger):
        self.ledger = ledger

    def call(self, method: str, *args):
        try:
            return True, getattr(self.ledger, method)(*args)
        except BudgetExceeded as exc:
            return False, str(exc)


class RayLedger:
    """A :class:`~blackbox.many.ledger.Ledger` whose calls go to a :class:`LedgerService` actor."""

    def __init__(self, actor):
        self.actor = actor

    def _call(self, method, *args):
        ok, value = _ray().get(self.actor.call.remote(method, *args))
        if not ok:
            raise BudgetExceeded(value)
        return value

    def caps(self):
        return self._call("caps")

    def reserve(self, owner, queries, tokens=0, cost=0.0):
        return self._call("reserve", owner, queries, tokens, cost)

    def grow(self, ticket, tokens=0, cost=0.0):
        return self._call("grow", ticket, tokens, cost)

    def settle(self, ticket, queries, tokens=0, cost=0.0):
        return self._call("settle", ticket, queries, tokens, cost)

    def record(self, queries, tokens=0, cost=0.0):
        return self._call("record", queries, tokens, cost)

    def reclaim(self, owner=None):
        return self._call("reclaim", owner)

    def totals(self):
        return self._call("totals")


class CacheService:
    """A remote model's query cache (the driver's file) inside an actor."""

    def __init__(self, handle):
        self.cache = handle.make_cache()

    def get_many(self, keys):
        return self.cache.get_many(keys)

    def put(self, key, value, endpoint=""):
        self.cache.put(key, value, endpoint=endpoint)


class RayCache:
    """The query-cache interface remote engines use (``get_many``, ``put``), served by an actor.
    ``put`` waits for the actor, so an answer is stored before the worker goes on."""

    def __init__(self, actor):
        self.actor = actor

    def get_many(self, keys):
        return _ray().get(self.actor.get_many.remote(keys))

    def put(self, key, value, endpoint=""):
        _ray().get(self.actor.put.remote(key, value, endpoint))


class RayExecutor:
    """Tasks of one CPU each on a Ray cluster: ``address`` of a running cluster, or None to join
    ``RAY_ADDRESS`` / an already initialised Ray, else to start a local one."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1):
        self.address = address
        self.workers = workers
        self.threads = threads
        self.slots = self.queue = workers or 1
        self.crash_errors: tuple = ()
        self._started_ray = False
        self._actors: list = []

    def start(self, job: Job) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level="warning")
            self._started_ray = True
        from ray import exceptions as rx
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.crash_errors = (rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError, rx.OwnerDiedError,
                             rx.LocalRayletDiedError, rx.TaskCancelledError)
        self.slots = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # no more tasks than slots: a task waiting on the ledger actor lends its CPU to Ray, which
        # would start a queued task in yet another worker and oversubscribe the machine
        self.queue = self.slots
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        ledger = ray.remote(num_cpus=0)(LedgerService).options(scheduling_strategy=here).remote(job.ledger)
        self._actors = [ledger]
        cache = None
        if job.handle.remote:
            service = ray.remote(num_cpus=0, max_concurrency=8)(CacheService)
            self._actors.append(service.options(scheduling_strategy=here).remote(job.handle))
            cache = RayCache(self._actors[-1])
        self.job = replace(job, ledger=RayLedger(ledger), cache=cache, share=self.slots, threads=self.threads)
        self._job = ray.put(self.job)
        self._run = ray.remote(num_cpus=1, max_retries=0)(run_task)

    def submit(self, task: Task):
        return self._run.remote(self._job, task).future()

    def close(self) -> None:
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
