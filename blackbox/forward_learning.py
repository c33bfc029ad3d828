"""Forward learning: the one training loop of every job that learns from queries (ask / tell).

A **gradient source** knows what to query and how to turn the answers into a gradient; the loop
(:func:`train`) owns everything else. One step::

    items  = batch_items(seed, step, n_items, batch_size)             # which examples
    counts = allocator.allocate(queries_per_step, batch_size, ...)    # how many queries each
    asked  = source.ask(theta, items, counts, rng)                    # what to query
    values = runner(asked.queries())                                  # the black box, on the Budget
    est    = source.tell(theta, items, asked, values)                 # Estimate: gradient, per item
    theta  = adam.step(theta, est.grad)                               # variance and loss

The runner is a :class:`~blackbox.queries.QueryRunner` on the run's :class:`~blackbox.queries.Budget`:
a step that does not fit is not started, and its queries are counted there and nowhere else (a
source whose loss goes through a metered remote engine carries that engine's budget as
``source.budget``; the engine then counts the billable requests, cached answers free). The
loop also keeps the history (one schema for every source), evaluates, shows progress, and writes
and resumes checkpoints (one format). The sources in blackbox:

* :class:`ParameterNoise` -- antithetic Gaussian noise on ``theta`` itself, for any loss
  ``loss(thetas, items)`` (soft prompts; the alignment projector with ``perturb="params"``);
* :class:`blackbox.alignment.OutputNoise` -- noise on a linear layer's output, chain rule to its
  weights (ULR); :class:`AntitheticNoise` is the base of both;
* :class:`blackbox.discrete_prompt.PolicyGradient` -- sampled word prompts, score-function gradient;
* *exact* sources (the backpropagation references) offer ``gradient(theta, items) -> Estimate``
  instead of ``ask``/``tell`` and spend no queries; they share the batches, Adam, history and
  evaluation of the query-based runs, so the two are compared step for step.

Each item's estimate is weighted ``1/n_i`` (unbiased for any allocation, see
:func:`blackbox.allocators.combine`); every item's last measured per-query variance and loss are
remembered, so Neyman and FLOPS allocate from the item's previous visit.

Reproducible and resumable: the batch and the noise of step ``t`` depend only on ``(seed, t)`` and
the (checkpointed) allocator state, so a run resumed from its checkpoint sends exactly the queries
the uninterrupted run would have sent; with a caching remote engine, a step that was interrupted
half-way is answered from the cache and paid once.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from .allocators import make_allocator
from .errors import BudgetExceeded, InputError
from .queries import Budget, QueryRunner

LossFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
REWARDS = ("variance", "improvement")


# --------------------------------------------------------------------------------------------
# what a source returns
# --------------------------------------------------------------------------------------------
@dataclass
class Asked:
    """The queries of one step: query ``r`` evaluates ``points[r]`` on example ``items[r]``.
    ``context`` is whatever the source needs back in :meth:`tell` (its noise, its owners)."""

    points: np.ndarray
    items: np.ndarray
    context: Any = None

    def queries(self) -> np.ndarray:
        """One record per query (fields ``point`` and ``item``), as a QueryRunner sends them."""
        points = np.asarray(self.points)
        out = np.empty(len(self.items), dtype=[("item", np.int64), ("point", points.dtype, points.shape[1:])])
        out["item"] = self.items
        out["point"] = points
        return out


@dataclass
class Estimate:
    """A step's gradient and what the allocator learns from it, one entry per batch item."""

    grad: np.ndarray            # flat, the size of theta
    item_variance: np.ndarray   # per-query (trace) variance proxy of each item's estimate
    item_loss: np.ndarray       # mean loss of each item's queries


