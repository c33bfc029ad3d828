"""Saliency benchmark: the library's default map against its peers at equal query budgets.

Real photos that ship inside installed packages, the embedded EfficientNet-Lite0 (ONNX runtime),
target = the top-1 class, one blurred copy as the baseline for every method. Each map is judged
by deletion and insertion AUC (the target's probability while the 14x14 cells are removed into /
inserted from the blurred copy, most salient first), by the rank correlation of its 14x14 cell
map between two seeds, and by its rank correlation with white-box Integrated Gradients on the
same cells and baseline (torch autograd on the model's twin). Means come with 95% t-intervals
over photos (:mod:`benchmarks.harness`).

Quality (any time; runs in parts, one part file per photo under the git-ignored
benchmarks/parts/saliency/, merged at the end):

    python -m benchmarks.saliency --photos coffee chelsea      # parts for these photos
    python -m benchmarks.saliency                              # every table photo (resumes parts)
    python -m benchmarks.saliency --combine                    # parts -> results/saliency.{md,json}
    python -m benchmarks.saliency --set tuning                 # candidates on the tuning photos
    python -m benchmarks.saliency --set tuning --combine       # -> results/saliency.tuning.{md,json}

Check (after a change to the library): rerun some rows into a scratch folder and compare them
with the rows stored in results/saliency{,.tuning}.json; exit status 1 if any differs:

    python -m benchmarks.saliency --photos coffee --budgets 250 --check

Timing (only on an idle machine: queries/s, library overhead, the demo's seconds):

    python -m benchmarks.saliency --timing                     # -> results/saliency.timing.{md,json}

Peers (see peers.py): RISE, occlusion, KernelSHAP, LIME (Captum's sparse default and ridge),
HSIC attribution and Sobol attribution. Every method's model evaluations are counted and held to
the budget; answers are cached per image, so a method's smaller budgets replay the first queries
of its largest run without paying again (the maps are those of separate runs).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import peers
from benchmarks.harness import PARTS as ALL_PARTS, RESULTS, fmt, mean_ci, paired, show
from blackbox import PatchGrid, deletion_insertion, make_baseline, saliency, spearman
from blackbox.paths import cache_dir
from blackbox.sample_images import SAMPLE_IMAGES, load_sample
from blackbox.saliency import METHODS, PRIOR_QUERIES, SPACES, Saliency, defaults, prior_weight
from blackbox.saliency.focus import SHARE as FOCUS_SHARE, first_stage
from blackbox.saliency.path_steps import DESIGN as IG_STEPS_DESIGN
PARTS = ALL_PARTS / "saliency"
# the 7 photos bundled by blackbox.sample_images plus scikit-image's stereo motorcycle (left view)
TABLE_PHOTOS = [*SAMPLE_IMAGES, "motorcycle"]
# photos that chose the default, kept out of the table: scikit-image's cameraman (a tripod),
# coins, a wall clock, the Hubble deep field and a stained tissue slide (immunohistochemistry),
# and matplotlib's photo of a blue gift pack (real photos; the first three are greyscale)
TUNING_PHOTOS = ["camera", "coins", "clock", "hubble_deep_field", "ihc", "gift_pack"]
BUDGETS = [250, 500, 1000, 4000]
TARGET_BUDGETS = [250, 500, 1000]
SEED_BUDGET = 1000  # the budget at which two seeds are compared
METRIC_CELLS = 14
BATCH = 64
DEFAULT = "default"
WHITEBOX = "white-box IG (torch autograd, reference)"
IG_STEPS = "ig-steps mask g14 lr (one-patch steps on the path; not the default)"
FOCUS = f"the default + focus {FOCUS_SHARE} (top cells re-measured among themselves; opt-in)"
LIME_RIDGE = "LIME g14 (ridge)"
LIME_LOGP = "LIME g14 (ridge) on log p, the default's score"  # the control row: LIME-ridge on the default's score


def load_photo(name: str) -> np.ndarray:
    """A real photo from an installed package as uint8 (H, W, 3)."""
    if name in SAMPLE_IMAGES:
        return load_sample(name)
    if name == "gift_pack":
        import matplotlib.cbook
        from PIL import Image

        with Image.open(matplotlib.cbook.get_sample_data("Minduka_Present_Blue_Pack.png")) as img:
            return np.asarray(img.convert("RGB"))
    from skimage import data

    if name == "ihc":
        return data.immunohistochemistry()

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]


def library_default() -> dict:
    """The keyword defaults of blackbox.saliency() that shape a map."""
    keys = ("method", "space", "estimator", "grid", "blocks", "sigma", "smoothness", "noise", "refine", "focus")
    return {k: v for k, v in defaults().items() if k in keys}


def describe(options: dict, budget: int | None = None) -> str:
    """The settings in full; at a ``budget`` where the smoothness prior has faded (above
    ``PRIOR_QUERIES``), the smoothness the fit used there too."""
    o = {**library_default(), **options}
    method = o["method"] or SPACES[o["space"]].default_method
    estimator = o["estimator"] or Saliency.from_options(method=method, space=o["space"]).estimator.name
    text = f"{method} {o['space']} g{o['grid']} {estimator}"
    if estimator == "ridge":
        text += f" smooth {'gcv' if o['smoothness'] is None else o['smoothness']}"
        # the queries the fit reads: with focus, its stage 1 only
        fitted = first_stage(budget, o["grid"] ** 2, o["focus"] or 0.0) if budget is not None else None
        faded = prior_weight(o["smoothness"], fitted) if budget is not None else o["smoothness"]
        if faded != o["smoothness"]:
            text += f" (faded to {faded:g} at {budget} queries)" if fitted == budget else \
                f" (faded to {faded:g} at stage 1's {fitted} queries)"
    if o.get("sigma") is not None:
        text += f" s{o['sigma']}"
    noise = o.get("noise") or METHODS[method].noise
    if noise != "gaussian":
        text += f" {noise}"
    if o.get("refine"):
        text += " coarse-to-fine"
    if o.get("focus"):
        text += f" focus {o['focus']}"  # the top cells re-measured among themselves (opt-in)
    if method == "ig-steps":
        text += f" {IG_STEPS_DESIGN}"  # the difference it takes (before "up/down": spanning each point)
    return text


def table_specs() -> list[dict]:
    both = {SEED_BUDGET: [0, 1]}
    return [
        {"name": DEFAULT, "kind": "lr", "options": {}, "seeds": both},
        {"name": "LR mean over the default's queries", "kind": "lr", "options": {"estimator": "lr"}},
        {"name": FOCUS, "kind": "lr", "options": {"focus": FOCUS_SHARE}, "seeds": both},
        {"name": "previous default: banzhaf mask g14 ridge smooth 0.3 (random halves)", "kind": "lr",
         "options": {"method": "banzhaf", "noise": "rademacher", "smoothness": 0.3}, "seeds": both},
        {"name": "first default: ig mask g14 lr", "kind": "lr",
         "options": {"method": "ig", "estimator": "lr", "grid": 14}, "budgets": TARGET_BUDGETS},
        {"name": IG_STEPS, "kind": "lr", "options": {"method": "ig-steps", "estimator": "lr"}, "seeds": both},
        {"name": "RISE 7x7", "kind": "rise", "seeds": both},
        {"name": "occlusion (finest grid in budget)", "kind": "occlusion"},
        {"name": "KernelSHAP g14", "kind": "kernelshap", "seeds": both},
        {"name": "LIME g14 (lasso, Captum default)", "kind": "lime"},
        {"name": LIME_RIDGE, "kind": "lime-ridge", "seeds": both},
        # the same samples read on the default's score: separates the score from the method
        {"name": LIME_LOGP, "kind": "lime-ridge", "score": "logp", "seeds": both},
        {"name": "HSIC g8", "kind": "hsic"},
        {"name": "Sobol (Jansen, finest grid in budget)", "kind": "sobol"},
    ]


CANDIDATES = [  # the tuning sweep (mask space); estimator variants reuse the same queries for free
    {"method": "ig", "estimator": "ridge", "grid": 14, "smoothness": 0.3},
    {"method": "banzhaf", "estimator": "lr", "grid": 14, "noise": "rademacher"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 0.1, "noise": "rademacher"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 0.3, "noise": "rademacher"},
    {"method": "banzhaf", "estimator": "lr", "grid": 14, "noise": "hadamard"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": None, "noise": "hadamard"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 0.03, "noise": "hadamard"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 0.1, "noise": "hadamard"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 0.3, "noise": "hadamard"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 1.0, "noise": "hadamard"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 10, "smoothness": 0.1, "noise": "hadamard"},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 0.1, "noise": "hadamard", "refine": True},
    {"method": "banzhaf", "estimator": "ridge", "grid": 14, "smoothness": 0.1, "noise": "hadamard", "focus": FOCUS_SHARE},
    # Integrated Gradients in steps (for agreement with white-box IG): its step and estimator
    {"method": "ig-steps", "estimator": "lr", "grid": 14, "sigma": 0.025},
    {"method": "ig-steps", "estimator": "lr", "grid": 14, "sigma": 0.05},
    {"method": "ig-steps", "estimator": "lr", "grid": 14, "sigma": 0.1},
    {"method": "ig-steps", "estimator": "ridge", "grid": 14, "smoothness": 0.1, "sigma": 0.05},
]


def tuning_specs() -> list[dict]:
    both = {SEED_BUDGET: [0, 1]}
    out = [{"name": describe(c), "kind": "lr", "options": c, "seeds": both, "budgets": TARGET_BUDGETS}
           for c in CANDIDATES]
    return out + [dict(s, budgets=TARGET_BUDGETS) for s in table_specs()
                  if s["kind"] not in ("lr",)]


def compute_map(spec: dict, oracle: peers.Oracle, image, baseline, budget: int, seed: int) -> np.ndarray:
    kind = spec["kind"]
    if kind == "lr":
        return saliency(oracle.logp, image, queries=budget, seed=seed, batch_size=BATCH, **spec["options"]).map
    if kind == "rise":
        return peers.rise(oracle.prob, image, baseline, budget, seed=seed, batch=BATCH)
    if kind == "hsic":
        return peers.hsic(oracle.prob, image, baseline, budget, seed=seed, batch=BATCH)
    if kind == "sobol":
        return peers.sobol(oracle.prob, image, baseline, budget, seed=seed, batch=BATCH)
    grid = peers.occlusion_grid(budget, min(image.shape[:2])) if kind == "occlusion" else METRIC_CELLS
    score = oracle.logp if spec.get("score") == "logp" else oracle.prob
    return peers.captum_map(kind, score, image, baseline, budget, grid, seed=seed, batch=BATCH)


class Photo:
    """One photo as the model sees it, its target, baseline and white-box reference maps."""

    def __init__(self, name: str, model):
        image = load_photo(name)
        self.name = name
        self.work = model.view(*image.shape[:2]).to_working(image)
        self.target = model.resolve_target(None, self.work)
        self.oracle = peers.Oracle(model, self.target.index,
                                   store=cache_dir("benchmarks") / f"answers-{name}-{self.target.index}.npz")
        self.baseline = make_baseline(self.work)
        self.cells = PatchGrid(self.work.shape[0], self.work.shape[1], METRIC_CELLS)
        path = cache_dir("benchmarks") / f"whitebox32-{name}-{self.target.index}.npz"
        if not path.exists():
            np.savez(path, **peers.whitebox_maps(model.reference, self.work, self.baseline, self.target.index))
        self.whitebox_maps = dict(np.load(path))
        self.whitebox = {k: self.pooled(v) for k, v in self.whitebox_maps.items()}

    def pooled(self, saliency_map) -> np.ndarray:
        return self.cells.pool(np.asarray(saliency_map, dtype=np.float64)[None, :, :, None])[0, :, :, 0]

    def paid_map(self, spec: dict, budget: int, seed: int) -> np.ndarray:
        """``compute_map`` of this photo from a fresh count, checked to have spent at most ``budget``."""
        self.oracle.reset()
        sal = compute_map(spec, self.oracle, self.work, self.baseline, budget, seed)
        assert self.oracle.evals <= budget, f"{spec.get('name', spec['kind'])} spent {self.oracle.evals} > {budget}"
        return sal

    def judge(self, saliency_map) -> dict:
        f = deletion_insertion(self.oracle.prob, self.work, saliency_map, self.baseline, cells=METRIC_CELLS,
                               steps=28, batch_size=BATCH)
        cells = self.pooled(saliency_map)
        return {"deletion": round(f.deletion_auc, 5), "insertion": round(f.insertion_auc, 5),
                "rho_ig": round(spearman(cells, self.whitebox["ig"]), 4),
                "rho_gradient": round(spearman(cells, self.whitebox["gradient"]), 4),
                "cells": np.round(cells, 7).tolist()}


def config_of(spec: dict, budget: int) -> str:
    """What a row measured: the library's settings in full at its budget (so rows of a changed
    default are stale), or the peer's kind (and score, when not the probability)."""
    if spec["kind"] == "lr":
        return describe(spec["options"], budget)
    return spec["kind"] + (" on log p" if spec.get("score") == "logp" else "")


