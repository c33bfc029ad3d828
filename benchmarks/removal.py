"""Removal operators: what "deleting a cell" puts in its place, and a random map to compare with.

A deletion or insertion curve depends on the fill as much as on the map: a map can look faithful
under the fill it was made with and not under another. Every map is therefore scored under five
fills at the working image's resolution:

* ``blur-lib``: the library's blurred copy (Gaussian radius max(H, W) / 16), every method's own
  fill here (the masks of every method mix the photo with it);
* ``blur10`` and ``blur4``: Gaussian blur of radius 10 and 4 pixels (a 4-px blur leaves shapes
  and colours: the mildest removal);
* ``mean``: the photo's mean colour;
* ``grey``: 0.5 grey.

``avg4`` is the mean over the four fills other than the own one, ``avg5`` over all five.

The random reference: the deletion and insertion AUCs of :data:`RANDOM_ORDERS` random cell orders
per photo and fill. A map "deletes slower than random" under a fill when its deletion AUC exceeds
the random orders' mean by more than two standard errors of that mean (:func:`slower_than_random`):
with 16 orders a single random order's spread is wide (sd 0.015 on astronaut under grey), so a
map a little above the mean is not evidence of anything, while one above the mean's interval is.
"""
from __future__ import annotations

import numpy as np

from blackbox import deletion_insertion, make_baseline
from blackbox.images import blur

OPERATORS = ("blur-lib", "blur10", "blur4", "mean", "grey")
OWN = "blur-lib"
OTHERS = tuple(op for op in OPERATORS if op != OWN)
RANDOM_ORDERS = 16
STEPS = 28  # points per curve: 29 with the ends
CELLS = 14


def fills(work: np.ndarray) -> dict[str, np.ndarray]:
    """The five fills of :data:`OPERATORS` for a working image, float32 like the image."""
    work = np.asarray(work, dtype=np.float32)
    return {"blur-lib": make_baseline(work), "blur10": blur(work, 10), "blur4": blur(work, 4),
            "mean": make_baseline(work, "mean"), "grey": np.full_like(work, 0.5)}


def score_map(prob, work: np.ndarray, saliency_map: np.ndarray, fill_images: dict, batch: int = 64) -> dict:
    """``{fill: [deletion AUC, insertion AUC]}`` of one map under every fill (cells ranked by the
    map's mean per cell; 29 points per curve)."""
    out = {}
    for name, fill in fill_images.items():
        f = deletion_insertion(prob, work, saliency_map, fill, cells=CELLS, steps=STEPS, batch_size=batch)
        out[name] = [round(f.deletion_auc, 5), round(f.insertion_auc, 5)]
    return out


def random_reference(prob, work: np.ndarray, fill_images: dict, orders: int = RANDOM_ORDERS,
                     seed: int = 12345, batch: int = 64) -> dict:
    """``{fill: {"deletion": [...], "insertion": [...]}}``: the AUCs of ``orders`` random cell
    orders (the same orders under every fill)."""
    rng = np.random.default_rng(seed)
    maps = [rng.random((CELLS, CELLS)) for _ in range(orders)]
    grid = _cell_image(work.shape[:2])
    out = {}
    for name, fill in fill_images.items():
        scores = [score_map(prob, work, grid(m), {name: fill}, batch)[name] for m in maps]
        out[name] = {"deletion": [s[0] for s in scores], "insertion": [s[1] for s in scores]}
    return out


def _cell_image(shape):
    """A function from 14x14 cell values to a map of the working image's size (each cell constant)."""
    from blackbox import PatchGrid

    grid = PatchGrid(shape[0], shape[1], CELLS)
    return lambda cells: grid.upsample(np.asarray(cells, dtype=np.float64).reshape(1, CELLS, CELLS))[0]


def cells_as_map(cells, shape) -> np.ndarray:
    """A stored 14x14 cell map as a map of the working image (ranks the same cells the same way)."""
    return _cell_image(shape)(cells)


def random_bound(values) -> tuple[float, float, float]:
    """``(mean, sd, mean + 2 standard errors)`` of the random orders' deletion AUCs."""
    v = np.asarray(values, dtype=np.float64)
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return float(v.mean()), sd, float(v.mean() + 2 * sd / np.sqrt(v.size))


def slower_than_random(deletion: float, random_deletions) -> bool:
    """The map's deletion AUC lies above the random orders' mean by more than 2 standard errors."""
    return deletion > random_bound(random_deletions)[2]


def average(scores: dict, which: int, operators=OTHERS) -> float:
    """Mean deletion (``which=0``) or insertion (1) AUC over ``operators`` of one row's scores."""
    return float(np.mean([scores[op][which] for op in operators]))
