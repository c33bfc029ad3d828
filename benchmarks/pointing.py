"""Grid pointing game (Boehle et al. 2021; Rao et al., CVPR 2022): does a map point at the right photo?

Four working views of photos with distinct top-1 classes (from the installed packages' photos),
each shrunk to a quadrant, make one 2x2 grid; one map per quadrant, the target being that
quadrant photo's own top-1 class. A map is scored over its 14x14 cells (a quadrant = 7x7 cells):

* positive-mass share: the positive map mass inside the target's quadrant / all positive mass
  (chance 0.25; 0 for a map without positive mass). Maps that are positive by construction (RISE, HSIC, Sobol) are centred first
  (their zero means nothing); Grad-CAM is read as it is (its ReLU sets its zero);
* top-10% share: the share of the 20 highest cells inside the target's quadrant (chance 0.25; ties
  broken at random).

Rows: the library's default and banzhaf, every black-box peer of the saliency table, and the
white-box references Integrated Gradients and Grad-CAM (torch autograd on the model's twin). A
target is "seen" when the model, shown the grid with only that quadrant kept (the others blurred
away), ranks the target first: the grid shrinks each photo to half its size, and many targets are
then barely there (their probability on the whole grid is reported too).

    python -m benchmarks.pointing                 # every grid (resumes; parts under benchmarks/parts/pointing/)
    python -m benchmarks.pointing --combine       # -> results/pointing.{md,json}

The methods' queries do not depend on the target (fixed seeds), so the answers are cached with the
log-probabilities of all four quadrant classes and a grid's four maps of one method cost the
queries of one; each map still spends at most the budget.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np

from benchmarks import peers
from benchmarks.harness import PARTS, RESULTS, mean_ci, show
from benchmarks.models import load_model
from benchmarks.saliency import (
    BANZHAF, CORE, DEFAULT, KERNEL_BANZHAF, TABLE_PHOTOS, TUNING_PHOTOS, compute_map, config_of, load_photo, table_specs,
)
from blackbox import PatchGrid, make_baseline

GRIDS = 8
BUDGET = 1000
CELLS = 14
TOP = round(0.1 * CELLS * CELLS)  # the 20 highest cells
CENTRED = ("rise", "hsic", "sobol")  # kinds whose maps are positive by construction
WHITEBOX = ("white-box IG", "Grad-CAM (white-box)")
PART_DIR = PARTS / "pointing"


class SharedOracle(peers.Oracle):
    """One quadrant's target as a counted black box; answers cached with the log-probabilities of
    all the grid's classes (``shared``), so another quadrant asking the same image pays nothing."""

    def __init__(self, model, classes: list[int], quadrant: int, shared: dict):
        super().__init__(model, classes[quadrant])
        self.classes, self.column, self.shared = classes, quadrant, shared

    def logp(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        self.evals += len(images)
        keys = [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]
        missing = [i for i, k in enumerate(keys) if k not in self.shared]
        if missing:
            values = self.model.log_probs(images[missing])[:, self.classes]
            self.forwards += len(missing)
            for i, v in zip(missing, values):
                self.shared[keys[i]] = v
        return np.array([self.shared[k][self.column] for k in keys])


def photo_pool(model) -> dict[str, tuple[np.ndarray, int]]:
    """The packages' photos with distinct top-1 classes: ``{name: (working view, class)}``."""
    pool, seen = {}, set()
    for name in [*TABLE_PHOTOS, *TUNING_PHOTOS]:
        image = load_photo(name)
        work = model.view(*image.shape[:2]).to_working(image)
        cls = int(np.argmax(model.log_probs(work[None])[0]))
        if cls not in seen:
            pool[name], seen = (work, cls), seen | {cls}
    return pool


def make_grids(names: list[str], n: int, seed: int = 0) -> list[list[str]]:
    """``n`` grids of four distinct photos: successive random orders of ``names``, taken four at a time."""
    rng = np.random.default_rng(seed)
    grids, queue = [], []
    while len(grids) < n:
        if len(set(queue)) < 4:
            queue += [str(x) for x in rng.permutation(names)]
        grid = list(dict.fromkeys(queue))[:4]
        for name in grid:
            queue.remove(name)
        grids.append(grid)
    return grids


def grid_image(views: list[np.ndarray]) -> np.ndarray:
    """Four working views, each resized to a quadrant, as one image of the same size."""
    from PIL import Image

    h, w = views[0].shape[:2]
    tiles = [np.asarray(Image.fromarray((v * 255).round().astype(np.uint8)).resize((w // 2, h // 2), Image.BILINEAR),
                        dtype=np.float32) / 255 for v in views]
    return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)


def quadrant_mask(q: int) -> np.ndarray:
    r, c = divmod(q, 2)
    mask = np.zeros((CELLS, CELLS), bool)
    half = CELLS // 2
    mask[r * half:(r + 1) * half, c * half:(c + 1) * half] = True
    return mask.ravel()


def shares(cells: np.ndarray, q: int, centre: bool) -> tuple[float, float]:
    """(positive-mass share, top-10% share) of a 14x14 cell map for quadrant ``q``."""
    v = np.asarray(cells, dtype=np.float64).ravel()
    if centre:
        v = v - v.mean()
    inside, pos = quadrant_mask(q), np.maximum(v, 0)
    mass = float(pos[inside].sum() / pos.sum()) if pos.sum() > 0 else 0.0  # no positive mass points nowhere
    top = np.lexsort((np.random.default_rng(0).random(v.size), -v))[:TOP]  # ties broken at random, as cell_order does
    return mass, float(inside[top].mean())


def gradcam(reference, image: np.ndarray, index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of the last convolutional features of an EfficientNet twin,
    on its feature grid (7x7 for 224 px, 9x9 for Lite2's 260 px), area-resampled to 14x14 cells
    (each feature cell spread over the common refinement of both grids, then averaged per cell)."""
    torch, net = reference.torch, reference.module
    x = reference.preprocessing.to_input(torch.from_numpy(image[None].astype(np.float32)))
    features = net.extract_features(x)
    logits = net._fc(net._avg_pooling(features).flatten(1))
    (grad,) = torch.autograd.grad(torch.log_softmax(logits, 1)[0, index], features)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(1))[0].detach().numpy()
    n = cam.shape[0]
    fine = np.kron(cam, np.ones((CELLS, CELLS)))  # (n * CELLS) squared: both grids divide it
    return fine.reshape(CELLS, n, CELLS, n).mean(axis=(1, 3))


def specs(core: bool = False) -> list[dict]:
    """The default, banzhaf, Kernel Banzhaf and every black-box peer of the saliency table (with
    ``core``, only the saliency table's :data:`~benchmarks.saliency.CORE` rows)."""
    return [s for s in table_specs() if (s["name"] in CORE if core else s["name"] in (DEFAULT, BANZHAF, KERNEL_BANZHAF)
                                         or (s["kind"] != "lr" and "lite0" in s.get("models", ("lite0",))))]


class Grid:
    """One 2x2 grid: its image, blurred baseline, classes, cells and the answers shared by its targets."""

    def __init__(self, model, names: list[str], pool: dict):
        self.model, self.names = model, names
        self.work = grid_image([pool[n][0] for n in names])
        self.classes = [pool[n][1] for n in names]
        self.baseline = make_baseline(self.work)
        self.cells = PatchGrid(self.work.shape[0], self.work.shape[1], CELLS)
        self.shared: dict = {}
        probs = np.exp(model.log_probs(self.work[None])[0])
        self.p = [float(probs[c]) for c in self.classes]
        self.seen = [self._seen(q) for q in range(4)]

    def _seen(self, q: int) -> bool:
        """The model's top-1 is the target when only quadrant ``q`` is kept (the rest blurred)."""
        keep = self.cells.upsample(quadrant_mask(q).reshape(1, CELLS, CELLS).astype(np.float32))[0][..., None]
        alone = self.baseline + keep * (self.work - self.baseline)
        return int(np.argmax(self.model.log_probs(alone[None])[0])) == self.classes[q]

    def pooled(self, saliency_map) -> np.ndarray:
        return self.cells.pool(np.asarray(saliency_map, dtype=np.float64)[None, :, :, None])[0, :, :, 0].ravel()

    def black_box(self, spec: dict, q: int, budget: int) -> np.ndarray:
        oracle = SharedOracle(self.model, self.classes, q, self.shared)
        sal = compute_map(spec, oracle, self.work, self.baseline, budget, 0)
        assert oracle.evals <= budget, f"{spec['name']} spent {oracle.evals} > {budget}"
        return self.pooled(sal)

    def white_box(self, q: int) -> dict[str, np.ndarray]:
        ig = peers.whitebox_maps(self.model.reference, self.work, self.baseline, self.classes[q])["ig"]
        return {WHITEBOX[0]: self.pooled(ig), WHITEBOX[1]: gradcam(self.model.reference, self.work,
                                                                      self.classes[q]).ravel()}


def run_grid(index: int, names: list[str], model, pool: dict, budget: int, log, rows_of: list[dict]) -> None:
    """Every row for the four targets of one grid, saved to its part file as each is done."""
    part = PART_DIR / f"{model.short_name}-{budget}-grid{index}.json"
    rows = json.loads(part.read_text()) if part.exists() else []
    done = {(r["quadrant"], r["method"]) for r in rows}
    grid = Grid(model, names, pool)
    log(f"grid {index} {names}: p on the grid {[round(p, 3) for p in grid.p]}, seen {grid.seen}")

    def add(q: int, method: str, config: str, cells: np.ndarray, centre: bool) -> None:
        mass, top = shares(cells, q, centre)
        rows.append({"grid": index, "photos": names, "quadrant": q, "target": model.labels[grid.classes[q]],
                     "p_grid": round(grid.p[q], 5), "seen": grid.seen[q], "method": method, "config": config,
                     "budget": budget, "centred": centre, "mass": round(mass, 4), "top": round(top, 4),
                     "cells": np.round(cells, 7).tolist()})
        part.write_text(json.dumps(rows))

    for q in range(4):
        if any((q, m) not in done for m in WHITEBOX):
            for method, cells in grid.white_box(q).items():
                if (q, method) not in done:
                    add(q, method, "torch autograd", cells, False)
    for spec in rows_of:
        t0 = time.perf_counter()
        for q in range(4):
            if (q, spec["name"]) not in done:
                add(q, spec["name"], config_of(spec, budget), grid.black_box(spec, q, budget), spec["kind"] in CENTRED)
        log(f"  {spec['name'][:60]:<60} " + " ".join(f"{r['mass']:.2f}/{r['top']:.2f}" for r in rows
                                                      if r["method"] == spec["name"]) + f" ({time.perf_counter() - t0:.0f}s)")


# ---------------------------------------------------------------- tables
def load(model: str, budget: int) -> list[dict]:
    rows = []
    for part in sorted(PART_DIR.glob(f"{model}-{budget}-grid*.json")):
        rows += json.loads(part.read_text())
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per method: mean shares over targets (all, and seen only) with 95% t-intervals."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        seen = [r for r in mine if r["seen"]]
        out.append({"method": method, "white_box": method in WHITEBOX, "targets": len(mine), "seen": len(seen),
                    "centred": mine[0]["centred"],
                    "mass": mean_ci([r["mass"] for r in mine]), "top": mean_ci([r["top"] for r in mine]),
                    "mass_seen": mean_ci([r["mass"] for r in seen]), "top_seen": mean_ci([r["top"] for r in seen])})
    out.sort(key=lambda s: -s["mass"][0])
    return out


def verdict(stats: list[dict], key: str, threshold: float) -> str:
    """Whether the default reaches ``threshold`` on ``key`` and at least every black-box peer's mean."""
    mine = next(s for s in stats if s["method"] == DEFAULT)
    peers_ = [s for s in stats if not s["white_box"] and s["method"] not in (DEFAULT, BANZHAF)]
    best = max(peers_, key=lambda s: s[key][0])
    return (f"{show(mine[key], 2)}: >= {threshold} **{'yes' if mine[key][0] >= threshold else 'no'}**; "
            f">= every black-box peer **{'yes' if mine[key][0] >= best[key][0] else 'no'}** "
            f"(best peer {best['method']} {show(best[key], 2)})")


def combine(model: str, budget: int, log) -> None:
    rows = load(model, budget)
    if not rows:
        raise SystemExit(f"no part files under {PART_DIR}: run `python -m benchmarks.pointing` first")
    stats = summary(rows)
    targets = [r for r in rows if r["method"] == DEFAULT]
    grids = {r["grid"]: r["photos"] for r in targets}
    what, scores, rows_seen = __doc__.split("\n\n")[1:4]  # the game, its two scores, the rows and "seen"
    md = ["# Grid pointing game\n", what.replace("\n", " ") + "\n", scores + "\n", rows_seen.replace("\n", " ") + "\n",
          f"Written by `python -m benchmarks.pointing --combine`. Model {model}, {budget} queries per map, seed 0; "
          f"{len(grids)} grids, {len(targets)} targets ({sum(r['seen'] for r in targets)} seen). Means over targets "
          "with 95% t-intervals; chance is 0.25 for both shares.\n",
          "Grids (target: probability on the whole grid, seen or not):\n",
          *[f"- grid {g}: " + ", ".join(f"{r['photos'][r['quadrant']]} -> {r['target']} ({r['p_grid']:.3f}"
                                        f"{', seen' if r['seen'] else ''})" for r in targets if r["grid"] == g)
            for g in sorted(grids)],
          "\n## Targets (the default)\n",
          f"- positive-mass share {verdict(stats, 'mass', 0.75)}",
          f"- top-10% share {verdict(stats, 'top', 0.95)}",
          f"- seen targets only: positive-mass share {verdict(stats, 'mass_seen', 0.75)}; top-10% share "
          f"{verdict(stats, 'top_seen', 0.95)}",
          "\n## Shares\n",
          "| map | targets | positive-mass share | top-10% share | seen targets | positive-mass share (seen) "
          "| top-10% share (seen) |", "|---|---|---|---|---|---|---|"]
    for s in stats:
        name = s["method"] + (" (centred)" if s["centred"] else "") + (" [white-box]" if s["white_box"] else "")
        md.append(f"| {name} | {s['targets']} | {show(s['mass'], 2)} | {show(s['top'], 2)} | {s['seen']} | "
                  f"{show(s['mass_seen'], 2)} | {show(s['top_seen'], 2)} |")
    stem = "pointing" if model == "lite0" else f"pointing.{model}"
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    derivable = ("cells", "photos", "config", "budget")  # the maps, the grid's photos (in "grids"), the settings
    slim = [{k: v for k, v in r.items() if k not in derivable} for r in rows]
    (RESULTS / f"{stem}.json").write_text(json.dumps({"model": model, "budget": budget, "grids": grids,
                                                      "summary": stats, "rows": slim}))
    log(f"wrote {RESULTS / stem}.md and .json ({len(rows)} rows)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="lite0", help="lite0 (the white-box Grad-CAM needs an EfficientNet twin)")
    p.add_argument("--grids", type=int, default=GRIDS, help="how many grids (the first N of a fixed sequence)")
    p.add_argument("--budget", type=int, default=BUDGET)
    p.add_argument("--rows", choices=("all", "core"), default="all",
                   help="core: only the saliency table's core rows (the default, banzhaf and the strongest peers)")
    p.add_argument("--combine", action="store_true", help="the tables from the part files")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    log = lambda s: print(f"{time.perf_counter() - t0:7.1f}s {s}", flush=True)  # noqa: E731
    if args.combine:
        return combine(args.model, args.budget, log)
    model = load_model(args.model)
    pool = photo_pool(model)
    log(f"photos with distinct top-1 classes: {', '.join(f'{n} ({model.labels[c]})' for n, (_, c) in pool.items())}")
    PART_DIR.mkdir(parents=True, exist_ok=True)
    for index, names in enumerate(make_grids(list(pool), args.grids)):
        run_grid(index, names, model, pool, args.budget, log, specs(args.rows == "core"))


if __name__ == "__main__":
    sys.exit(main())