@runtime_checkable
class GradientSource(Protocol):
    """What :func:`train` trains from queries (see the module docstring)."""

    n_items: int
    unit: int                  # queries come in multiples of this per item (2: antithetic pairs)

    def ask(self, theta: np.ndarray, items: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> Asked: ...

    def loss(self, points: np.ndarray, items: np.ndarray) -> np.ndarray: ...

    def tell(self, theta: np.ndarray, items: np.ndarray, asked: Asked, values: np.ndarray) -> Estimate: ...


def estimate(source, theta: np.ndarray, items: np.ndarray, counts, rng: np.random.Generator,
             run: Callable[[np.ndarray], np.ndarray] | None = None) -> Estimate:
    """One ask / query / tell round. ``run`` sends the queries (a QueryRunner; default: the
    source's loss directly, with no budget)."""
    asked = source.ask(theta, items, np.asarray(counts, dtype=np.int64), rng)
    values = (run or _direct(source))(asked.queries())
    return source.tell(theta, items, asked, np.asarray(values, dtype=np.float64).reshape(-1))


def _direct(source):
    def run(queries: np.ndarray) -> np.ndarray:
        return source.loss(np.ascontiguousarray(queries["point"]), queries["item"].copy())

    # a source whose loss is metered (a remote engine counts its billable requests on this budget)
    # says so; the loop's QueryRunner then adopts that budget instead of counting again
    run.budget = getattr(source, "budget", None)
    return run


# --------------------------------------------------------------------------------------------
# antithetic Gaussian noise: on theta, or on a per-item point that theta maps to
# --------------------------------------------------------------------------------------------
class AntitheticNoise:
    """LR gradients from antithetic pairs around a per-item centre ``c_i(theta)``.

    Item ``i`` gets ``n_i / 2`` draws ``z ~ N(0, sigma^2 I)`` and the queries ``c_i + z`` and
    ``c_i - z``; its gradient at the centre is ``mean (L+ - L-) z / (2 sigma^2)``, and
    :meth:`pull` turns the per-item gradients into ``d mean_i L_i / d theta`` (the chain rule
    through ``c``). Subclasses define :meth:`centres`, :meth:`pull` and :meth:`loss`;
    :meth:`pull_scale` is the squared norm of ``d theta / d c_i`` acting on a vector (1 for the
    identity), which turns the point-space variance into the parameter-space one.
    """

    unit = 2

    def __init__(self, n_items: int, sigma: float):
        if n_items < 1:
            raise InputError("n_items must be >= 1")
        if not sigma > 0:
            raise InputError("sigma must be > 0")
        self.n_items, self.sigma = int(n_items), float(sigma)

    def centres(self, theta: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pull(self, theta: np.ndarray, items: np.ndarray, grads: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pull_scale(self, items: np.ndarray) -> np.ndarray | float:
        return 1.0

    def ask(self, theta, items, counts, rng) -> Asked:
        owner = np.repeat(np.arange(len(items)), np.asarray(counts) // 2)
        centre = self.centres(theta, items)
        z = rng.standard_normal((len(owner), centre.shape[1])) * self.sigma
        points = np.concatenate([centre[owner] + z, centre[owner] - z])
        return Asked(points, np.concatenate([items[owner], items[owner]]), (owner, z))

    def tell(self, theta, items, asked, values) -> Estimate:
        owner, z = asked.context
        m = len(z)
        fp, fm = values[:m], values[m:]
        terms = ((fp - fm) / (2 * self.sigma ** 2))[:, None] * z
        mine = [owner == i for i in range(len(items))]
        grads = np.stack([terms[sel].mean(0) for sel in mine])
        second = np.array([np.mean(np.sum(terms[sel] ** 2, axis=1)) for sel in mine])
        # per query: a pair is two queries
        variance = second * self.pull_scale(items) / 2.0
        loss = np.array([np.mean((fp[sel] + fm[sel]) / 2) for sel in mine])
        return Estimate(self.pull(theta, items, grads), variance, loss)

    def config(self) -> dict:
        return {"source": type(self).__name__, "sigma": self.sigma}


class ParameterNoise(AntitheticNoise):
    """Noise on the parameters themselves: ``loss(thetas (m, d), items (m,)) -> (m,)`` evaluates
    row ``r`` at ``thetas[r]`` on item ``items[r]`` (one query per row). ``learned(theta)``, if
    given, says what theta stands for (e.g. the soft prompt it encodes)."""

    def __init__(self, loss: LossFn, n_items: int, sigma: float, learned: Callable | None = None):
        super().__init__(n_items, sigma)
        self._loss = loss
        self._learned = learned

    def centres(self, theta, items):
        return np.broadcast_to(theta, (len(items), theta.size))

    def pull(self, theta, items, grads):
        return grads.mean(0)

    def loss(self, points, items):
        return self._loss(points, items)

    def learned(self, theta):
        return theta.copy() if self._learned is None else self._learned(theta)


# --------------------------------------------------------------------------------------------
# the optimiser
# --------------------------------------------------------------------------------------------
class Adam:
    """Adam on a flat parameter vector (``step`` returns the new vector); state is checkpointed."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not lr > 0:
            raise InputError("lr must be > 0")
        self.lr, (self.b1, self.b2), self.eps = float(lr), betas, eps
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.t = 0

    def step(self, theta: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if self.m is None:
            self.m, self.v = np.zeros_like(theta), np.zeros_like(theta)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad ** 2
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return theta - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def batch_items(seed: int, step: int, n_items: int, batch_size: int) -> np.ndarray:
    """The items of step ``step``: epoch-wise shuffles that depend only on ``(seed, step)``."""
    per_epoch = -(-n_items // batch_size)
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, 1, epoch]).permutation(n_items)
    part = perm[j * batch_size:(j + 1) * batch_size]
    if len(part) < batch_size:  # last short batch of an epoch: top up from the start
        part = np.concatenate([part, perm[: batch_size - len(part)]])
    return part


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run learned, its per-step history, its evaluations and the queries it spent.

    ``history`` rows: ``step``, ``queries`` (cumulative training queries), ``loss`` (mean over the
    batch of each item's loss), ``items``, ``allocation`` (None for exact sources), ``grad_norm``,
    ``est_variance`` (trace variance of the combined gradient; None for exact sources),
    ``seconds`` (wall time since the run started, a resumed run continuing its count; the
    result's ``seconds`` is the same clock at the end) and
    whatever the source describes (e.g. the discrete prompt). ``evals`` rows: ``step``,
    ``queries`` and the scalar metrics of ``eval_fn`` (its own query count as ``eval_queries``).
    ``learned`` is what ``theta`` stands for (soft prompt, prompt text, projector).
    ``selection``: when a final selection chose ``learned`` among candidates (prompt search),
    what each candidate scored.
    """

    theta: np.ndarray
    learned: Any = None
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    queries: int = 0
    steps: int = 0
    stopped: str | None = None
    resumed_from: int = 0
    seconds: float = 0.0
    selection: list[dict] = field(default_factory=list)

    def curve(self, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
        """``(queries, values)`` of a history key (or an eval metric), ready to plot."""
        rows = self.history if self.history and key in self.history[0] else self.evals
        rows = [r for r in rows if key in r]
        return np.array([r["queries"] for r in rows]), np.array([r[key] for r in rows], dtype=float)

    @property
    def before(self) -> dict:
        """The metrics of the first evaluation (at step 0), without ``step``/``queries``."""
        return _metrics_only(self.evals[0]) if self.evals else {}

    @property
    def after(self) -> dict:
        """The metrics of the last evaluation (at the end)."""
        return _metrics_only(self.evals[-1]) if self.evals else {}

    def stop(self, why: str) -> None:
        """Add ``why`` to the reasons the run stopped."""
        self.stopped = f"{self.stopped}; {why}" if self.stopped else why

    def evaluate(self, run: Callable[[], dict], step: int) -> bool:
        """Append ``run()``'s scalar metrics as the evaluation at ``step``; False (``stopped``
        says why) when the budget ran out in it."""
        try:
            self.evals.append({"step": step, "queries": self.queries, **_scalars(run())})
            return True
        except BudgetExceeded as exc:
            self.stop(f"evaluation not finished: {exc}")
            return False

    @property
    def eval_queries(self) -> int:
        return int(sum(e.get("eval_queries", 0) for e in self.evals))

    def summary(self) -> dict:
        """Before/after metrics, queries, steps, seconds and why the run stopped (JSON-able)."""
        out = {f"{k}_before": v for k, v in self.before.items() if k != "eval_queries"}
        out.update({f"{k}_after": v for k, v in self.after.items() if k != "eval_queries"})
        return {**out, "train_queries": self.queries, "eval_queries": self.eval_queries, "steps": self.steps,
                "seconds": round(self.seconds, 2), "stopped": self.stopped}


def _metrics_only(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("step", "queries")}


def _scalars(metrics: dict) -> dict:
    """The JSON-able scalar metrics of an evaluation (score matrices dropped); an evaluation's own
    ``queries`` become ``eval_queries`` (a row's ``queries`` are the training queries)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, str)):
            out[k] = v
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = float(v)
        else:
            continue
        if k == "queries":
            out["eval_queries"] = out.pop(k)
    return out


def forward_train(loss: LossFn, theta0: np.ndarray, n_items: int, *, sigma: float, **options) -> TrainResult:
    """Minimise ``mean_i loss_i(theta)`` from loss queries only: :func:`train` with
    :class:`ParameterNoise` (``loss(thetas (m, d), items (m,)) -> (m,)``, one query per row)."""
    return train(ParameterNoise(loss, n_items, sigma), theta0, **options)


def train(source, theta0: np.ndarray, *, batch_size: int, lr: float, steps: int | None = None,
          queries_per_step: int | None = None, total_queries: int | None = None,
          allocator="uniform", seed: int = 0, budget: Budget | None = None,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1, progress: bool = False,
          eval_fn: Callable[[np.ndarray], dict] | None = None, eval_every: int | None = 10,
          reward: str = "variance", cap: int | None = None,
          callback: Callable[[int, np.ndarray, dict], None] | None = None,
          description: str = "forward learning") -> TrainResult:
    """Train ``theta`` from ``source`` (a :class:`GradientSource`, or an exact source with
    ``gradient(theta, items)``) with Adam.

    ``queries_per_step`` (a multiple of ``source.unit``, at least 2 per item) is split across the
    ``batch_size`` items of each step by ``allocator`` (``uniform``, ``neyman`` or ``flops``;
    floor 2, ``cap`` optional). Training stops after ``steps``, before ``total_queries`` would be
    passed, or when ``budget`` runs out (a step that does not fit is not started; ``stopped`` says
    why). ``checkpoint``: an ``.npz`` written atomically every ``checkpoint_every`` steps and at
    the end, and resumed from when it exists (with the same settings). ``eval_fn(theta) -> dict``
    runs at step 0, every ``eval_every`` steps and at the end (its scalar metrics are kept; a
    budget that runs out during an evaluation ends the run and keeps what was learned).
    ``reward`` for FLOPS: ``variance`` (Neyman efficiency of the step) or ``improvement`` (drop of
    the batch items' loss since their last visit). ``callback(step, theta, row)`` after each step.
    """
    exact = not isinstance(source, GradientSource)
    if exact and not hasattr(source, "gradient"):
        raise InputError("a gradient source needs ask/loss/tell (queries) or gradient (exact)")
    theta = np.asarray(theta0, dtype=np.float64).reshape(-1).copy()
    batch_size = _check_schedule(source.n_items, batch_size, queries_per_step, steps, total_queries, budget,
                                 None if exact else source.unit)
    if reward not in REWARDS:
        raise InputError(f"reward must be one of {REWARDS}")
    if checkpoint_every < 1:
        raise InputError("checkpoint_every must be >= 1")
    alloc = None if exact else _allocator(allocator, cap, seed, source.unit)
    schedule = _Schedule(batch_size, queries_per_step, total_queries, seed, reward, checkpoint_every,
                         eval_fn, eval_every, callback)
    config = {"n_items": source.n_items, "dim": theta.size, "batch_size": batch_size, "seed": seed,
              "queries_per_step": queries_per_step, "lr": lr, "allocator": None if exact else alloc.name,
              "reward": reward, "cap": cap,
              **(source.config() if hasattr(source, "config") else {"source": type(source).__name__})}
    loop = _Loop(source, theta, schedule, Adam(lr), alloc, config, checkpoint, budget)
    bar = _progress_bar(steps, loop.step, description) if progress else None
    try:
        loop.run(steps if steps is not None else np.iinfo(np.int64).max, bar)
    finally:
        if bar is not None:
            bar.close()
    return loop.finish()


def _allocator(name, cap: int | None, seed: int, unit: int):
    """The allocator ``name`` for a source whose queries come in units of ``unit``."""
    alloc = make_allocator(name, floor=2, cap=cap, seed=seed, unit=unit)
    if alloc.unit % unit:
        raise InputError(f"the allocator must allocate whole units of {unit} queries")
    return alloc


def _progress_bar(steps: int | None, initial: int, description: str):
    """A progress bar over the steps (tqdm, imported only when asked for)."""
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=initial, desc=description, unit="step", leave=False, dynamic_ncols=True)


@dataclass
class _Schedule:
    """The validated settings a :class:`_Loop` runs by (see :func:`train`)."""

    batch_size: int
    queries_per_step: int | None
    total_queries: int | None
    seed: int
    reward: str
    checkpoint_every: int
    eval_fn: Callable[[np.ndarray], dict] | None
    eval_every: int | None
    callback: Callable[[int, np.ndarray, dict], None] | None


class _Loop:
    """One run of :func:`train`: what a checkpoint holds (step, theta, Adam, allocator, each item's
    last per-query variance and loss in ``memory``, the result so far), the runner and the clock.
    A run resumed from a checkpoint continues its query count and its clock."""

    def __init__(self, source, theta: np.ndarray, schedule: _Schedule, adam: Adam, alloc, config: dict,
                 checkpoint, budget: Budget | None):
        self.source, self.theta, self.schedule, self.adam, self.alloc = source, theta, schedule, adam, alloc
        self.config, self.exact = config, alloc is None
        self.memory = np.full((2, source.n_items), np.nan)
        self.result = TrainResult(theta=theta)
        self.ckpt = Path(checkpoint) if checkpoint is not None else None
        self.step = 0
        if self.ckpt is not None and self.ckpt.exists():
            self.step, self.theta = _load_checkpoint(self.ckpt, config, adam, alloc, self.memory, self.result)
            self.result.resumed_from = self.step
        self.runner = None if self.exact else QueryRunner(_direct(source), budget,
                                                          batch_size=max(schedule.queries_per_step, 1))
        self.spent_before = self.result.queries
        self.seconds_before = self.result.history[-1]["seconds"] if self.result.history else 0.0
        self.t_start = time.perf_counter()

    def clock(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def run(self, max_steps: int, bar) -> None:
        """Evaluate at step 0, then step until ``max_steps``, the query total or the budget."""
        s = self.schedule
        if s.eval_fn is not None and self.step == 0 and not self.result.evals and not self.evaluate():
            return
        while self.step < max_steps and self.within_total():
            row = self.advance()
            if row is None:
                return
            if s.eval_fn is not None and s.eval_every and self.step % s.eval_every == 0 and not self.evaluate():
                return
            if s.callback is not None:
                s.callback(self.step, self.theta, row)
            if self.ckpt is not None and self.step % s.checkpoint_every == 0:
                self.save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", queries=self.result.queries,
                                **({"prompt": row["prompt"][:30]} if "prompt" in row else {}))

    def within_total(self) -> bool:
        """Whether the next step fits in ``total_queries`` (if not, the run says so)."""
        total = self.schedule.total_queries
        if total is None or self.result.queries + self.schedule.queries_per_step <= total:
            return True
        self.result.stopped = self.result.stopped or f"total_queries {total} reached"
        return False

    def advance(self) -> dict | None:
        """One step: a batch, its gradient, Adam; returns the history row (None: the budget ran out)."""
        s = self.schedule
        items = batch_items(s.seed, self.step, self.source.n_items, s.batch_size)
        counts = None
        if self.exact:
            est = self.source.gradient(self.theta, items)
        else:
            counts = self.alloc.allocate(s.queries_per_step, s.batch_size, variances=self.memory[0, items],
                                         losses=self.memory[1, items])
            try:
                est = estimate(self.source, self.theta, items, counts, np.random.default_rng([s.seed, 2, self.step]),
                               self.runner)
            except BudgetExceeded as exc:
                self.result.stopped = str(exc)
                return None
            self.learn(items, counts, est)
        self.theta = self.adam.step(self.theta, est.grad)
        row = _history_row(self.step, self.result.queries, est, items, counts, s.batch_size, self.clock())
        if hasattr(self.source, "describe"):
            row.update(self.source.describe(self.theta))
        self.result.history.append(row)
        self.step += 1
        return row

    def learn(self, items: np.ndarray, counts: np.ndarray, est: Estimate) -> None:
        """Count the step's queries; the allocator and the items' memory learn from its estimate."""
        self.result.queries = self.spent_before + self.runner.record.queries
        _learn_allocation(self.alloc, self.schedule.reward, est, counts, self.memory[1, items])
        self.memory[0, items] = est.item_variance
        self.memory[1, items] = est.item_loss

    def evaluate(self) -> bool:
        """Run ``eval_fn`` now; False (the reason kept in ``stopped``) if the budget ran out in it."""
        return self.result.evaluate(lambda: self.schedule.eval_fn(self.theta), self.step)

    def save(self) -> None:
        _save_checkpoint(self.ckpt, self.config, self.step, self.theta, self.adam, self.alloc, self.memory,
                         self.result)

    def finish(self) -> TrainResult:
        """The final evaluation and checkpoint (unless already made at this step), then the result."""
        result = self.result
        if self.schedule.eval_fn is not None and (not result.evals or result.evals[-1]["step"] != self.step):
            self.evaluate()
        if self.ckpt is not None and self.step > result.resumed_from:
            self.save()
        result.theta, result.steps = self.theta, self.step
        result.learned = self.source.learned(self.theta) if hasattr(self.source, "learned") else self.theta.copy()
        result.seconds = self.clock()  # the history's clock
        return result


def _learn_allocation(alloc, reward: str, est: Estimate, counts: np.ndarray, previous_loss: np.ndarray) -> None:
    """FLOPS learns from the step: its Neyman efficiency, or the items' loss drop since their
    last visit (the other allocators learn nothing)."""
    if alloc.name != "flops":
        return
    if reward == "variance":
        alloc.update(variances=est.item_variance, counts=counts)
        return
    ok = np.isfinite(previous_loss)
    if ok.any():
        alloc.update(float(np.mean(previous_loss[ok] - est.item_loss[ok])))


def _check_schedule(n_items, batch_size, queries_per_step, steps, total_queries, budget, unit) -> int:
    """Validate a schedule (clear errors); returns the batch size capped at ``n_items``.
    ``unit`` None: an exact source (no queries)."""
    if n_items < 1 or batch_size < 1:
        raise InputError("n_items and batch_size must be >= 1")
    batch_size = min(batch_size, n_items)
    if steps is not None and steps < 0:
        raise InputError("steps must be >= 0")
    if unit is None:
        if steps is None:
            raise InputError("an exact-gradient run needs steps")
        return batch_size
    floor = max(2, unit) * batch_size
    if queries_per_step is None or queries_per_step % unit or queries_per_step < floor:
        what = "even and " if unit == 2 else ""
        raise InputError(f"queries_per_step must be {what}>= {max(2, unit)} x batch_size ({floor}), "
                         f"got {queries_per_step}")
    if steps is None and total_queries is None and (budget is None or budget.max_queries is None):
        raise InputError("give steps, total_queries or a budget with max_queries")
    return batch_size


def _history_row(step: int, queries: int, est: Estimate, items: np.ndarray, counts, batch_size: int,
                 seconds: float) -> dict:
    """One training step as a history row (the schema is in :class:`TrainResult`)."""
    variance = None
    if counts is not None:
        variance = float(np.sum(est.item_variance / np.maximum(counts, 1)) / batch_size ** 2)
    return {"step": step + 1, "queries": queries, "loss": float(np.mean(est.item_loss)),
            "items": items.tolist(), "allocation": None if counts is None else counts.tolist(),
            "grad_norm": float(np.linalg.norm(est.grad)), "est_variance": variance,
            "seconds": seconds}


def _save_checkpoint(path: Path, config, step, theta, adam, alloc, memory, result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    meta = {"config": config, "step": step, "queries": result.queries, "adam_t": adam.t,
            "allocator": None if alloc is None else alloc.state_dict(), "history": result.history,
            "evals": result.evals, "stopped": result.stopped}
    zeros = np.zeros_like(theta)
    try:
        np.savez(tmp, theta=theta, adam_m=adam.m if adam.m is not None else zeros,
                 adam_v=adam.v if adam.v is not None else zeros, memory=memory,
                 meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_checkpoint(path: Path, config, adam, alloc, memory, result):
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in ("theta", "adam_m", "adam_v", "memory")}
        saved, adam_t, step = meta["config"], int(meta["adam_t"]), int(meta["step"])
        queries, history, evals = int(meta["queries"]), list(meta["history"]), list(meta["evals"])
        if not isinstance(saved, dict) or arrays["memory"].shape != memory.shape:
            raise ValueError("its contents do not fit this run")
    except Exception as exc:  # a truncated or foreign file: zip, npy, json or field errors alike
        raise InputError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); "
                         "delete it to start over") from None
    diff = [k for k in config if saved.get(k) != config[k]]
    if diff:
        raise InputError(f"checkpoint {path} was written with different settings ({', '.join(diff)}); "
                         "use another checkpoint path or the same settings")
    adam.t = adam_t
    if adam.t > 0:
        adam.m, adam.v = arrays["adam_m"].astype(np.float64), arrays["adam_v"].astype(np.float64)
    if alloc is not None:
        try:
            alloc.load_state_dict(meta["allocator"])
        except Exception as exc:
            raise InputError(f"cannot read checkpoint {path}: its allocator state does not load "
                             f"({type(exc).__name__}); delete it to start over") from None
    memory[:] = arrays["memory"]
    result.queries = queries
    result.history = history
    result.evals = evals
    return step, arrays["theta"].astype(np.float64)
