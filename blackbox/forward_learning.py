"""Forward learning: train parameters from loss queries only (LR gradients + Adam + an allocator).

Each step draws a batch of items (examples), asks the allocator how many queries each item gets
(``n_i``, even: antithetic pairs), evaluates the loss at ``theta + z`` and ``theta - z`` for
``n_i / 2`` noise draws ``z ~ N(0, sigma^2 I)`` per item, and combines the per-item estimates

    g = (1/B) sum_i (1/n_i) sum_pairs (L_i(theta + z) - L_i(theta - z)) z / sigma^2

(unbiased for any allocation, see :func:`blackbox.allocators.combine`), then takes an Adam step.
Every item's last measured per-query variance and loss are remembered, so Neyman and FLOPS
allocate from the item's previous visit.

Reproducible and resumable: the batch and the noise of step ``t`` depend only on ``(seed, t)``
and the (checkpointed) allocator state, so a run resumed from its checkpoint sends exactly the
queries the uninterrupted run would have sent; with a caching remote engine, a step that was
interrupted half-way is answered from the cache and paid once.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .allocators import Allocator, combine, make_allocator
from .errors import BudgetExceeded, InputError, ModelError
from .queries import Budget

LossFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class TrainResult:
    """Trained parameters, a per-step history and the queries spent."""

    theta: np.ndarray
    history: list[dict] = field(default_factory=list)   # one dict per step (see forward_train)
    evals: list[dict] = field(default_factory=list)     # {"step", "queries", **metrics}
    queries: int = 0
    steps: int = 0
    stopped: str | None = None
    resumed_from: int = 0
    seconds: float = 0.0

    def curve(self, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
        """``(queries, values)`` of a history key (or an eval metric), ready to plot."""
        rows = self.history if self.history and key in self.history[0] else self.evals
        rows = [r for r in rows if key in r]
        return np.array([r["queries"] for r in rows]), np.array([r[key] for r in rows], dtype=float)


class _Adam:
    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8):
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = self.v = None
        self.t = 0

    def step(self, theta, grad):
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


def forward_train(
    loss: LossFn,
    theta0: np.ndarray,
    n_items: int,
    *,
    batch_size: int,
    queries_per_step: int,
    steps: int | None = None,
    total_queries: int | None = None,
    sigma: float,
    lr: float,
    allocator: str | Allocator = "uniform",
    seed: int = 0,
    budget: Budget | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    progress: bool = False,
    eval_fn: Callable[[np.ndarray], dict] | None = None,
    eval_every: int = 10,
    reward: str = "variance",
    cap: int | None = None,
    callback: Callable[[int, np.ndarray, dict], None] | None = None,
) -> TrainResult:
    """Minimise ``mean_i loss_i(theta)`` from loss queries only.

    ``loss(thetas, items)``: ``thetas`` is ``(m, d)``, ``items`` ``(m,)`` ints; returns ``(m,)``
    losses, row ``r`` evaluated at ``thetas[r]`` on item ``items[r]`` (each row is one query).
    ``queries_per_step`` (even, >= 2 x batch_size) is split across the batch by ``allocator``
    (``uniform``, ``neyman`` or ``flops``; floor 2, ``cap`` optional). Train for ``steps``, or until
    ``total_queries`` would be passed, or until ``budget`` runs out (a step that does not fit is
    not started; ``stopped`` says why). ``checkpoint``: an ``.npz`` path written atomically every
    ``checkpoint_every`` steps and resumed from when it exists. ``eval_fn(theta) -> dict`` runs at
    step 0, every ``eval_every`` steps and at the end. ``reward`` for FLOPS: ``variance`` (Neyman
    efficiency of the step) or ``improvement`` (drop of the batch items' loss since their last
    visit).

    History rows: ``step``, ``queries`` (cumulative), ``loss`` (mean of the batch's perturbed
    losses), ``items``, ``allocation``, ``grad_norm``, ``est_variance`` (trace variance of the
    combined gradient), ``seconds``.
    """
    theta = np.asarray(theta0, dtype=np.float64).reshape(-1).copy()
    dim = theta.size
    if n_items < 1 or batch_size < 1:
        raise InputError("n_items and batch_size must be >= 1")
    batch_size = check_schedule(n_items, batch_size, queries_per_step, steps, total_queries, budget, sigma, lr)
    if reward not in ("variance", "improvement"):
        raise InputError("reward must be 'variance' or 'improvement'")
    alloc = make_allocator(allocator, floor=2, cap=cap, seed=seed, unit=2)
    if alloc.unit % 2:
        raise InputError("the allocator must allocate whole antithetic pairs (unit=2)")
    adam = _Adam(lr)
    mem_var = np.full(n_items, np.nan)
    mem_loss = np.full(n_items, np.nan)
    result = TrainResult(theta=theta)
    config = {"n_items": n_items, "dim": dim, "batch_size": batch_size, "seed": seed,
              "queries_per_step": queries_per_step, "sigma": sigma, "lr": lr,
              "allocator": alloc.name, "reward": reward, "cap": cap}
    start_step = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        start_step, theta = _load_checkpoint(ckpt, config, adam, alloc, mem_var, mem_loss, result)
        result.resumed_from = start_step
    max_steps = steps if steps is not None else np.iinfo(np.int64).max
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=None if steps is None else steps, initial=start_step, desc="forward learning",
                   unit="step", leave=False, dynamic_ncols=True)
    if eval_fn is not None and start_step == 0 and not result.evals:
        result.evals.append({"step": 0, "queries": 0, **eval_fn(theta)})
    step = start_step
    try:
        while step < max_steps:
            if total_queries is not None and result.queries + queries_per_step > total_queries:
                result.stopped = result.stopped or f"total_queries {total_queries} reached"
                break
            items = batch_items(seed, step, n_items, batch_size)
            counts = alloc.allocate(queries_per_step, batch_size, variances=mem_var[items],
                                    losses=mem_loss[items])
            pairs = counts // 2
            rng = np.random.default_rng([seed, 2, step])
            z = rng.standard_normal((int(pairs.sum()), dim)) * sigma
            owner = np.repeat(np.arange(batch_size), pairs)
            rows = np.concatenate([theta + z, theta - z])
            row_items = np.concatenate([items[owner], items[owner]])
            reservation = None
            if budget is not None:
                try:
                    reservation = budget.reserve(len(rows))
                except BudgetExceeded as exc:
                    result.stopped = str(exc)
                    break
            t0 = time.perf_counter()
            try:
                values = np.asarray(loss(rows, row_items), dtype=np.float64).reshape(-1)
            except BaseException:
                if reservation is not None:
                    budget.release(reservation)
                raise
            if reservation is not None:
                budget.settle(reservation)
            result.queries += len(rows)
            if values.shape != (len(rows),):
                raise ModelError(f"the loss returned {values.size} values for {len(rows)} queries")
            if not np.all(np.isfinite(values)):
                raise ModelError("the loss returned a non-finite value (nan or inf)")
            m = len(z)
            fp, fm = values[:m], values[m:]
            terms = ((fp - fm) / (2 * sigma ** 2))[:, None] * z
            per_item = [terms[owner == i] for i in range(batch_size)]
            est = combine(per_item)
            # per-query variance proxy of each item: second moment of its pair terms / 2 queries
            second = np.array([np.mean(np.sum(t ** 2, axis=1)) for t in per_item]) / 2.0
            batch_loss = np.array([np.mean((fp[owner == i] + fm[owner == i]) / 2) for i in range(batch_size)])
            if alloc.name == "flops":
                if reward == "variance":
                    alloc.update(variances=second, counts=counts)
                else:
                    prev = mem_loss[items]
                    ok = np.isfinite(prev)
                    if ok.any():
                        alloc.update(float(np.mean(prev[ok] - batch_loss[ok])))
            mem_var[items] = second
            mem_loss[items] = batch_loss
            theta = adam.step(theta, est.grad)
            row = history_row(step, result.queries, batch_loss, items, counts, est.grad, second, batch_size, t0)
            result.history.append(row)
            step += 1
            if eval_fn is not None and step % eval_every == 0:
                result.evals.append({"step": step, "queries": result.queries, **eval_fn(theta)})
            if callback is not None:
                callback(step, theta, row)
            if ckpt is not None and step % checkpoint_every == 0:
                _save_checkpoint(ckpt, config, step, theta, adam, alloc, mem_var, mem_loss, result)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", queries=result.queries)
    finally:
        if bar is not None:
            bar.close()
    final_eval(result, eval_fn, theta, step)
    if ckpt is not None and step > start_step:
        _save_checkpoint(ckpt, config, step, theta, adam, alloc, mem_var, mem_loss, result)
    result.theta, result.steps = theta, step
    result.seconds = time.perf_counter() - t_start
    return result


def check_schedule(n_items: int, batch_size: int, queries_per_step: int, steps, total_queries, budget,
                   sigma: float, lr: float) -> int:
    """Validate a training schedule (clear errors); returns the batch size capped at ``n_items``."""
    batch_size = min(batch_size, n_items)
    if queries_per_step % 2 or queries_per_step < 2 * batch_size:
        raise InputError(f"queries_per_step must be even and >= 2 x batch_size ({2 * batch_size}), "
                         f"got {queries_per_step}")
    if steps is None and total_queries is None and (budget is None or budget.max_queries is None):
        raise InputError("give steps, total_queries or a budget with max_queries")
    if sigma <= 0 or lr <= 0:
        raise InputError("sigma and lr must be > 0")
    return batch_size


def history_row(step: int, queries: int, losses: np.ndarray, items: np.ndarray, counts: np.ndarray,
                grad: np.ndarray, second: np.ndarray, batch_size: int, since: float) -> dict:
    """One training step as a history row: loss, queries, allocation and the estimator's variance
    (per-item per-query variances ``second`` over antithetic pairs of ``counts`` queries)."""
    return {"step": step + 1, "queries": queries, "loss": float(np.mean(losses)),
            "items": items.tolist(), "allocation": counts.tolist(),
            "grad_norm": float(np.linalg.norm(grad)),
            "est_variance": float(np.sum(second * 2 / np.maximum(counts, 1)) / batch_size ** 2),
            "seconds": round(time.perf_counter() - since, 4)}


def final_eval(result, eval_fn, theta, step: int) -> None:
    """Evaluate once more at the end unless the last step was already evaluated."""
    if eval_fn is not None and (not result.evals or result.evals[-1]["step"] != step):
        result.evals.append({"step": step, "queries": result.queries, **eval_fn(theta)})


def _save_checkpoint(path: Path, config, step, theta, adam, alloc, mem_var, mem_loss, result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    meta = {"config": config, "step": step, "queries": result.queries, "adam_t": adam.t,
            "allocator": alloc.state_dict(), "history": result.history, "evals": result.evals,
            "stopped": result.stopped}
    zeros = np.zeros_like(theta)
    try:
        np.savez(tmp, theta=theta, adam_m=adam.m if adam.m is not None else zeros,
                 adam_v=adam.v if adam.v is not None else zeros, mem_var=mem_var, mem_loss=mem_loss,
                 meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_checkpoint(path: Path, config, adam, alloc, mem_var, mem_loss, result):
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in ("theta", "adam_m", "adam_v", "mem_var", "mem_loss")}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read checkpoint {path}: {exc}") from None
    saved = meta["config"]
    diff = [k for k in config if saved.get(k) != config[k]]
    if diff:
        raise InputError(f"checkpoint {path} was written with different settings ({', '.join(diff)}); "
                         "use another checkpoint path or the same settings")
    adam.t = int(meta["adam_t"])
    if adam.t > 0:
        adam.m, adam.v = arrays["adam_m"].astype(np.float64), arrays["adam_v"].astype(np.float64)
    alloc.load_state_dict(meta["allocator"])
    mem_var[:] = arrays["mem_var"]
    mem_loss[:] = arrays["mem_loss"]
    result.queries = int(meta["queries"])
    result.history = meta["history"]
    result.evals = meta["evals"]
    return int(meta["step"]), arrays["theta"].astype(np.float64)
