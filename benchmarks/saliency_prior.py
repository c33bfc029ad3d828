"""Does the default map converge as the budget grows?  The smoothness prior held against faded.

The default fit is least squares with a smoothness prior between neighbouring cells. Up to
``PRIOR_QUERIES`` (1000) the prior's weight is ``smoothness`` times the data's; above, it stays as
strong as at 1000 queries (:func:`blackbox.saliency.prior_weight`), so it weakens relative to the
data and the map converges to the least-squares Banzhaf values of the cells. This script measures
that against the prior held relative to the data at every budget (the library before it faded).

* Truth, per photo: least squares without a prior over 16000 queries of the default's design
  (seed 7, independent of the maps). Its own noise is estimated from its two halves (8000 queries
  each): half the relative distance between the two half-fits.
* Maps: the default's queries at 1000, 2000 and 4000 (seeds 0 and 1), each refitted three ways
  (the same queries): held (smoothness 0.1 relative to the data), faded (the library's default)
  and no prior (smoothness 0).
* Measured against the truth: the relative error |g - truth| / |truth| of the 14x14 cell map and
  the Spearman correlation with it; per photo averaged over the two seeds, then over photos with
  95% t-intervals; faded - held paired by photo.

Answers are cached per photo (shared with benchmarks/saliency.py), so a rerun pays only for new
queries. Model efficientnet-lite0 (embedded), target = the top-1 class, blurred baseline.

    python -m benchmarks.saliency_prior             # -> results/saliency_prior.{md,json}
    python -m benchmarks.saliency_prior --combine   # rewrite the .md from the .json
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks import saliency as bench

from blackbox import saliency, spearman
from blackbox.estimators import GradientEstimate, Regression, Samples
from blackbox.saliency import PRIOR_QUERIES, prior_weight

TRUTH_QUERIES = 16000
TRUTH_SEED = 7
BUDGETS = (1000, 2000, 4000)
SEEDS = (0, 1)
SMOOTHNESS = bench.library_default()["smoothness"]
FITS = ("held", "faded (the default)", "no prior")


def fit(samples: Samples, laplacian: np.ndarray, smoothness: float, **ridge) -> np.ndarray:
    """The cell map least squares reads from ``samples`` (the library's ``ridge`` unless given)."""
    est = GradientEstimate.empty(samples.directions.shape[1])
    est.samples = samples
    return Regression(smoothness, **ridge).fit(est, laplacian)[0]


def smoothness_of(name: str, budget: int) -> float:
    return {"held": SMOOTHNESS, "faded (the default)": prior_weight(SMOOTHNESS, budget), "no prior": 0.0}[name]


def relative(g: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(g - truth) / np.linalg.norm(truth))


def rows_for(photo, which: str) -> list[dict]:
    laplacian = photo.cells.laplacian()
    run = saliency(photo.oracle.logp, photo.work, queries=TRUTH_QUERIES, seed=TRUTH_SEED, batch_size=bench.BATCH)
    samples = run.estimate.samples
    truth = fit(samples, laplacian, 0.0, ridge=0.0)
    half = len(samples) // 2
    halves = [fit(Samples(samples.directions[s], samples.responses[s]), laplacian, 0.0, ridge=0.0)
              for s in (slice(0, half), slice(half, None))]
    rows = [{"set": which, "photo": photo.name, "truth_noise": round(relative(halves[0], halves[1]) / 2, 5)}]
    for budget in BUDGETS:
        for seed in SEEDS:
            result = saliency(photo.oracle.logp, photo.work, queries=budget, seed=seed, batch_size=bench.BATCH)
            for name in FITS:
                g = fit(result.estimate.samples, laplacian, smoothness_of(name, budget))
                rows.append({"set": which, "photo": photo.name, "budget": budget, "seed": seed, "fit": name,
                             "error": round(relative(g, truth), 5), "rho": round(spearman(g, truth), 5)})
    return rows


def summary(rows: list[dict], which: str) -> str:
    rows = [r for r in rows if r["set"] == which]
    noise = {r["photo"]: r["truth_noise"] for r in rows if "truth_noise" in r}
    maps = [r for r in rows if "fit" in r]
    photos = list(noise)
    get = {(r["photo"], r["budget"], r["seed"], r["fit"]): r for r in maps}

    def per_photo(budget: int, name: str, key: str) -> np.ndarray:
        return np.array([np.mean([get[(p, budget, s, name)][key] for s in SEEDS]) for p in photos])

    lines = [f"\n## {which.capitalize()} photos ({', '.join(photos)})\n",
             f"The truth's own noise (relative, from its halves): "
             f"{bench.fmt(np.array(list(noise.values())), 3)}.\n",
             "| queries | fit | relative error to the truth | rho with the truth "
             "| error minus held | lower on |", "|---|---|---|---|---|---|"]
    for budget in BUDGETS:
        held = per_photo(budget, "held", "error")
        for name in FITS:
            error = per_photo(budget, name, "error")
            diff = error - held
            if name == "held":
                paired = "- | -"
            elif smoothness_of(name, budget) == SMOOTHNESS:
                paired = "(the same fit as held) | -"
            else:
                paired = bench.paired(diff, 3)
            lines.append(f"| {budget} | {name}, smoothness {smoothness_of(name, budget):g} | {bench.fmt(error, 3)} "
                         f"| {bench.fmt(per_photo(budget, name, 'rho'), 2)} | {paired} |")
    top = BUDGETS[-1]
    lines += [f"\nPer photo at {top} queries (relative error, mean of the two seeds):\n",
              "| photo | truth's noise | " + " | ".join(FITS) + " |", "|---|---|" + "---|" * len(FITS)]
    for i, p in enumerate(photos):
        lines.append(f"| {p} | {noise[p]:.3f} | " + " | ".join(f"{per_photo(top, n, 'error')[i]:.3f}" for n in FITS)
                     + " |")
    return "\n".join(lines)


def write(rows: list[dict], seconds: float | None = None) -> None:
    (bench.RESULTS / "saliency_prior.json").write_text(json.dumps(
        {"truth_queries": TRUTH_QUERIES, "budgets": BUDGETS, "seeds": SEEDS, "seconds": seconds, "rows": rows}))
    head = [
        "# Convergence of the default map: the smoothness prior held against faded",
        "",
        f"Written by `python -m benchmarks.saliency_prior`{f' ({seconds:.0f} s)' if seconds else ''}. "
        "Model efficientnet-lite0 (embedded, ONNX runtime), target = the top-1 class, blurred baseline, "
        f"14x14 cells, the default's randomised Hadamard halves. Truth per photo: least squares without a "
        f"prior over {TRUTH_QUERIES} queries (seed {TRUTH_SEED}). Maps: seeds {SEEDS[0]} and {SEEDS[1]}, "
        "each budget's queries refitted three ways:",
        "",
        f"- held: smoothness {SMOOTHNESS} relative to the data at every budget (the library before the prior faded);",
        f"- faded (the default): smoothness {SMOOTHNESS} up to {PRIOR_QUERIES} queries, "
        f"{SMOOTHNESS} x {PRIOR_QUERIES} / N above;",
        "- no prior: least squares with smoothness 0 (the same small ridge).",
        "",
        "Relative error = |map - truth| / |truth| over the 196 cells; rho = Spearman correlation with the truth. "
        "Per photo the mean of the two seeds, then over photos with 95% t-intervals; "
        "the paired column is faded (or no prior) minus held, by photo; lower on = photos where it is closer "
        "to the truth than held. The truth's noise is half the relative distance between fits of its two halves.",
    ]
    body = [summary(rows, which) for which in dict.fromkeys(r["set"] for r in rows)]
    (bench.RESULTS / "saliency_prior.md").write_text("\n".join(head + body) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", choices=("table", "tuning", "both"), default="both", help="which photos (default both)")
    p.add_argument("--combine", action="store_true", help="rewrite the .md from the .json")
    args = p.parse_args(argv)
    sets = {"tuning": bench.TUNING_PHOTOS, "table": bench.TABLE_PHOTOS}
    bench.run_or_combine("saliency_prior", rows_for, write, combine=args.combine,
                         sets=sets if args.set == "both" else {args.set: sets[args.set]})


if __name__ == "__main__":
    main()