def is_current(row: dict, specs: dict) -> bool:
    """A part-file row still measures its spec (rows from before configs were kept: peers only)."""
    spec = specs.get(row["method"])
    if spec is None:
        return row["method"] == WHITEBOX
    return row.get("config", None if spec["kind"] == "lr" else spec["kind"]) == config_of(spec, row["budget"])


def run_photo(name: str, model, specs: list[dict], budgets: list[int], part: Path, log) -> None:
    rows = json.loads(part.read_text()) if part.exists() else []
    by_name = {spec["name"]: spec for spec in specs}
    rows = [r for r in rows if r["method"] not in by_name or is_current(r, by_name)]  # stale rows are redone
    done = {(r["method"], r["budget"], r["seed"]) for r in rows}
    photo = Photo(name, model)
    log(f"[{name}] target {photo.target.label!r} p={float(photo.oracle.prob(photo.work[None])[0]):.3f}")
    if (WHITEBOX, 0, 0) not in done:  # the reference itself, judged the same way (budget 0: no queries)
        rows.append({"photo": name, "target": photo.target.label, "method": WHITEBOX, "budget": 0, "seed": 0,
                     "queries": 0, "seconds": 0.0, **photo.judge(photo.whitebox_maps["ig"])})
    for spec in specs:
        for budget in sorted((b for b in spec.get("budgets", BUDGETS) if b in budgets), reverse=True):
            for seed in spec.get("seeds", {}).get(budget, [0]):
                if (spec["name"], budget, seed) in done:
                    continue
                t0 = time.perf_counter()
                sal = photo.paid_map(spec, budget, seed)
                wall = time.perf_counter() - t0
                row = {"photo": name, "target": photo.target.label, "method": spec["name"],
                       "config": config_of(spec, budget),
                       "budget": budget, "seed": seed, "queries": photo.oracle.evals, "seconds": round(wall, 2),
                       **photo.judge(sal)}
                rows.append(row)
                part.write_text(json.dumps(rows))  # every row at once: an interrupted run keeps its work
                photo.oracle.save()
                log(f"[{name}] {spec['name'][:52]:<52} {budget:>5}q s{seed} del {row['deletion']:.4f} "
                    f"ins {row['insertion']:.4f} rho_ig {row['rho_ig']:+.2f} ({wall:.0f}s)")


