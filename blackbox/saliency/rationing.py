"""Blockwise LR gradients that ration their budget across blocks, in rounds, with an allocator.

Round 1 splits its share of the budget equally (a pilot); every later round asks the allocator
(``uniform``, ``neyman`` or ``flops``) for each block's queries from the per-query variance of
each block measured so far. Rounds merge exactly (each coordinate's estimate is the mean of its
own block's terms), so the estimate stays unbiased whatever the allocation. With
``target_error`` the run stops after the first round whose relative standard error
``sqrt(mean stderr^2) / sqrt(mean grad^2)`` is at or below the target; the queries not spent are
reported in ``extras["queries_saved"]``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..allocators import Allocator, make_allocator
from ..errors import InputError
from ..estimators import GradientEstimate, lr_gradient


def relative_error(est: GradientEstimate) -> float:
    """``sqrt(mean stderr^2) / sqrt(mean grad^2)`` over the coordinates that were estimated."""
    ok = est.count > 1
    if not ok.any():
        return float("inf")
    se = est.stderr[ok]
    g = est.mean[ok]
    denom = float(np.sqrt(np.mean(g ** 2)))
    return float(np.sqrt(np.mean(se ** 2)) / denom) if denom > 0 else float("inf")


def _block_variance(est: GradientEstimate, blocks: Sequence[np.ndarray], per_query: int) -> np.ndarray:
    out = np.full(len(blocks), np.nan)
    for k, b in enumerate(blocks):
        c = est.count[b]
        if np.all(c > 1):
            out[k] = float(np.sum(est.m2[b] / (c - 1))) * per_query
    return out


def rationed_gradient(f: Callable, center: np.ndarray, *, queries: int, sigma: float,
                      blocks: Sequence[np.ndarray] | None = None, allocator: str | Allocator = "neyman",
                      rounds: int = 4, target_error: float | None = None, control: str = "antithetic",
                      seed=None, allocation=None, stage=None, **kwargs) -> GradientEstimate:
    """:func:`~blackbox.estimators.lr_gradient` in ``rounds`` rounds, rationed across ``blocks``;
    ``stage()``, when given, is called before every round after the first (each is rationed from
    the answers so far)."""
    if allocation is not None:
        raise InputError("pass either a fixed allocation or an allocator, not both")
    if rounds < 1:
        raise InputError("rounds must be >= 1")
    if target_error is not None and not target_error > 0:
        raise InputError("target_error must be > 0")
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    if blocks is None:
        blocks = [np.arange(center.size)]
    blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
    if control != "antithetic":
        raise InputError("rationed (allocated) estimates use antithetic pairs")
    per_query = 2
    n_blocks = len(blocks)
    if queries < per_query * 2 * n_blocks:
        raise InputError(f"{queries} queries are too few to ration across {n_blocks} blocks "
                         f"(need at least {4 * n_blocks}: two pairs per block)")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    alloc = make_allocator(allocator, floor=per_query, seed=int(rng.integers(2 ** 31)), unit=per_query)
    # each round's share: whole pairs per block, at least one pair per block
    share = max(per_query * n_blocks, (queries // rounds) // per_query * per_query)
    est: GradientEstimate | None = None
    spent, log = 0, []
    for r in range(rounds):
        left = (queries - spent) // per_query * per_query
        budget = left if r == rounds - 1 else min(share, left)
        if budget < per_query * n_blocks:
            break
        if r > 0 and stage is not None:
            stage()
        variances = _block_variance(est, blocks, per_query) if est is not None else None
        counts = alloc.allocate(budget, n_blocks, variances=variances)
        part = lr_gradient(f, center, queries=budget, sigma=sigma, control=control, blocks=blocks,
                           allocation=counts, seed=rng, **kwargs)
        spent += part.queries
        est = part if est is None else est.merge(part)
        est.queries = spent
        if alloc.name == "flops" and variances is not None:
            alloc.update(variances=_block_variance(est, blocks, per_query), counts=counts)
        err = relative_error(est)
        log.append({"round": r + 1, "allocation": counts.tolist(), "queries": spent, "relative_error": err})
        if part.stopped:
            est.stopped = part.stopped
            break
        if target_error is not None and err <= target_error:
            est.stopped = f"target error {target_error:g} reached after {spent} queries"
            break
    assert est is not None
    est.block_variance = _block_variance(est, blocks, per_query)
    est.extras.update(rounds=log, allocator=alloc.name, queries_saved=max(0, queries - spent),
                      relative_error=relative_error(est))
    return est
