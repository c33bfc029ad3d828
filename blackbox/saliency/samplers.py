"""Samplers: how a saliency map spends its queries.

Every sampler has one signature: ``sampler.run(job) -> Reading``, where the :class:`Job` holds the
bound space, the method, the query runner, the budget in queries, the noise scale, the random
generator and the estimator, and the :class:`Reading` holds the estimate (with what it cost and
why it stopped) and the values per coordinate read from it. A sampler checks its own settings
when it is made and what it needs of the space and method in :meth:`Sampler.check`, before any
query is paid.

* :class:`OnePass`: every query in one pass, optionally one block of cells at a time with a fixed
  allocation across the blocks;
* :class:`Rationed`: the blocks in rounds, an allocator rationing each round across them from the
  variance measured so far (:mod:`blackbox.saliency.rationing`);
* :class:`CoarseToFine`: a coarser grid first, then the fine cells of the coarse cells that matter
  (:mod:`blackbox.saliency.refine`);
* :class:`Focus`: a pass over every cell, then the top cells re-measured among themselves
  (:mod:`blackbox.saliency.focus`);
* :class:`PathSteps`: a fixed walk along the path of Integrated Gradients, one cell at a time
  (:mod:`blackbox.saliency.path_steps`).

A sampler of one's own subclasses :class:`Sampler` and writes :meth:`Sampler.sample` (the
estimate; the estimator reads it) or, when it reads its own answers, :meth:`Sampler.run`. A
sampler whose later queries depend on earlier answers calls ``job.runner.stage()`` between them
(then a batched run sends the earlier queries as one batch before the later ones are drawn).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..allocators import Allocator
from ..errors import BudgetExceeded, InputError
from ..estimators import CONTROLS, Estimator, GradientEstimate, LRMean, Regression, lr_gradient
from ..queries import QueryRunner
from .focus import SHARE as FOCUS_SHARE
from .focus import first_stage, focused
from .path_steps import path_points, path_steps
from .rationing import rationed_gradient
from .refine import COARSE_SHARE, FACTOR, coarse_to_fine


@dataclass
class Job:
    """What a sampler works with: a space bound to the image, the method, the runner every query
    goes through, the queries it may spend, the noise scale, the generator and the estimator."""

    space: Any
    method: Any
    runner: QueryRunner
    queries: int
    sigma: float
    rng: np.random.Generator
    estimator: Estimator

    def probe(self, cell_blocks: Sequence[np.ndarray] | None = None):
        """The space's query function over its coordinates (all cells as one block by default)."""
        blocks = [np.arange(self.space.grid.cells)] if cell_blocks is None else cell_blocks
        return self.space.probe(self.method, self.runner, blocks)


@dataclass
class Reading:
    """A sampler's outcome: the estimate and the values (with standard errors) read from it."""

    estimate: GradientEstimate
    values: np.ndarray
    stderr: np.ndarray


