"""How good is a saliency map: faithfulness curves and agreement with a reference map.

Deletion and insertion follow the RISE convention with one deliberate change: pixels are removed
and inserted by *cells* of a grid, into a *blurred* copy. Pixel-level deletion with a flat fill
rewards maps that sprinkle out-of-distribution speckle (a random map can score best), so it
measures nothing useful.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .spaces import PatchGrid


@dataclass
class Faithfulness:
    deletion_auc: float
    insertion_auc: float
    deletion_curve: np.ndarray
    insertion_curve: np.ndarray
    queries: int

    def as_dict(self) -> dict:
        return {"deletion_auc": round(self.deletion_auc, 5), "insertion_auc": round(self.insertion_auc, 5),
                "queries": self.queries}


def cell_order(saliency_map: np.ndarray, grid: PatchGrid, seed: int = 0) -> np.ndarray:
    """Cells from most to least salient (mean map value per cell; random tie-breaks)."""
    per_cell = grid.pool(np.asarray(saliency_map, dtype=np.float64)[None, :, :, None])[0, :, :, 0].reshape(-1)
    jitter = np.random.default_rng(seed).random(per_cell.size)
    return np.lexsort((jitter, -per_cell))


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at evenly spaced points of [0, 1] (trapezoid rule)."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size < 2:
        return float(curve.mean()) if curve.size else float("nan")
    return float(((curve[1:] + curve[:-1]) / 2).mean())


def deletion_insertion(
    prob: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    saliency_map: np.ndarray,
    baseline: np.ndarray,
    *,
    cells: int = 14,
    steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> Faithfulness:
    """Deletion AUC (remove most-salient cells first into ``baseline``; lower is better) and
    insertion AUC (insert them into ``baseline``; higher is better) of ``prob`` (the target's
    softmax probability), on a normalised x axis. ``steps`` subsamples the curve (default: every
    cell)."""
    image = np.asarray(image, dtype=np.float32)
    baseline = np.asarray(baseline, dtype=np.float32)
    grid = PatchGrid(image.shape[0], image.shape[1], cells)
    order = cell_order(saliency_map, grid, seed)
    n = grid.cells
    counts = np.unique(np.linspace(0, n, (steps or n) + 1).round().astype(int))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    rank_pixels = grid.upsample(rank.reshape(1, grid.rows, grid.cols))[0]
    del_curve, ins_curve = [], []
    for start in range(0, len(counts), batch_size):
        ks = counts[start:start + batch_size]
        removed = (rank_pixels[None] < ks[:, None, None])[..., None]
        deleted = np.where(removed, baseline[None], image[None])
        inserted = np.where(removed, image[None], baseline[None])
        del_curve.append(np.asarray(prob(deleted), dtype=np.float64))
        ins_curve.append(np.asarray(prob(inserted), dtype=np.float64))
    d, i = np.concatenate(del_curve), np.concatenate(ins_curve)
    return Faithfulness(auc(d), auc(i), d, i, 2 * len(counts))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(x.size)
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [x.size]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation."""
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])
