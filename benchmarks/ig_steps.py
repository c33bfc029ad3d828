"""How ig-steps takes its finite differences: designs side by side, judged against white-box IG.

`--method ig-steps` estimates Integrated Gradients from one-patch finite differences at fixed
midpoints of the path (see blackbox/saliency/path_steps.py). Which difference it takes decides
how well it agrees with white-box IG. Two parts, both on the embedded EfficientNet-Lite0 with
the saliency benchmark's photos, targets, blurred baseline and 14x14 cells:

* **Same budget, 8-bit images (the product)**: 1000 queries, step 0.05, images rounded to 8 bits
  inside the black box as in every real query. The library's steps up and down from the path
  image; steps spanning the point from half a step below (the design before); forward steps
  only; central differences (two queries per patch and point, so half the points); and white-box
  gradients at the same midpoints (the quadrature's ceiling, no queries). Tuning and table photos.
* **Same points, unquantised images (the mechanism)**: 5 midpoints, step 0.1, float images, so
  neither rounding nor the budget is in the way: forward, backward, spanning, up/down and central
  (twice the queries). Tuning photos only.

    python -m benchmarks.ig_steps            # -> results/ig_steps.{md,json}
    python -m benchmarks.ig_steps --combine  # rewrite the .md from the .json
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from benchmarks import saliency as bench

from blackbox import MaskSpace, spearman
from blackbox.saliency import METHODS
from blackbox.saliency.path_steps import path_points, path_steps

BUDGET = 1000
STEP = 0.05
MECHANISM_STEP, MECHANISM_POINTS = 0.1, 5
BATCH = bench.BATCH


def batched(f, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = [f(points[s:s + BATCH]) for s in range(0, len(points), BATCH)]
    return np.concatenate([np.asarray(v, dtype=np.float64) for v, _ in out]), np.concatenate([np.asarray(m) for _, m in out])


def quotients(f, base: np.ndarray, sign: float, step: float) -> np.ndarray:
    """Each patch's difference quotient for a step of ``sign * step`` from ``base`` (one query for
    the base, one per patch), divided by the step delivered."""
    d = len(base)
    values, delivered = batched(f, np.concatenate([base[None], base[None] + sign * step * np.eye(d)]))
    size = (delivered[1:] - delivered[0])[np.arange(d), np.arange(d)]
    return (values[1:] - values[0]) / size


def design_map(kind: str, f, d: int, alphas: np.ndarray, step: float) -> np.ndarray:
    if kind == "up/down":  # the library's own sampler
        return path_steps(f, d, queries=len(alphas) * (d + 1), step=step, chunk=BATCH).mean
    rows = []
    for a in alphas:
        if kind == "spanning":
            rows.append(quotients(f, np.full(d, a - step / 2), 1.0, step))
        elif kind == "forward":
            rows.append(quotients(f, np.full(d, a), 1.0, step))
        elif kind == "backward":
            rows.append(quotients(f, np.full(d, a), -1.0, step))
        elif kind == "central":
            here = np.full(d, a)
            up, up_at = batched(f, here[None] + step / 2 * np.eye(d))
            down, down_at = batched(f, here[None] - step / 2 * np.eye(d))
            rows.append((up - down) / np.diag(up_at - down_at))
        else:
            raise ValueError(kind)
    return np.mean(rows, axis=0)


def whitebox_at(photo, model, alphas: np.ndarray) -> np.ndarray:
    """Cell IG from white-box gradients at the given path points only (torch autograd)."""
    diff = photo.work - photo.baseline
    path = (photo.baseline[None] + alphas[:, None, None, None] * diff[None]).astype(np.float32)
    g = model.reference.gradient(path, photo.target.index).mean(axis=0)
    return photo.pooled((g * diff).sum(axis=2)).ravel()


def unquantised(photo, model):
    """``f`` for float images (no 8-bit rounding): mask values in, (log p, mask values) out."""
    diff = (photo.work - photo.baseline)[None]

    def f(points):
        m = photo.cells.upsample(points.reshape(-1, bench.METRIC_CELLS, bench.METRIC_CELLS).astype(np.float32))
        images = (photo.baseline[None] + m[..., None] * diff).astype(np.float32)
        return model.log_probs(images)[:, photo.target.index], points
    return f


PRODUCT = ["up/down", "spanning", "forward", "central"]
MECHANISM = ["forward", "backward", "spanning", "up/down", "central"]


def main() -> None:
    if "--combine" in sys.argv[1:]:
        return write(json.loads((bench.RESULTS / "ig_steps.json").read_text())["rows"])
    from blackbox.adapters import load_image_model

    model = load_image_model()
    model.batch_size = BATCH
    t0 = time.perf_counter()
    rows = []
    sets = [("tuning", bench.TUNING_PHOTOS), ("table", bench.TABLE_PHOTOS)]
    for which, names in sets:
        for name in names:
            photo = bench.Photo(name, model)
            space = MaskSpace(photo.work, photo.cells, photo.baseline)
            f = space.probe(METHODS["ig-steps"], photo.oracle.logp, [np.arange(space.dim)]).f
            d = space.dim
            ref = photo.whitebox["ig"].ravel()
            for kind in PRODUCT:
                points = BUDGET // (2 * d if kind == "central" else d + 1)
                alphas = (np.arange(points) + 0.5) / points  # midpoints, as path_points() places them
                photo.oracle.reset()
                cells = design_map(kind, f, d, alphas, STEP)
                assert photo.oracle.evals <= BUDGET
                rows.append({"part": "product", "set": which, "photo": name, "design": kind, "points": len(alphas),
                             "queries": photo.oracle.evals, "rho_ig": round(spearman(cells, ref), 4)})
            alphas = path_points(BUDGET, d)
            rows.append({"part": "product", "set": which, "photo": name, "design": "white-box gradients",
                         "points": len(alphas), "queries": 0,
                         "rho_ig": round(spearman(whitebox_at(photo, model, alphas), ref), 4)})
            if which == "tuning":
                g = unquantised(photo, model)
                alphas = (np.arange(MECHANISM_POINTS) + 0.5) / MECHANISM_POINTS
                for kind in MECHANISM:
                    cells = design_map(kind, g, d, alphas, MECHANISM_STEP)
                    rows.append({"part": "mechanism", "set": which, "photo": name, "design": kind,
                                 "points": MECHANISM_POINTS, "rho_ig": round(spearman(cells, ref), 4)})
            photo.oracle.save()
            print(f"{time.perf_counter() - t0:7.1f}s [{name}] " + " ".join(
                f"{r['design']}={r['rho_ig']:+.2f}" for r in rows if r["photo"] == name and r["part"] == "product"),
                flush=True)
    write(rows)


def table(rows, part: str, designs, sets) -> list[str]:
    out = ["| design | points | " + " | ".join(f"rho vs white-box IG, {s} photos" for s in sets) + " |",
           "|---|---|" + "---|" * len(sets)]
    for kind in designs:
        cells = []
        for s in sets:
            v = [r["rho_ig"] for r in rows if r["part"] == part and r["set"] == s and r["design"] == kind]
            cells.append(bench.fmt(v, 3))
        points = {r["points"] for r in rows if r["part"] == part and r["design"] == kind}
        out.append(f"| {kind} | {', '.join(map(str, sorted(points)))} | " + " | ".join(cells) + " |")
    return out


def per_photo(rows, part: str, designs) -> list[str]:
    photos = list(dict.fromkeys(r["photo"] for r in rows if r["part"] == part))
    by = {(r["photo"], r["design"]): r["rho_ig"] for r in rows if r["part"] == part}
    out = ["| photo | " + " | ".join(designs) + " |", "|---|" + "---|" * len(designs)]
    out += [f"| {p} | " + " | ".join(f"{by[(p, k)]:.3f}" for k in designs) + " |" for p in photos]
    return out


def paired(rows, part: str, a: str, b: str, sets) -> list[str]:
    """``a`` minus ``b`` per photo: mean with its interval, on how many photos ``a`` is higher."""
    out = []
    for s in sets:
        by = {(r["photo"], r["design"]): r["rho_ig"] for r in rows if r["part"] == part and r["set"] == s}
        diffs = [by[(p, a)] - by[(p, b)] for p in dict.fromkeys(p for p, _ in by)]
        out.append(f"- {s} photos: {a} minus {b}, paired by photo: {bench.fmt(diffs, 3)}, "
                   f"higher on {sum(x > 0 for x in diffs)} of {len(diffs)}")
    return out


def write(rows) -> None:
    product = PRODUCT + ["white-box gradients"]
    md = ["# ig-steps: which finite difference\n",
          "Written by `python -m benchmarks.ig_steps`. Embedded EfficientNet-Lite0, the saliency benchmark's "
          "photos, top-1 targets and blurred baseline; rho = Spearman correlation over the 14x14 cells with "
          "white-box IG (32 midpoints, torch autograd). Intervals: 95% t-intervals over photos.\n",
          f"## Same budget, 8-bit images: {BUDGET} queries, step {STEP}\n",
          "- up/down: the library's `--method ig-steps` (steps up at even midpoints, down at odd ones, from the "
          "path image; the two directions weighted equally).",
          "- spanning: from half a step below the point to half a step above (the design before).",
          "- forward: up from the path image at every point.",
          "- central: up and down by half a step at every point (two queries per patch, so fewer points).",
          "- white-box gradients: torch gradients at the same midpoints as up/down (no queries; the ceiling of "
          "the midpoint rule with that many points).\n",
          *table(rows, "product", product, ["tuning", "table"]), "",
          *paired(rows, "product", "up/down", "spanning", ["tuning", "table"]), "",
          *per_photo(rows, "product", product),
          f"\n## Same points, unquantised images: {MECHANISM_POINTS} midpoints, step {MECHANISM_STEP} "
          "(tuning photos)\n",
          "Float images (no 8-bit rounding), so only the difference's own error is left. Central differences "
          "pay twice the queries here.\n",
          *table(rows, "mechanism", MECHANISM, ["tuning"]), "",
          *per_photo(rows, "mechanism", MECHANISM)]
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    (bench.RESULTS / "ig_steps.md").write_text("\n".join(md) + "\n")
    (bench.RESULTS / "ig_steps.json").write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {bench.RESULTS / 'ig_steps.md'} and .json ({len(rows)} rows)")


if __name__ == "__main__":
    main()