def ask_in_chunks(f, points: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Fixed points asked through a probe's ``f`` in chunks of ``batch_size``: the scores and the
    points as delivered for every answer paid for, and why the budget stopped it (None when all
    were answered)."""
    values, delivered, stopped = [], [], None
    try:
        for start in range(0, len(points), batch_size):
            v, d = f(points[start:start + batch_size])
            values.append(np.asarray(v, dtype=np.float64))
            delivered.append(np.asarray(d, dtype=np.float64))
    except BudgetExceeded as exc:
        stopped = str(exc)
    if not values:
        return np.zeros(0), np.zeros((0, points.shape[1])), stopped
    return np.concatenate(values), np.concatenate(delivered), stopped


class Sampler:
    """How queries are spent. Subclasses write :meth:`sample` (or :meth:`run`)."""

    name = "sampler"
    blocks = 1
    share = 0.0

    def check(self, space, method, queries: int) -> None:
        """Refuse, before any query, a space, method or budget this sampler cannot work with."""

    def planned(self, queries: int, dim: int) -> int:
        """How many queries the run will ask for (the progress bar's total)."""
        return queries

    def fit_queries(self, queries: int, dim: int) -> int:
        """How many of the queries the estimator's fit reads (what its prior is set for)."""
        return queries

    def default_estimator(self) -> Estimator:
        return Regression(0.1)

    def run(self, job: Job) -> Reading:
        est = self.sample(job)
        values, stderr = job.estimator.fit(est, job.space.prior())
        return Reading(est, values, stderr)

    def sample(self, job: Job) -> GradientEstimate:
        raise NotImplementedError


class OnePass(Sampler):
    """Every query in one pass: all cells at once, or ``blocks`` spatial blocks one at a time
    (``allocation``: the queries of each block; default an equal split), with the control
    variate ``control`` (``antithetic``, ``baseline`` or ``none``; see :mod:`blackbox.estimators`)."""

    name = "one pass"

    def __init__(self, blocks: int = 1, allocation: Sequence[int] | None = None, control: str = "antithetic"):
        if control not in CONTROLS:
            raise InputError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
        self.blocks = _whole(blocks, "blocks")
        self.allocation = None if allocation is None else np.asarray(allocation, dtype=np.int64)
        if self.allocation is not None and len(self.allocation) != self.blocks:
            raise InputError(f"the allocation needs one entry per block ({self.blocks}), got {len(self.allocation)}")
        self.control = control

    def check(self, space, method, queries: int) -> None:
        space.grid.blocks(self.blocks)
        if queries < 2 * self.blocks:
            raise InputError(f"{self.blocks} blocks need at least {2 * self.blocks} queries (2 per block), "
                             f"got {queries}")

    def sample(self, job: Job) -> GradientEstimate:
        probe = job.probe(job.space.grid.blocks(self.blocks))
        return lr_gradient(probe.f, probe.center, queries=job.queries, sigma=job.sigma, control=self.control,
                           noise=job.method.noise, blocks=probe.blocks, allocation=self.allocation, seed=job.rng,
                           center_fn=probe.center_fn, keep_samples=job.estimator.keep_samples)


class Rationed(Sampler):
    """The ``blocks`` in ``rounds``: the first round split equally, every later one rationed by
    ``allocator`` (a name, ``uniform``/``neyman``/``flops``, or an :class:`~blackbox.allocators.Allocator`)
    from each block's variance so far; with ``target_error``, stop once the map's relative
    standard error is at or below it (the queries left are reported as saved)."""

    name = "rationed"

    def __init__(self, blocks: int = 1, allocator: str | Allocator = "uniform", rounds: int = 4,
                 target_error: float | None = None):
        self.blocks = _whole(blocks, "blocks")
        self.rounds = _whole(rounds, "rounds")
        if target_error is not None and not target_error > 0:
            raise InputError(f"target_error must be > 0, got {target_error}")
        self.allocator, self.target_error = allocator, target_error

    def check(self, space, method, queries: int) -> None:
        space.grid.blocks(self.blocks)

    def sample(self, job: Job) -> GradientEstimate:
        probe = job.probe(job.space.grid.blocks(self.blocks))
        return rationed_gradient(probe.f, probe.center, queries=job.queries, sigma=job.sigma, noise=job.method.noise,
                                 blocks=probe.blocks, allocator=self.allocator, rounds=self.rounds,
                                 target_error=self.target_error, seed=job.rng, center_fn=probe.center_fn,
                                 keep_samples=job.estimator.keep_samples, stage=job.runner.stage)


class CoarseToFine(Sampler):
    """A grid ``factor`` times coarser first (``coarse_share`` of the queries), then the fine cells
    one coarse cell at a time, the rest of the queries rationed across them by ``allocator``
    (default ``neyman``: large or uncertain coarse cells first). Mask space only."""

    name = "coarse to fine"

    def __init__(self, allocator: str | Allocator = "neyman", factor: int = FACTOR, coarse_share: float = COARSE_SHARE):
        self.allocator, self.factor = allocator, _whole(factor, "factor")
        if not 0 < coarse_share < 1:
            raise InputError(f"coarse_share is a share of the queries, between 0 and 1; got {coarse_share}")
        self.coarse_share = coarse_share

    def check(self, space, method, queries: int) -> None:
        if space.name != "mask":
            raise InputError(f"coarse-to-fine refinement works in mask space, not {space.name} space")

    def sample(self, job: Job) -> GradientEstimate:
        return coarse_to_fine(job.space, job.method, job.runner, queries=job.queries, sigma=job.sigma,
                              noise=job.method.noise, control="antithetic", seed=job.rng, allocator=self.allocator,
                              factor=self.factor, coarse_share=self.coarse_share,
                              keep_samples=job.estimator.keep_samples, stage=job.runner.stage)


class Focus(Sampler):
    """Half the queries draw the map over every cell; the other half re-measure the ``share`` of
    cells it ranks highest among themselves, every other cell held fixed, and re-order their
    values (banzhaf masks in mask space)."""

    name = "focus"

    def __init__(self, share: float = FOCUS_SHARE):
        try:
            share = float(share)
        except (TypeError, ValueError):
            raise InputError(f"focus is a share of the cells, between 0 and 1; got {share!r}") from None
        if not 0 < share <= 1:
            raise InputError(f"focus is a share of the cells, between 0 and 1; got {share}")
        self.share = share

    def check(self, space, method, queries: int) -> None:
        if space.name != "mask" or method.name != "banzhaf":
            raise InputError("focus re-measures banzhaf masks: it needs method banzhaf in mask space")

    def fit_queries(self, queries: int, dim: int) -> int:
        return first_stage(queries, dim, self.share)

    def run(self, job: Job) -> Reading:
        est, values, stderr = focused(job.probe(), job.estimator, job.space.prior(), queries=job.queries,
                                      sigma=job.sigma, noise=job.method.noise, seed=job.rng, share=self.share,
                                      stage=job.runner.stage)
        return Reading(est, values, stderr)


class PathSteps(Sampler):
    """Integrated Gradients without random directions: at ``queries // (cells + 1)`` fixed points
    of the path, the path image and each cell nudged alone by the noise scale (the step). Mask
    space; read by the plain mean (a smoothness prior would only blur the steps)."""

    name = "path steps"

    def check(self, space, method, queries: int) -> None:
        if space.name != "mask" or not method.path:
            raise InputError("Integrated Gradients in steps (one-patch steps on the path) works in mask space")
        path_points(queries, space.dim)

    def planned(self, queries: int, dim: int) -> int:
        return len(path_points(queries, dim)) * (dim + 1)  # whole path points

    def default_estimator(self) -> Estimator:
        return LRMean()

    def sample(self, job: Job) -> GradientEstimate:
        return path_steps(job.probe().f, job.space.dim, queries=job.queries, step=job.sigma,
                          chunk=job.runner.batch_size, keep_samples=job.estimator.keep_samples)


def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a whole number >= 1, got {value!r}")
    return int(value)
