"""Coarse to fine: spend part of the budget on a coarse grid, the rest on the cells that matter.

Stage 1 perturbs a grid ``factor`` times coarser (each coarse cell moves its fine cells
together): few unknowns, so few queries give a stable picture. Stage 2 perturbs the fine cells
one coarse cell (a block of fine cells) at a time, and an allocator rations its queries across
these blocks from the coarse estimate: a block gets queries in proportion to
``sqrt(g_k^2 + se_k^2)`` under the Neyman rule (large or uncertain cells first), with a floor of
one antithetic pair. Both stages' queries are kept in fine coordinates (a coarse direction moves
every fine cell it holds), so a :class:`~blackbox.estimators.Regression` fits them all at once;
the LR mean sees only stage 2.
"""
from __future__ import annotations

import numpy as np

from ..allocators import make_allocator
from ..errors import InputError
from ..estimators import GradientEstimate, Samples, lr_gradient

FACTOR = 2
COARSE_SHARE = 0.4


def coarse_to_fine(space, method, score, *, queries: int, sigma: float, noise: str, control: str,
                   seed: np.random.Generator, allocator: str = "neyman", factor: int = FACTOR,
                   coarse_share: float = COARSE_SHARE, keep_samples: bool = True, stage=None) -> GradientEstimate:
    """The coarse stage, then the fine one rationed from its answers; ``stage()``, when given, is
    called between them."""
    if control != "antithetic":
        raise InputError("coarse-to-fine refinement uses antithetic pairs")
    coarse_grid, parent = space.grid.coarsened(factor)
    fine_blocks = [np.flatnonzero(parent == k) for k in range(coarse_grid.cells)]
    fine_blocks = [b for b in fine_blocks if b.size]
    first = max(2, int(queries * coarse_share) // 2 * 2)
    if queries - first < 2 * len(fine_blocks):
        raise InputError(f"{queries} queries are too few to refine {len(fine_blocks)} coarse cells "
                         f"(need at least {first + 2 * len(fine_blocks)})")
    coarse = space.on_grid(coarse_grid)
    probe = coarse.probe(method, score, [np.arange(coarse_grid.cells)])
    est_coarse = lr_gradient(probe.f, probe.center, queries=first, sigma=sigma, noise=noise, seed=seed,
                             center_fn=probe.center_fn, keep_samples=True)
    if stage is not None:
        stage()
    expanded = Samples(est_coarse.samples.directions[:, parent], est_coarse.samples.responses)
    probe = space.probe(method, score, fine_blocks)
    if est_coarse.stopped:
        est = GradientEstimate.empty(space.dim)
        est.stopped = est_coarse.stopped
        counts = np.zeros(len(fine_blocks), dtype=np.int64)
    else:
        importance = np.array([est_coarse.mean[parent[b[0]]] ** 2 + est_coarse.stderr[parent[b[0]]] ** 2
                               for b in fine_blocks])
        importance = np.where(np.isfinite(importance), importance, np.nanmax(importance[np.isfinite(importance)], initial=1.0))
        counts = make_allocator(allocator, floor=2, unit=2).allocate(queries - est_coarse.queries, len(fine_blocks),
                                                                     variances=importance)
        est = lr_gradient(probe.f, probe.center, queries=int(counts.sum()), sigma=sigma, noise=noise, seed=seed,
                          blocks=fine_blocks, allocation=counts, center_fn=probe.center_fn, keep_samples=True)
    est.samples = Samples.join([expanded, est.samples]) if est.samples is not None else expanded
    if not keep_samples:
        est.samples = None
    est.queries += est_coarse.queries
    est.extras.update(coarse_grid=[coarse_grid.rows, coarse_grid.cols], coarse_queries=est_coarse.queries,
                      allocation=counts.tolist(), allocator=allocator)
    return est
