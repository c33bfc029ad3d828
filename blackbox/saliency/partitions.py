"""Partitions: each query removes one group of a random partition of the cells.

The cells are split at random into ``groups`` groups of near-equal size; the block of ``groups``
queries removes each group in turn (mask 0 on the group, 1 elsewhere), in random order, and the
next block draws a new partition. With four groups every query removes a quarter of the image,
so the masked images stay near the photo: its own class, or the class competing with it, is what
the model sees in them. That is what a deletion curve asks about (cells removed from the photo),
and where the effect of a cell can differ most from its effect among random halves (Banzhaf
values): when classes compete, a cell that keeps the target alive among halves can hand the
target's probability to a rival near the photo.

The answers are read by least squares on the cells' keep indicators with a free intercept: the
sampler hands the estimator the indicators and the scores centred on their means over the
answered queries (a ridge fit of centred data is the fit with an unpenalised intercept), so any
:class:`~blackbox.estimators.Estimator` reads them. ``estimate.mean`` holds each cell's difference
of mean scores between the queries that kept it and those that removed it, the plain reference
the ``lr`` estimator reports. The first query is the photo itself: it sets the map's zero (the
masks alone fix the cells' effects only up to a common constant). A budget that stops the sampler
keeps every answer paid for.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..estimators import GradientEstimate, Samples
from .samplers import Job, Reading, Sampler, ask_in_chunks


class Partitions(Sampler):
    """Blocks of ``groups`` queries, each removing one group of a random partition of the cells."""

    name = "partitions"

    def __init__(self, groups: int = 4):
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 2:
            raise InputError(f"groups must be a whole number >= 2, got {groups!r}")
        self.groups = int(groups)

    def check(self, space, method, queries: int) -> None:
        if space.name != "mask":
            raise InputError(f"partitions remove cells: they work in mask space, not {space.name} space")
        if space.dim < self.groups:
            raise InputError(f"{self.groups} groups need at least {self.groups} cells, the grid has {space.dim}")
        if queries < 2 * self.groups:
            raise InputError(f"partitions into {self.groups} groups need at least {2 * self.groups} queries "
                             f"(two partitions), got {queries}")

    def masks(self, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` keep masks: whole blocks of ``groups`` masks, one block per random partition."""
        rows = []
        while len(rows) < n:
            groups = np.array_split(rng.permutation(dim), self.groups)
            block = np.ones((self.groups, dim))
            for i, group in enumerate(groups):
                block[i, group] = 0.0
            rows.extend(block[rng.permutation(self.groups)])
        return np.array(rows[:n])

    def run(self, job: Job) -> Reading:
        """The photo itself first, then ``queries - 1`` partition masks; the estimator reads the
        masks, and the map's level is set by the photo (see :func:`_through_photo`)."""
        f, dim = job.probe().f, job.space.dim
        masks = np.vstack([np.ones((1, dim)), self.masks(job.queries - 1, dim, job.rng)])
        scores, keep, stopped = ask_in_chunks(f, masks, job.runner.batch_size)
        est = _estimate(keep[1:], scores[1:])
        est.queries, est.stopped = len(scores), stopped
        values, stderr = job.estimator.fit(est, job.space.prior())
        if len(scores) > 1:
            est.f0 = float(scores[0])
            values = _through_photo(values, est.f0, keep[1:], scores[1:])
        return Reading(est, values, stderr)


def _estimate(keep: np.ndarray, scores: np.ndarray) -> GradientEstimate:
    """The masks' answers centred on their means (what the estimator fits) and the per-cell
    differences of means (what the plain ``lr`` estimator reports)."""
    est = _differences(keep, scores)
    est.samples = Samples(keep - keep.mean(0), scores - scores.mean()) if len(scores) else Samples(keep, scores)
    return est


def _through_photo(values: np.ndarray, photo: float, keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Every mask keeps the same number of cells, so the masks fix the cells' effects only up to a
    common constant. The linear fit through the photo's own answer fixes it: the fit passes through
    the masks' mean keep ``k`` and mean score, and the photo keeps every cell, so the effects
    ``v + c`` satisfy ``sum (v_i + c) (1 - k_i) = photo - mean score``. A positive value then means
    that removing the cell from the photo lowers the score."""
    gap = 1.0 - keep.mean(0)
    shift = (photo - scores.mean() - values.ravel() @ gap) / gap.sum()
    return values + shift


def _differences(keep: np.ndarray, scores: np.ndarray) -> GradientEstimate:
    """Per cell, mean score where kept minus mean score where removed, with its standard error."""
    dim = keep.shape[1]
    est = GradientEstimate.empty(dim)
    kept = keep > 0.5
    n_kept, n_removed = kept.sum(0), (~kept).sum(0)
    ok = (n_kept > 1) & (n_removed > 1)
    if not ok.any():
        return est
    mean_kept = (kept * scores[:, None]).sum(0) / np.maximum(n_kept, 1)
    mean_removed = (~kept * scores[:, None]).sum(0) / np.maximum(n_removed, 1)
    var = scores.var(ddof=1) if len(scores) > 1 else 0.0
    est.mean = np.where(ok, mean_kept - mean_removed, 0.0)
    # GradientEstimate.stderr is sqrt(m2 / ((count - 1) count)): m2 set so it is the two-sample error
    est.count = np.where(ok, n_kept + n_removed, 0).astype(np.int64)
    se2 = var * (1 / np.maximum(n_kept, 1) + 1 / np.maximum(n_removed, 1))
    est.m2 = np.where(ok, se2 * est.count * np.maximum(est.count - 1, 1), 0.0)
    return est