# ---------------------------------------------------------------- summaries
def seed_pairs(rows: list[dict], method: str, budget: int) -> list[float]:
    by = {(r["photo"], r["seed"]): r["cells"] for r in rows if r["method"] == method and r["budget"] == budget}
    return [spearman(by[(p, 0)], by[(p, 1)]) for (p, s) in by if s == 0 and (p, 1) in by]


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = dict.fromkeys((r["method"], r["budget"]) for r in rows)
    for method, budget in keys:
        rs = [r for r in rows if r["method"] == method and r["budget"] == budget and r["seed"] == 0]
        out.append({"method": method, "budget": budget, "photos": len(rs),
                    **{k: mean_ci([r[k] for r in rs]) for k in ("deletion", "insertion", "rho_ig")},
                    "seed_rho": mean_ci(seed_pairs(rows, method, budget))})
    out.sort(key=lambda s: (s["budget"], s["deletion"][0]))
    return out


def summary_table(summary: list[dict]) -> str:
    lines = ["| budget | method | photos | deletion AUC (lower better) | insertion AUC (higher better) "
             "| rho vs white-box IG | seed-to-seed rho |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['budget']} | {s['method']} | {s['photos']} | {show(s['deletion'], 4)} | "
                     f"{show(s['insertion'], 4)} | {show(s['rho_ig'], 2)} | {show(s['seed_rho'], 2)} |")
    return "\n".join(lines)


