"""Integrated Gradients in steps: each patch nudged alone at fixed points on the path.

The ``coordinate`` end of the likelihood-ratio family (directions ``sqrt(d) e_c``, one cell at a
time) with the baseline control is a finite difference. On the path of Integrated Gradients
(mask space, ``m = alpha`` for every patch) it needs no randomness at all: at ``K`` midpoints
``alpha_k = (k + 1/2) / K`` the sampler asks for the path image itself and for the ``d`` images
with one patch moved by ``step`` from it, up at even ``k`` and down at odd ``k`` (the other way
where the step would leave [0, 1]), and averages each patch's difference quotients along the
path: the midpoint rule for ``IG_c = int_0^1 dF/dm_c(alpha) d alpha`` with
``K = queries // (d + 1)`` points. The map is the same from any seed (no noise is drawn), and it
agrees with white-box IG where random directions cannot afford to: every answer measures one
cell, so no other cell's effect lands in its estimate.

Why from the path image, and why alternate: a forward difference is off by ``step/2`` times
the patch's own curvature, and that curvature is large. Central differences cost two queries per
patch and point, halving the points; steps up and down at alternate points cancel the constant
part of that error at one query each. Each patch's
estimate is the mean of its upward quotients and its downward ones, weighted equally (exact on
quadratics: both halves of the midpoints average to 1/2). A step spanning the point from half a
step below is central in the patch's own direction, but leaves every other patch half a step
behind, so it measures the slope off the path, with an error of the same sign at every point
(the designs are compared in benchmarks/results/SUMMARY.md, section "IG steps").

The step is in units of ``m`` (default 0.05: small enough for a derivative, large enough to move
8-bit pixels; chosen on the tuning photos); the perturbation actually delivered (after clipping)
divides each difference.
Standard errors come from the spread of a cell's quotients along the path (how much its
gradient varies along it: a rough, usually pessimistic gauge of the quadrature error). Queries
go out in chunks of ``chunk`` (the runner's batch), so a budget stop keeps every difference
already paid for.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import BudgetExceeded, InputError
from ..estimators import GradientEstimate, Samples

STEP = 0.05
DESIGN = "up/down"  # which difference the sampler takes (benchmark rows are keyed on it)


def path_points(queries: int, dim: int) -> np.ndarray:
    """The path positions (midpoints) that ``queries`` queries pay for: one query for the path
    image and ``dim`` for its one-patch steps at each (equally spaced: the gradient along the path
    is too rough for Gauss-Legendre nodes)."""
    k = queries // (dim + 1)
    if k < 1:
        raise InputError(f"Integrated Gradients in steps needs at least {dim + 1} queries on a grid of "
                         f"{dim} patches (one path point); got {queries}: raise --queries or coarsen --grid")
    return (np.arange(k) + 0.5) / k


def step_signs(alphas: np.ndarray, step: float) -> np.ndarray:
    """+1 (step up) at even path points, -1 (down) at odd ones, turned round where the step would
    leave [0, 1]."""
    signs = np.where(np.arange(len(alphas)) % 2 == 0, 1.0, -1.0)
    signs[alphas + step > 1] = -1.0
    signs[alphas - step < 0] = 1.0
    return signs


def path_steps(f: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], dim: int, *, queries: int,
               step: float = STEP, chunk: int = 64, keep_samples: bool = False) -> GradientEstimate:
    """``f`` maps ``(n, dim)`` mask values to ``(scores, delivered mask values)``."""
    if not 0 < step <= 0.5:
        raise InputError(f"the step of Integrated Gradients in steps must be in (0, 0.5], got {step}")
    alphas = path_points(queries, dim)
    signs = step_signs(alphas, step)
    est = GradientEstimate.empty(dim)
    sums, counts = np.zeros((2, dim)), np.zeros((2, dim), dtype=np.int64)  # [up, down] per patch
    squares = np.zeros(dim)
    kept: list[Samples] = []
    used = 0
    try:
        for alpha, sign in zip(alphas, signs):
            # the path image first, then each patch moved alone by a step (up or down)
            here = np.full(dim, alpha)
            points = np.concatenate([here[None], here[None] + sign * step * np.eye(dim)])
            side = 0 if sign > 0 else 1
            for start in range(0, dim + 1, chunk):
                values, delivered = f(points[start:start + chunk])
                values, delivered = np.asarray(values, dtype=np.float64), np.asarray(delivered, dtype=np.float64)
                used += len(values)
                if start == 0:
                    f0, moved0 = values[0], delivered[0]
                    values, delivered, first = values[1:], delivered[1:], 0
                else:
                    first = start - 1
                cells = np.arange(first, first + len(values))
                moved = delivered - moved0
                size = moved[np.arange(len(cells)), cells]  # signed: what the step delivered
                ok = size != 0
                slope = np.where(ok, (values - f0) / np.where(ok, size, 1.0), 0.0)
                sums[side, cells] += slope
                squares[cells] += slope ** 2
                counts[side, cells] += ok
                if keep_samples:
                    kept.append(Samples(moved[ok], (values - f0)[ok]))
    except BudgetExceeded as exc:
        est.stopped = str(exc)
    sides = sums / np.maximum(counts, 1)
    both = counts > 0
    mean = (sides * both).sum(0) / np.maximum(both.sum(0), 1)  # up and down weighted equally
    count = counts.sum(0)
    est.mean, est.count = mean, count
    est.m2 = np.maximum(squares - 2 * mean * sums.sum(0) + count * mean ** 2, 0.0)  # spread around the mean
    est.queries = used
    est.extras.update(path_points=len(alphas), step=step)
    if keep_samples:
        est.samples = Samples.join(kept) if kept else Samples(np.zeros((0, dim)), np.zeros(0))
    return est
