"""Shared parts of the benchmark scripts: the results folder and means with intervals.

Learning benchmarks (allocation, alignment): every figure is the mean over independent seeds (data split, initial prompt or projector, batches
and noise all change with the seed) with a 95% Student-t interval ``mean +- t * sd / sqrt(n)``.
A comparison with uniform allocation is *paired*: the difference is taken seed by seed, and its
interval decides whether a claim holds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of a Student-t interval (half-width nan with fewer than 2 values)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size < 2:
        return float(v.mean()), float("nan")
    from scipy.stats import t

    return float(v.mean()), float(t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def fmt(values, digits: int = 3) -> str:
    m, h = mean_ci(values)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {h:.{digits}f}"


def queries_to_reach(curve, target: float) -> int | None:
    """The first training-query count at which a curve of ``(queries, value)`` reached ``target``
    (values compared at 3 decimals, as stored); None if never."""
    return next((q for q, v in curve if round(v, 3) >= round(target, 3) - 1e-9), None)


def reach_ratios(curves: list, targets: list[float], total: int) -> list[float | None]:
    """Per seed: the share of ``total`` training queries a run needed to reach that seed's target."""
    return [None if (q := queries_to_reach(c, t)) is None else q / total for c, t in zip(curves, targets)]


def reach_claim(name: str, ratios: list, reference: str) -> str:
    """A sentence saying whether ``name`` reaches ``reference``'s final accuracy with fewer queries,
    judged on the mean ratio and its interval (and only if every seed got there)."""
    reached = [r for r in ratios if r is not None]
    if len(reached) < len(ratios):
        return (f"{name} reached {reference}'s final accuracy in {len(reached)} of {len(ratios)} seeds: "
                "no claim of fewer queries")
    m, h = mean_ci(reached)
    verdict = "fewer queries (the interval lies below 1)" if m + h < 1 else "no fewer queries within the noise"
    return f"{name} reached {reference}'s final accuracy with {m:.2f}x ± {h:.2f} of the queries: {verdict}"


def paired_claim(name: str, diffs: list, reference: str, what: str = "accuracy") -> str:
    m, h = mean_ci(diffs)
    if math.isnan(h):
        return f"{name} - {reference}: {m:+.3f} {what} (one seed: no interval)"
    verdict = "better" if m - h > 0 else "worse" if m + h < 0 else "no difference within the noise"
    return f"{name} - {reference}: {m:+.3f} ± {h:.3f} final {what} (paired over seeds): {verdict}"


def mean_curve(curves: list) -> list[tuple[int, float, float]]:
    """``(x, mean, half-width)`` at the x values every curve shares."""
    common = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
    out = []
    for x in common:
        m, h = mean_ci([dict(c)[x] for c in curves])
        out.append((x, m, h))
    return out


def curve_cell(curve: list) -> str:
    return " ".join(f"{x}: {m:.2f}±{h:.2f}" for x, m, h in mean_curve(curve))


def bootstrap(values, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap 95% interval over the given (per-photo) values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = v[np.random.default_rng(seed).integers(0, v.size, (resamples, v.size))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt_bootstrap(stat, digits: int = 4) -> str:
    mean, lo, hi = stat
    return "-" if np.isnan(mean) else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def paired(diff, digits: int = 4) -> str:
    """Two table cells for per-photo differences (row minus reference): the mean with its bootstrap
    interval, and on how many photos the row is lower."""
    diff = np.asarray(diff)
    return f"{fmt_bootstrap(bootstrap(diff), digits)} | {int(np.sum(diff < 0))}/{diff.size}"


def run_seeds(args, one_seed, report, stem: str) -> list[str]:
    """The main of a benchmark over independent seeds: ``one_seed(seed, args)`` for each of
    ``args.seeds``, with ``results/<stem>.{json,md}`` rewritten after every seed (an interrupted run
    keeps its seeds); with ``args.combine``, only the .md, rewritten from the saved .json with the
    settings it was run with. ``report(seeds, args)`` gives the table's lines."""
    if args.combine:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        lines = report(saved["seeds"], argparse.Namespace(**saved["info"]["settings"]))
        (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
        return lines
    RESULTS.mkdir(parents=True, exist_ok=True)
    seeds = []
    for seed in args.seeds:
        seeds.append(one_seed(seed, args))
        lines = report(seeds, args)
        info = {"settings": vars(args), "load_average_at_end": os.getloadavg()[0], "cores": os.cpu_count()}
        (RESULTS / f"{stem}.json").write_text(json.dumps({"info": info, "seeds": seeds}, indent=1))
        (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return lines