def runs_by_photo(rows: list[dict], method: str, budget: int, seeds: tuple[int, ...]) -> dict:
    """``{photo: {seed: row}}`` for the photos that have a row for every one of ``seeds``."""
    got: dict = {}
    for r in rows:
        if r["method"] == method and r["budget"] == budget and r["seed"] in seeds:
            got.setdefault(r["photo"], {})[r["seed"]] = r
    return {p: v for p, v in got.items() if len(v) == len(seeds)}


def target_check(rows: list[dict], default: str, mine_label: str = "default") -> str:
    """One method (the default) against every other, paired by photo: mean difference with its
    interval."""
    me = mine_label
    lines = [f"| budget | peer | deletion: {me} - peer | {me} lower on | insertion: {me} - peer "
             f"| {me} higher on |", "|---|---|---|---|---|---|"]

    def by_photo(method: str, budget: int, seeds: tuple[int, ...]) -> dict:
        """Per photo, deletion and insertion averaged over ``seeds`` (photos with all of them)."""
        return {p: np.mean([(r["deletion"], r["insertion"]) for r in v.values()], axis=0)
                for p, v in runs_by_photo(rows, method, budget, seeds).items()}

    for b in TARGET_BUDGETS:
        others = dict.fromkeys(r["method"] for r in rows if r["budget"] == b and r["method"] != default)
        for seeds in ((0,), (0, 1)) if b == SEED_BUDGET else ((0,),):
            mine = by_photo(default, b, seeds)
            for peer in others:
                theirs = by_photo(peer, b, seeds)
                common = [p for p in mine if p in theirs]
                if not common:
                    continue
                dd = [mine[p][0] - theirs[p][0] for p in common]
                di = [mine[p][1] - theirs[p][1] for p in common]
                label = peer if len(seeds) == 1 else f"{peer} (both maps averaged over seeds 0 and 1)"
                lines.append(f"| {b} | {label} | {paired(dd)} "
                             f"| {fmt(di, 4)} | {sum(d > 0 for d in di)}/{len(common)} |")
    return "\n".join(lines)


