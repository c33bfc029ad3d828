"""Focus: spend the second part of the budget re-measuring the cells the first part ranks highest.

Stage 1 is the Banzhaf pass over every cell (``1 - QUERY_SHARE`` of the queries), read by the
chosen estimator. Stage 2 takes the ``share`` of cells that stage 1 ranks highest (at most one per
two stage-2 pairs) and measures them among themselves: complement pairs over the candidates
only, every other cell held fixed: present (the image around them, where a deletion curve
starts) or removed (the baseline, where an insertion curve starts), the contexts in turn
(:data:`CONTEXTS`). With the rest fixed, its effects and interactions cancel in every pair
difference, so the candidates' order is read far more precisely than stage 1 can read it among
every cell's noise. Least squares over the candidates (a tiny ridge) gives each one's mean effect
in those contexts.

The map keeps stage 1's values (and standard errors); stage 2 only re-orders them among the
candidates: the most salient cell by stage 2 gets the largest candidate value, and so on. Cells
outside the candidates keep their stage-1 value and rank. If the budget stops stage 2 before it
has one pair per candidate, the stage-1 map is returned as it is (the answers are kept in
``extras``).
"""
from __future__ import annotations

import numpy as np

from ..estimators import GradientEstimate, lr_gradient

SHARE = 0.3         # of the cells re-measured in stage 2 (the share measured in the benchmark)
QUERY_SHARE = 0.5   # of the queries spent on stage 2
CONTEXTS = (1.0, 1.0, 0.0)  # the other cells' state, pair by pair: present, present, removed
RIDGE = 1e-3        # relative to the data's weight per candidate


def plan(queries: int, cells: int, share: float = SHARE) -> tuple[int, int]:
    """``(stage-2 queries, candidates)`` for a budget: stage 2 gets ``QUERY_SHARE`` of the queries
    (whole pairs), and at most one candidate per two of its pairs."""
    second = int(queries * QUERY_SHARE) // 2 * 2
    candidates = min(int(round(share * cells)), second // 4)
    return (second, candidates) if candidates >= 2 else (0, 0)


def first_stage(queries: int, cells: int, share: float = SHARE) -> int:
    """The queries of stage 1, the pass whose fit (and smoothness prior) draws the map (every
    query when ``share`` is 0: no focus)."""
    return queries - plan(queries, cells, share)[0]


def focused(probe, explainer, prior, *, queries: int, sigma: float, noise: str, seed: np.random.Generator,
            share: float = SHARE, stage=None) -> tuple[GradientEstimate, np.ndarray, np.ndarray]:
    """Two-stage Banzhaf map: ``(estimate, values, standard errors)`` over every cell. ``explainer``
    fits stage 1 (:func:`first_stage` queries): its prior is set for that many. ``stage()``, when
    given, is called between the stages (stage 2 asks for what stage 1's answers rank highest)."""
    second, k = plan(queries, probe.center.size, share)
    first = lr_gradient(probe.f, probe.center, queries=queries - second, sigma=sigma, noise=noise, seed=seed,
                        keep_samples=explainer.keep_samples)
    if stage is not None:
        stage()
    values, stderr = explainer.fit(first, prior)
    first.extras.update(focus_cells=[], focus_queries=0)
    if first.stopped or k == 0:
        return first, values, stderr
    candidates = np.argsort(-values, kind="stable")[:k]
    turn = [0]

    def contexts(rng, n):  # the other cells' state, in turn; the candidates at one half
        rows = np.array([CONTEXTS[(turn[0] + i) % len(CONTEXTS)] for i in range(n)])
        turn[0] += n
        centres = np.repeat(rows[:, None], probe.center.size, axis=1)
        centres[:, candidates] = 0.5
        return centres

    second_est = lr_gradient(probe.f, probe.center, queries=second, sigma=sigma, noise=noise, seed=seed,
                             blocks=[candidates], center_fn=contexts, keep_samples=True)
    z = second_est.samples.directions[:, candidates]
    r = second_est.samples.responses
    first.queries += second_est.queries
    first.stopped = second_est.stopped
    first.extras.update(focus_queries=second_est.queries, focus_samples=second_est.samples)
    if len(r) < k:
        return first, values, stderr
    gram = z.T @ z
    effects = np.linalg.solve(gram + RIDGE * np.trace(gram) / k * np.eye(k), z.T @ r)
    first.extras.update(focus_cells=candidates.tolist(), focus_effects=effects)
    return first, reorder_among(values, candidates, effects), stderr


def reorder_among(values: np.ndarray, cells: np.ndarray, by: np.ndarray) -> np.ndarray:
    """``values`` with the values of ``cells`` handed out among them in the order of ``by`` (one
    entry per cell): the largest to the cell ``by`` ranks first; every other cell unchanged."""
    out = values.copy()
    out[cells[np.argsort(-by, kind="stable")]] = np.sort(values[cells])[::-1]
    return out
