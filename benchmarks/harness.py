"""Shared parts of the benchmark scripts: the results folder, means with intervals, run/combine.

Scripts run from the repository root as modules (``python -m benchmarks.NAME``) and write their
tables and summaries to ``benchmarks/results/`` (in git); what they rebuild on demand, such as
per-photo part files with cell maps, goes to ``benchmarks/parts/`` (git-ignored).

Intervals, one style everywhere: every figure is a mean over independent units (photos, or seeds
that each draw their own data split, initialisation, batches and noise) with a 95% Student-t
interval, written ``mean ± half-width`` with half-width ``t(0.975, n - 1) * sd / sqrt(n)``. A
comparison is paired: the difference is taken unit by unit (photo by photo, seed by seed), and
the interval of its mean decides whether a claim holds.

Why Student-t: the units are few (3 seeds, 4 to 8 photos). A percentile bootstrap of the mean
reads the spread with divisor n at normal quantiles, so it is too narrow exactly there (about 22%
narrower than t at 8 photos, 30% at 6; with 3 seeds it has only 10 distinct resamples), while the
t interval is exact for normal means, widens as n shrinks, needs no resampling seed, and is one
half-width per cell. With one unit there is no interval (the cell says so); a mean over a missing
value (nan) is shown as ``-``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = Path(__file__).resolve().parent / "parts"


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of a Student-t interval over ``values`` (None left out, nan kept:
    a nan value makes the mean nan); half-width nan with fewer than 2 values."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size < 2:
        return float(v.mean()), float("nan")
    from scipy.stats import t

    return float(v.mean()), float(t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def show(stat: tuple[float, float], digits: int = 3) -> str:
    """A ``(mean, half-width)`` pair as a table cell."""
    m, h = stat
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f} (one value)" if math.isnan(h) else f"{m:.{digits}f} ± {h:.{digits}f}"


def fmt(values, digits: int = 3) -> str:
    """The mean of ``values`` with its interval, as a table cell."""
    return show(mean_ci(values), digits)


def paired(diff, digits: int = 4) -> str:
    """Two table cells for per-unit differences (row minus reference): the mean with its interval,
    and on how many units the row is lower."""
    diff = np.asarray(diff)
    return f"{fmt(diff, digits)} | {int(np.sum(diff < 0))}/{diff.size}"


def queries_to_reach(curve, target: float) -> int | None:
    """The first training-query count at which a curve of ``(queries, value)`` reached ``target``
    (values compared at 3 decimals, as stored); None if never."""
    return next((q for q, v in curve if round(v, 3) >= round(target, 3) - 1e-9), None)


def reach_ratios(curves: list, targets: list[float], total: int) -> list[float | None]:
    """Per seed: the share of ``total`` training queries a run needed to reach that seed's target."""
    return [None if (q := queries_to_reach(c, t)) is None else q / total for c, t in zip(curves, targets)]


def reach_claim(name: str, ratios: list, reference: str, what: str = "accuracy") -> str:
    """A sentence saying whether ``name`` reaches ``reference``'s final ``what`` with fewer queries,
    judged on the mean ratio and its interval (and only if every seed got there)."""
    reached = [r for r in ratios if r is not None]
    if len(reached) < len(ratios):
        return (f"{name} reached {reference}'s final {what} in {len(reached)} of {len(ratios)} seeds: "
                "no claim of fewer queries")
    m, h = mean_ci(reached)
    verdict = "fewer queries (the interval lies below 1)" if m + h < 1 else "no fewer queries within the noise"
    return f"{name} reached {reference}'s final {what} with {m:.2f}x ± {h:.2f} of the queries: {verdict}"


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
        (RESULTS / f"{stem}.json").write_text(json.dumps({"info": info, "seeds": seeds}))
        (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return lines


def rows_ci(a, b, level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the paired difference ``a - b`` over the rows of one fixed held-out
    set (per-row scores, e.g. 0/1 correctness averaged over seeds): the Student-t interval over
    rows. It measures the held-out set's own sampling noise, which an interval over a few seeds
    scored on the same rows does not see."""
    return mean_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), level)