SELECTION_RULE = (
    f"Every candidate against the default at {SEED_BUDGET} queries, paired by photo (deletion and insertion "
    "averaged over seeds 0 and 1, seed-to-seed rho per photo; 95% t-intervals). A candidate would "
    "replace the default only if it deletes faster beyond the noise (the interval of the paired difference "
    "below 0) while neither its insertion nor its stability is lower beyond the noise (both intervals reach 0).")


def selection(rows: list[dict], default: str, candidates: list[str]) -> str:
    """The tuning rule with its noise (:data:`SELECTION_RULE`): a table of every candidate
    against the default and the verdict."""
    def stats(method: str) -> dict:
        """Per photo: deletion and insertion averaged over seeds 0 and 1, and their rank correlation."""
        return {p: (np.mean([runs[s]["deletion"] for s in (0, 1)]), np.mean([runs[s]["insertion"] for s in (0, 1)]),
                    spearman(runs[0]["cells"], runs[1]["cells"]))
                for p, runs in runs_by_photo(rows, method, SEED_BUDGET, (0, 1)).items()}

    mine = stats(default)
    lines = ["| candidate | deletion: candidate - default | insertion: candidate - default "
             "| seed-to-seed rho: candidate - default | verdict |", "|---|---|---|---|---|"]
    for name in (c for c in candidates if c != default):
        theirs = stats(name)
        common = [p for p in mine if p in theirs]
        if not common:
            continue
        diff = [mean_ci([theirs[p][k] - mine[p][k] for p in common]) for k in range(3)]
        high = [m + h for m, h in diff]  # the upper end of each paired difference's interval
        reasons = ([] if high[0] < 0 else ["deletes no faster beyond the noise"]) + \
                  ([] if high[1] >= 0 else ["inserts worse"]) + ([] if high[2] >= 0 else ["less stable"])
        verdict = "would replace the default" if not reasons else "; ".join(reasons)
        lines.append(f"| {name} | {show(diff[0], 4)} | {show(diff[1], 4)} | {show(diff[2], 2)} | {verdict} |")
    return "\n".join(lines)


