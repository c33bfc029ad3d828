"""Saliency benchmark: black-box LR saliency against RISE, occlusion, KernelSHAP and LIME.

Real photos bundled in packages, the embedded EfficientNet-Lite0 (ONNX runtime), target = the
top-1 class, equal query budgets. Every map is judged by deletion / insertion AUC (the target's
probability while 14x14 cells are removed into / inserted from a blurred copy, most salient
first), by its per-cell agreement with white-box maps from torch autograd on the twin model, by
queries per second and by the share of wall time spent outside the model's forward pass.

    python benchmarks/saliency.py              # the full table -> benchmarks/results/saliency.{md,json}
    python benchmarks/saliency.py --quick      # tuning sweep on 2 held-out photos at 1000 queries
    python benchmarks/saliency.py --budgets 4000 --merge   # add a column to the saved results

Peers run through Captum on the same network (the ONNX export of the torch twin, 5x faster than
eager torch on this CPU) with the same grid cells as feature mask and the blurred copy as
baseline; every method's model evaluations are counted and held to the budget.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import Oracle, captum_map, rise, whitebox_maps  # noqa: E402

from blackbox import make_baseline, saliency  # noqa: E402
import importlib  # noqa: E402

_sal_module = importlib.import_module("blackbox.saliency")
from blackbox.image_spaces import PatchGrid  # noqa: E402
from blackbox.images import as_float_image  # noqa: E402
from blackbox.paths import cache_dir  # noqa: E402
from blackbox.metrics import cosine, deletion_insertion, spearman  # noqa: E402
from blackbox.sample_images import load_sample  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAIN_PHOTOS = ["coffee", "chelsea", "rocket", "china", "flower"]
SWEEP_PHOTOS = ["astronaut", "grace_hopper"]  # held out from the main table
METRIC_CELLS = 14
BATCH = 64


def library_default() -> dict:
    sig = inspect.signature(saliency).parameters
    space = sig["space"].default
    grid = sig["grid"].default
    return {"kind": "lr", "method": sig["method"].default, "space": space,
            "grid": grid if isinstance(grid, int) else grid[0], "blocks": sig["blocks"].default,
            "sigma": _sal_module.SPACES[space].default_sigma}


def lr_name(c: dict) -> str:
    name = f"LR {c['space']} {c['method']} g{c['grid']} s{c['sigma']:g}"
    return name + (f" K{c['blocks']}" if c.get("blocks", 1) > 1 else "")


def main_methods(default: dict) -> list[dict]:
    g = default["grid"]
    pixel = dict(default, space="pixel", method="vanilla", sigma=_sal_module.SPACES["pixel"].default_sigma)
    return [
        dict(default, name="LR default: " + lr_name(default), budgets=[250, 1000, 4000]),
        {"kind": "rise", "name": "RISE s7", "budgets": [250, 1000, 4000]},
        {"kind": "occlusion", "name": "occlusion (finest grid in budget)", "budgets": [250, 1000]},
        {"kind": "kernelshap", "name": f"KernelSHAP g{g}", "grid": g, "budgets": [250, 1000]},
        {"kind": "lime", "name": f"LIME g{g}", "grid": g, "budgets": [250, 1000]},
        dict(pixel, name=lr_name(pixel), budgets=[250, 1000]),
        dict(default, blocks=4, name=lr_name(dict(default, blocks=4)), budgets=[250, 1000]),
    ]


def sweep_methods() -> list[dict]:
    out = []
    for method, space, grid, sigma, blocks in [
        ("ig", "mask", 14, 0.3, 1), ("ig", "mask", 14, 0.15, 1),
        ("ig", "mask", 10, 0.3, 1), ("ig", "mask", 7, 0.3, 1), ("vanilla", "mask", 14, 0.3, 1),
        ("smoothgrad", "mask", 14, 0.3, 1), ("vanilla", "pixel", 14, 0.1, 1),
    ]:
        c = {"kind": "lr", "method": method, "space": space, "grid": grid, "sigma": sigma, "blocks": blocks}
        out.append(dict(c, name=lr_name(c), budgets=[1000]))
    out.append({"kind": "rise", "name": "RISE s7", "budgets": [1000]})
    return out


def compute_map(spec: dict, oracle: Oracle, image, baseline, budget: int, seed: int):
    """Returns (map, extra-info dict)."""
    if spec["kind"] == "lr":
        r = saliency(oracle.logp, image, queries=budget, method=spec["method"], space=spec["space"],
                     grid=spec["grid"], blocks=spec.get("blocks", 1), sigma=spec["sigma"], seed=seed,
                     batch_size=BATCH)
        return r.map, {"lib_overhead": round(r.overhead, 4)}
    if spec["kind"] == "rise":
        return rise(oracle.prob, image, baseline, budget, s=7, seed=seed, batch=BATCH), {}
    sal, grid = captum_map(spec["kind"], oracle.prob, image, baseline, budget, spec.get("grid", 14),
                           seed=seed, batch=BATCH)
    return sal, {"grid": grid}


def pooled(m, cells):
    return cells.pool(np.asarray(m, dtype=np.float64)[None, :, :, None])[0, :, :, 0]


def run_photo(photo, model, specs, budgets, steps, seed, log):
    image = as_float_image(load_sample(photo))
    work = model.view(*image.shape[:2]).to_working(image)
    target = model.resolve_target(None, work)
    oracle = Oracle(model, target.index)
    base = make_baseline(work)
    cells = PatchGrid(work.shape[0], work.shape[1], METRIC_CELLS)
    t0 = time.perf_counter()
    cache = cache_dir("benchmarks") / f"whitebox-{photo}-{target.index}-{seed}.npz"
    if cache.exists():
        wb = dict(np.load(cache))
    else:
        wb = whitebox_maps(model.reference, work, base, target.index, seed=seed)
        np.savez(cache, **wb)
    log(f"[{photo}] target {target.label!r} p={float(oracle.prob(work[None])[0]):.3f}; white-box maps "
        f"{time.perf_counter() - t0:.1f}s")
    wb_cells = {k: pooled(v, cells) for k, v in wb.items()}
    rows = []

    def judge(sal):
        f = deletion_insertion(oracle.prob, work, sal, base, cells=METRIC_CELLS, steps=steps, batch_size=BATCH)
        c = pooled(sal, cells)
        agree = {f"rho_{k}": round(spearman(c, v), 4) for k, v in wb_cells.items()}
        agree["cos_ig"] = round(cosine(c, wb_cells["ig"]), 4)
        return {"deletion": round(f.deletion_auc, 5), "insertion": round(f.insertion_auc, 5), **agree}

    for name in ("gradient", "smoothgrad", "ig"):
        rows.append({"photo": photo, "target": target.label, "method": f"white-box {name} (torch autograd)",
                     "budget": None, **judge(wb[name])})
    for spec in specs:
        for budget in sorted((b for b in spec["budgets"] if b in budgets), reverse=True):
            oracle.reset()
            t0 = time.perf_counter()
            sal, extra = compute_map(spec, oracle, work, base, budget, seed)
            wall = time.perf_counter() - t0
            spent, forwards, model_s, harness = oracle.evals, oracle.forwards, oracle.model_seconds, oracle.harness_seconds
            assert spent <= budget, f"{spec['name']} spent {spent} > {budget}"
            # a real speed measurement only if (nearly) every query reached the model; the model time
            # of the few cached repeats (e.g. the unperturbed image) is added back at the measured rate
            timed = forwards >= 0.95 * spent
            model_s = model_s * spent / max(forwards, 1)
            row = {"photo": photo, "target": target.label, "method": spec["name"], "budget": budget,
                   "queries": spent, "seconds": round(wall, 2),
                   "qps": round(spent / wall, 1) if timed else None,
                   "overhead": round(max(0.0, 1 - model_s / max(wall - harness, 1e-9)), 4) if timed else None,
                   **extra, **judge(sal)}
            rows.append(row)
            log(f"[{photo}] {spec['name']:<44} {budget:>5}q del {row['deletion']:.4f} ins {row['insertion']:.4f} "
                f"rho_ig {row['rho_ig']:+.2f} {wall:6.1f}s" + (f" ovh {row['overhead']:.1%}" if timed else " (cached)"))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    rise = {(r["photo"], r["budget"]): r["deletion"] for r in rows if r["method"].startswith("RISE")}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (method, budget), rs in groups.items():
        vs = [(r["deletion"] < rise[(r["photo"], budget)]) for r in rs if (r["photo"], budget) in rise]
        timed = [r for r in rs if r.get("qps") is not None]
        out.append({
            "method": method, "budget": budget, "photos": len(rs),
            "deletion": float(np.mean([r["deletion"] for r in rs])),
            "insertion": float(np.mean([r["insertion"] for r in rs])),
            "beats_rise": None if method.startswith("RISE") or not vs else f"{sum(vs)}/{len(vs)}",
            "rho_ig": float(np.mean([r["rho_ig"] for r in rs])),
            "rho_gradient": float(np.mean([r["rho_gradient"] for r in rs])),
            "rho_smoothgrad": float(np.mean([r["rho_smoothgrad"] for r in rs])),
            "cos_ig": float(np.mean([r["cos_ig"] for r in rs])),
            "qps": float(np.mean([r["qps"] for r in timed])) if timed else None,
            "overhead": float(np.mean([r["overhead"] for r in timed])) if timed else None,
        })
    out.sort(key=lambda s: (s["budget"] is not None, s["budget"] or 0, s["deletion"]))
    return out


def table(summary: list[dict]) -> str:
    head = ("| budget | method | photos | deletion AUC (lower better) | insertion AUC (higher better) "
            "| beats RISE on deletion | rho vs WB IG | rho vs WB grad | rho vs WB SmoothGrad | cos vs WB IG "
            "| queries/s | overhead |")
    lines = [head, "|" + "---|" * 12]
    for s in summary:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {s['budget'] or 'white-box'} | {s['method']} | {s['photos']} | {s['deletion']:.4f} "
                     f"| {s['insertion']:.4f} | {s['beats_rise'] or '-'} | {s['rho_ig']:+.2f} "
                     f"| {s['rho_gradient']:+.2f} | {s['rho_smoothgrad']:+.2f} | {s['cos_ig']:+.2f} "
                     f"| {fmt(s['qps'], '.0f')} | {fmt(s['overhead'], '.1%')} |")
    return "\n".join(lines)


def per_photo(rows: list[dict], budgets) -> str:
    photos = list(dict.fromkeys(r["photo"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["budget"] is not None))
    lines = []
    for b in budgets:
        lines += [f"\nDeletion AUC per photo at {b} queries:\n", "| method | " + " | ".join(photos) + " |",
                  "|---|" + "---|" * len(photos)]
        for m in methods:
            vals = {r["photo"]: r["deletion"] for r in rows if r["method"] == m and r["budget"] == b}
            if vals:
                lines.append(f"| {m} | " + " | ".join(f"{vals[p]:.4f}" if p in vals else "-" for p in photos) + " |")
    return "\n".join(lines)


def target_check(rows: list[dict]) -> str:
    """Default vs each peer on the photos both were measured on (paired: same photos, same budget)."""
    lines = ["| budget | peer | common photos | default deletion AUC | peer deletion AUC | default lower on |",
             "|---|---|---|---|---|---|"]
    for b in sorted({r["budget"] for r in rows if r["budget"] is not None}):
        mine = {r["photo"]: r["deletion"] for r in rows if r["method"].startswith("LR default") and r["budget"] == b}
        peers = dict.fromkeys(r["method"] for r in rows if r["budget"] == b and not r["method"].startswith("LR"))
        for peer in peers:
            theirs = {r["photo"]: r["deletion"] for r in rows if r["method"] == peer and r["budget"] == b}
            common = [ph for ph in mine if ph in theirs]
            if common:
                wins = sum(mine[ph] < theirs[ph] for ph in common)
                lines.append(f"| {b} | {peer} | {len(common)} | {np.mean([mine[ph] for ph in common]):.4f} "
                             f"| {np.mean([theirs[ph] for ph in common]):.4f} | {wins}/{len(common)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tuning sweep: 2 held-out photos, 1000 queries")
    p.add_argument("--photos", nargs="+")
    p.add_argument("--budgets", nargs="+", type=int)
    p.add_argument("--only", nargs="+", help="run only methods whose name contains one of these")
    p.add_argument("--metric-steps", type=int, default=28,
                   help="points on each deletion/insertion curve (default 28: every 7th of the 196 cells)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", action="store_true", help="merge into the saved results instead of replacing them")
    p.add_argument("--part", help="write rows to a part file (for runs in parallel processes); no table")
    p.add_argument("--combine", action="store_true", help="merge the saved results and all part files into the table")
    args = p.parse_args(argv)

    from blackbox.adapters import load_image_model

    default = library_default()
    if args.quick:
        specs, photos, budgets, stem = sweep_methods(), args.photos or SWEEP_PHOTOS, args.budgets or [1000], "saliency.sweep"
    else:
        specs, photos, budgets, stem = main_methods(default), args.photos or MAIN_PHOTOS, args.budgets or [250, 1000, 4000], "saliency"
    if args.only:
        specs = [s for s in specs if any(o.lower() in s["name"].lower() for o in args.only)]
    t0 = time.perf_counter()
    log = lambda s: print(f"{time.perf_counter() - t0:7.1f}s {s}", flush=True)  # noqa: E731
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath = RESULTS / f"{stem}.json"
    old = json.loads(jpath.read_text())["rows"] if (args.merge or args.combine) and jpath.exists() else []
    parts = cache_dir("benchmarks", "parts")
    if args.combine:
        new = []
        for part in sorted(parts.glob(f"{stem}-*.json"), key=lambda q: q.stat().st_mtime):
            rows = json.loads(part.read_text())
            keys = {(r["photo"], r["method"], r["budget"]) for r in rows}
            new = [r for r in new if (r["photo"], r["method"], r["budget"]) not in keys] + rows
        return write(args, None, default, old, new, stem, t0, log)
    model = load_image_model()
    model.batch_size = BATCH
    new = []
    for photo in photos:  # results are written after every photo, so a cut-short run keeps its work
        new += run_photo(photo, model, specs, budgets, args.metric_steps, args.seed, log)
        if args.part:
            (parts / f"{stem}-{args.part}.json").write_text(json.dumps(new, indent=1))
        else:
            write(args, model, default, old, new, stem, t0, log)


def write(args, model, default, old, new, stem, t0, log):
    jpath = RESULTS / f"{stem}.json"
    new_keys = {(r["photo"], r["method"], r["budget"]) for r in new}
    rows = [r for r in old if (r["photo"], r["method"], r["budget"]) not in new_keys] + new
    summary = summarise(rows)
    budgets_all = sorted({r["budget"] for r in rows if r["budget"] is not None})
    meta = {"model": "efficientnet-lite0", "photos": list(dict.fromkeys(r["photo"] for r in rows)),
            "library_default": default, "metric_cells": METRIC_CELLS, "metric_steps": args.metric_steps,
            "seed": args.seed, "seconds_this_run": round(time.perf_counter() - t0, 1),
            "cpu": os.cpu_count()}
    jpath.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    text = table(summary)
    print("\n" + text)
    md = [f"# Saliency benchmark{' (tuning sweep)' if args.quick else ''}\n",
          f"Model {meta['model']} (embedded, ONNX runtime), target = top-1 class, photos: {', '.join(meta['photos'])}. "
          f"Generated by `python benchmarks/saliency.py{' --quick' if args.quick else ''}` "
          f"(last run {meta['seconds_this_run']:.0f} s on {meta['cpu']} shared cores).\n",
          "- Deletion / insertion: the target's softmax probability while the 14x14 cells are removed "
          f"into (inserted from) a blurred copy, most salient first; AUC on a normalised axis, curve sampled at "
          f"{args.metric_steps + 1} points.",
          "- Agreement: Spearman rho / cosine per 14x14 cell against white-box maps from torch autograd on the "
          "twin model, all in the removal convention grad . (x - blurred) (IG from the blurred copy, "
          "SmoothGrad sigma 0.15, 16 samples each).",
          "- beats RISE: photos where the method's deletion AUC is lower than RISE's at the same budget.",
          "- queries/s and overhead (share of wall time outside the model's forward pass) come from runs whose "
          "queries were all answered by the model; a smaller budget replaying a prefix of a larger run's "
          "queries from the cache gets '-'.",
          "- LR = likelihood-ratio estimates from forward queries only (blackbox.saliency); g = grid, s = sigma, "
          "K = blocks. Peers: RISE (own implementation, 7x7 masks, p=0.5, blurred fill), occlusion / KernelSHAP / "
          "LIME from Captum with the grid cells as features and the blurred copy as baseline.",
          "- Coverage: the `photos` column says on how many photos a row was measured; rows with fewer photos "
          "were cut to fit the run time on a heavily shared 2-core machine (parts run with `--part`, merged "
          "with `--combine`). Compare means only between rows with the same photos (the per-photo tables below).\n",
          text, "\n## Target check: the default against each peer on the same photos\n", target_check(rows),
          per_photo(rows, budgets_all)]
    sweep = RESULTS / "saliency.sweep.json"
    if not args.quick and sweep.exists():
        s = json.loads(sweep.read_text())
        md += [f"\n## Tuning sweep that chose the default ({', '.join(s['meta']['photos'])}, held out from the "
               "table above)\n", table(s["summary"])]
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    log(f"wrote {jpath} and {stem}.md")


if __name__ == "__main__":
    main()