def per_photo(rows: list[dict], key: str, budgets) -> str:
    photos = list(dict.fromkeys(r["photo"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = []
    for b in budgets:
        lines += [f"\n{key} per photo at {b} queries:\n", "| method | " + " | ".join(photos) + " |",
                  "|---|" + "---|" * len(photos)]
        for m in methods:
            vals = {r["photo"]: r[key] for r in rows if r["method"] == m and r["budget"] == b and r["seed"] == 0}
            if vals:
                lines.append(f"| {m} | " + " | ".join(f"{vals[p]:.4f}" if p in vals else "-" for p in photos) + " |")
    return "\n".join(lines)


def stem_of(which: str) -> str:
    return "saliency" if which == "table" else f"saliency.{which}"


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def check(which: str, names: list[str], model, specs: list[dict], budgets: list[int], log) -> int:
    """Rerun ``names`` x ``specs`` x ``budgets`` into a scratch folder and compare every row with
    the row stored in ``results/<stem>.json`` (all it measured but the seconds): 1 if any differs."""
    key = lambda r: (r["photo"], r["method"], r["budget"], r["seed"])  # noqa: E731
    stored = {key(r): r for r in json.loads((RESULTS / f"{stem_of(which)}.json").read_text())["rows"]}
    fresh = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            part = Path(tmp) / f"{which}-{name}.json"
            run_photo(name, model, specs, budgets, part, log)
            fresh += json.loads(part.read_text())
    by_name = {spec["name"]: spec for spec in specs}
    differ = 0
    for r in fresh:
        old = stored.get(key(r))
        if old is None:
            bad = ["not stored"]
        else:  # a stored config is compared as is_current reads it (peer rows may predate configs)
            bad = [] if is_current(old, by_name) else [f"config {old.get('config')} -> {r.get('config')}"]
            bad += [f"{k} {old.get(k)} -> {r[k]}" for k in r
                    if k not in ("seconds", "cells", "config") and not same(old.get(k), r[k])]
        differ += bool(bad)
        log(f"{'DIFFERS' if bad else 'same':8} {r['photo']} {r['method'][:60]} {r['budget']}q s{r['seed']}"
            + (": " + "; ".join(bad) if bad else ""))
    log(f"{len(fresh) - differ} of {len(fresh)} rows identical to {RESULTS / stem_of(which)}.json")
    return int(differ > 0)


def combine(which: str, log) -> None:
    specs = {spec["name"]: spec for spec in (table_specs() if which == "table" else tuning_specs())}
    rows = []
    for part in sorted(PARTS.glob(f"{which}-*.json")):
        rows += [r for r in json.loads(part.read_text()) if is_current(r, specs)]  # what today's specs measure
    if not rows:
        raise SystemExit(f"no part files for {which!r} under {PARTS}: run `python -m benchmarks.saliency"
                         f"{' --set ' + which if which != 'table' else ''}` first (they are not in git)")
    photos = list(dict.fromkeys(r["photo"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    stem = stem_of(which)
    summary = summarise(rows)
    default = describe({})
    md = [f"# Saliency benchmark ({which})\n",
          f"Model efficientnet-lite0 (embedded, ONNX runtime), target = the top-1 class; photos: "
          f"{', '.join(photos)}. Written by `python -m benchmarks.saliency{' --set ' + which if which != 'table' else ''}"
          f" --combine` from the part files under `benchmarks/parts/saliency/` (git-ignored; the script rebuilds "
          "them).\n",
          f"- `default` is the library's default map: `{default}` (blackbox.saliency's keyword defaults; above "
          f"{PRIOR_QUERIES} queries every ridge row's smoothness fades as S x {PRIOR_QUERIES} / N).",
          "- Deletion / insertion: the target's softmax probability while the 14x14 cells are removed into "
          "(inserted from) the blurred copy, most salient first (cells ranked by the map's mean over each cell); "
          "AUC on a normalised axis, 29 points per curve.",
          "- rho vs white-box IG: Spearman correlation over the 14x14 cells with Integrated Gradients by torch "
          "autograd (32 midpoint path points from the same blurred baseline, removal convention "
          "grad . (x - baseline) summed per cell).",
          f"- seed-to-seed rho: Spearman correlation of the 14x14 cell maps of seeds 0 and 1 (at {SEED_BUDGET} "
          "queries, where measured).",
          "- Intervals: 95% Student-t intervals of the mean over photos, mean ± half-width.",
          "- Peers: RISE (7x7 masks, p = 0.5, own implementation), occlusion / KernelSHAP / LIME from Captum on "
          "the same 14x14 cells (occlusion on the finest grid its budget allows), HSIC (8x8) and Sobol "
          "(finest grid with >= 8 designs) written from their papers. Peers explain the probability, the "
          "library's maps the log-probability (its default score); one LIME-ridge row reads the same samples "
          "on the log-probability, to separate the score from the method. All use the same blurred baseline.\n",
          "## Means over photos\n", summary_table(summary),
          *(["\n## Target check: the default against every peer, paired by photo\n", target_check(rows, DEFAULT),
             f"\n## The opt-in `focus={FOCUS_SHARE}` against every other row, paired by photo\n",
             target_check(rows, FOCUS, "focus")] if which == "table" else
            [f"\n## Choosing the default: every candidate against it at {SEED_BUDGET} queries, paired by photo\n",
             SELECTION_RULE + "\n",
             selection(rows, default, [describe(c) for c in CANDIDATES])]),
          per_photo(rows, "deletion", budgets), per_photo(rows, "insertion", budgets),
          per_photo(rows, "rho_ig", budgets)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    slim = [{k: v for k, v in r.items() if k != "cells"} for r in rows]
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"default": default, "photos": photos, "summary": summary, "rows": slim}, indent=1))
    log(f"wrote {RESULTS / stem}.md and .json ({len(rows)} rows)")


# ---------------------------------------------------------------- timing (idle machine only)
def timing(model, log) -> None:
    """Queries/s and library overhead at 1000 queries (no cache), and the demo command's seconds."""
    rows = []
    for name in ("coffee", "chelsea"):
        photo = Photo(name, model)
        oracle = peers.Oracle(model, photo.target.index, cache=False)
        for spec in table_specs():
            if spec["kind"] == "lr" and spec["name"] != DEFAULT:
                continue
            oracle.reset()
            t0 = time.perf_counter()
            compute_map(spec, oracle, photo.work, photo.baseline, SEED_BUDGET, 0)
            wall = time.perf_counter() - t0
            rows.append({"photo": name, "method": spec["name"], "queries": oracle.evals, "seconds": round(wall, 2),
                         "queries_per_s": round(oracle.evals / wall, 1),
                         "overhead": round(1 - oracle.model_seconds / wall, 4)})
            log(f"[{name}] {spec['name']:<44} {rows[-1]['queries_per_s']:6.1f} q/s overhead {rows[-1]['overhead']:.1%}")
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        Image.fromarray(load_sample("coffee")).save(f"{tmp}/coffee.png")
        cli = [str(Path(sys.executable).with_name("blackbox")), "saliency", f"{tmp}/coffee.png", "--queries", "1000",
               "--out", f"{tmp}/out.png", "--save-map", f"{tmp}/map.npy", "--json", "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.run(cli, capture_output=True, text=True, check=True)
        demo = {"wall_seconds": round(time.perf_counter() - t0, 2), **json.loads(proc.stdout.strip().splitlines()[-1])}
    log(f"demo: {demo['wall_seconds']} s wall, {demo['seconds']} s in the command, overhead {demo['overhead']:.1%}")
    md = ["# Saliency timing (idle machine)\n", "Written by `python -m benchmarks.saliency --timing`: 1000 queries per "
          "map, no answer cache; overhead = share of wall time outside the model's forward pass.\n",
          "| photo | method | queries | seconds | queries/s | overhead |", "|---|---|---|---|---|---|"]
    md += [f"| {r['photo']} | {r['method']} | {r['queries']} | {r['seconds']} | {r['queries_per_s']} | "
           f"{r['overhead']:.1%} |" for r in rows]
    md += [f"\n`blackbox saliency coffee.png --queries 1000 --out ... --save-map ...` (what `make demo` runs): "
           f"{demo['wall_seconds']} s wall including start-up, {demo['seconds']} s reported by the command, "
           f"library overhead {demo['overhead']:.1%} (the share of the saliency run outside the model)."]
    (RESULTS / "saliency.timing.md").write_text("\n".join(md) + "\n")
    (RESULTS / "saliency.timing.json").write_text(json.dumps({"rows": rows, "demo": demo}, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", choices=("table", "tuning"), default="table",
                   help="table: the benchmark photos and peers; tuning: default candidates on the tuning photos")
    p.add_argument("--photos", nargs="+", help="only these photos (one part file each)")
    p.add_argument("--budgets", nargs="+", type=int, default=BUDGETS)
    p.add_argument("--only", nargs="+", help="only methods whose name contains one of these")
    p.add_argument("--combine", action="store_true", help="merge the part files into the tables")
    p.add_argument("--timing", action="store_true", help="timing part (run alone on an idle machine)")
    p.add_argument("--check", action="store_true",
                   help="rerun the selected rows into a scratch folder and compare them with the stored rows")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    log = lambda s: print(f"{time.perf_counter() - t0:7.1f}s {s}", flush=True)  # noqa: E731
    if args.combine:
        return combine(args.set, log)
    from blackbox.adapters import load_image_model

    model = load_image_model()
    model.batch_size = BATCH
    if args.timing:
        return timing(model, log)
    specs = table_specs() if args.set == "table" else tuning_specs()
    if args.only:
        specs = [s for s in specs if any(o.lower() in s["name"].lower() for o in args.only)]
    names = args.photos or (TABLE_PHOTOS if args.set == "table" else TUNING_PHOTOS)
    if args.check:
        return check(args.set, names, model, specs, args.budgets, log)
    PARTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        run_photo(name, model, specs, args.budgets, PARTS / f"{args.set}-{name}.json", log)


if __name__ == "__main__":
    sys.exit(main())
