"""Allocation across images: does rationing one budget across photos of different difficulty (the
``explain_many`` setting) reach uniform's map quality with fewer queries?

Each photo's map is the library's banzhaf map in mask space (grid 14) read by the ridge estimator,
on the embedded EfficientNet-Lite0, explaining its top class. For every seed and photo one stream
of antithetic pairs is drawn once through a :class:`~blackbox.queries.QueryRunner` on a
:class:`~blackbox.queries.Budget` (``--stream`` queries, part files in ``benchmarks/parts/``);
a scheme that gives a photo ``n`` queries reads the first ``n`` of its stream, as a run that went
on drawing would, so every scheme is compared on the same draws (paired).

* ``uniform``: ``--queries`` per photo, the total split equally (what ``explain_many`` does);
* ``neyman``: a pilot (a quarter of the total, split equally), then rounds of a sixteenth of
  the total, each rationed by the library's Neyman allocator (every photo a floor of one pair)
  on each photo's estimated per-query relative variance ``e_i^2 n_i``, where ``e_i`` is the
  relative standard error of its current map (ridge residual standard errors over the map's
  norm): photos whose maps have converged stop drawing most of the queries;
* ``flops``: the library's FLOPS allocator on the same variances, learning from each round;
* ``largest error first``: the same rounds with ``n_i ~ e_i^2 n_i`` (the queries each photo
  needs for one common error), so the photos whose maps have the largest estimated error draw
  the most and the maps that have converged stop drawing: the rule for the worst photo's error;
* ``(oracle e_i)``: the same on the *true* error against the reference (a ceiling, not a method).

Quality of a map: its relative L2 error against the photo's reference map (the same method on
the pooled streams of the other seeds: ``(seeds - 1) x --stream`` queries, independent of the
map judged); also ``1 - Spearman``. Mean over photos, and the worst photo's. A scheme's figure per
seed is the share of uniform's total queries it needed to reach uniform's final value for good: the
first round from which it stays at or below that value up to uniform's total.

Run: ``OPENBLAS_NUM_THREADS=1 python -m benchmarks.allocation_images`` (draws 38,400 queries, about
13 minutes on 2 busy cores, then replays in about 6; the drawn streams are kept, so a rerun only
replays; one BLAS thread, or the ridge fits crawl on a shared machine); ``--combine`` rewrites the
.md from the .json; ``--check`` a tiny run that writes no results.
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from benchmarks.harness import PARTS, fmt, reach_claim, run_seeds
from benchmarks.saliency import load_photo
from blackbox.allocators import FlopsAllocator, NeymanAllocator, UniformAllocator, allocate_proportional
from blackbox.estimators import GradientEstimate, Regression, Samples
from blackbox.queries import Budget, QueryRunner
from blackbox.sample_images import SAMPLE_IMAGES
from blackbox.saliency import METHODS, Mask, OnePass, Saliency

PHOTOS = [*SAMPLE_IMAGES, "motorcycle", "coins", "gift_pack"]
ARMS = ("uniform", "neyman", "flops", "neyman (oracle e_i)", "largest error first", "largest error first (oracle e_i)")
MEASURES = ("mean L2 error", "mean 1 - Spearman", "worst photo's L2 error")
GRID, SMOOTHNESS = 14, 0.1
STREAMS = PARTS / "allocation_images"


def explainer() -> Saliency:
    return Saliency(Mask(GRID), METHODS["banzhaf"], Regression(SMOOTHNESS), OnePass())


def draw(model, name: str, seed: int, queries: int) -> dict:
    """The photo's stream of ``queries`` queries for ``seed`` (drawn once, then read from its part file)."""
    path = STREAMS / f"{name}-seed{seed}-{queries}.npz"
    if not path.exists():
        image = load_photo(name)
        work = model.view(*image.shape[:2]).to_working(image)
        target = model.resolve_target(None, work)
        runner = QueryRunner(model.score_fn(target), budget=Budget(max_queries=queries), batch_size=64)
        result = explainer()(runner, work, queries=queries, seed=[seed, PHOTOS.index(name)])
        assert runner.budget.queries == queries and result.stopped is None, (runner.budget.queries, result.stopped)
        s = result.estimate.samples
        STREAMS.mkdir(parents=True, exist_ok=True)
        np.savez(path, directions=s.directions.astype(np.float32), responses=s.responses,
                 prior=explainer().space.bind(work).prior(), target=target.index)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def fit(streams: list[dict], queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The ridge map (values, standard errors) of the first ``queries`` queries of the pooled streams."""
    pairs = queries // 2
    z = np.concatenate([s["directions"][:pairs] for s in streams]).astype(np.float64)
    r = np.concatenate([s["responses"][:pairs] for s in streams])
    est = GradientEstimate.empty(z.shape[1])
    est.samples = Samples(z, r)
    return Regression(SMOOTHNESS).for_budget(2 * len(r)).fit(est, streams[0]["prior"])


def errors(values: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Relative L2 error and 1 - Spearman of a map against the reference."""
    return (float(np.linalg.norm(values - reference) / np.linalg.norm(reference)),
            float(1 - spearmanr(values, reference)[0]))


def replay(arm: str, streams: list[dict], refs: list[np.ndarray], total: int, args, seed: int) -> dict:
    """One scheme's curve: ``(queries spent, mean relative L2 error, mean 1 - Spearman, worst photo's
    L2 error)`` after each round."""
    allocator = {"uniform": UniformAllocator, "flops": FlopsAllocator}.get(arm, NeymanAllocator)(
        floor=2, unit=2, seed=seed)
    b, length = len(streams), len(streams[0]["responses"]) * 2
    n = allocate_proportional(np.ones(b), total // 4, unit=2)
    step, curve, clipped, counts, at_total = total // 16 // 2 * 2, [], 0, None, n
    while True:
        fits = [fit([s], int(k)) for s, k in zip(streams, n)]
        errs = np.array([errors(v, ref) for (v, _), ref in zip(fits, refs)])
        curve.append((int(n.sum()), float(errs[:, 0].mean()), float(errs[:, 1].mean()), float(errs[:, 0].max())))
        at_total = n if n.sum() <= total else at_total
        if n.sum() >= args.upto * total or n.sum() + step > b * length:
            break
        estimated = np.array([np.sqrt(np.mean(se ** 2) / np.mean(v ** 2)) for v, se in fits])
        rel = errs[:, 0] if arm.endswith("(oracle e_i)") else estimated
        variances = rel ** 2 * n  # per-query relative variance: e_i^2 = V_i / n_i
        if arm == "flops" and counts is not None:
            allocator.update(variances=variances, counts=counts)
        counts = (allocate_proportional(variances, step, floor=2, unit=2) if arm.startswith("largest")
                  else allocator.allocate(step, b, variances=variances))
        clipped += int(np.sum(n + counts > length)) if n.sum() < total else 0
        n = np.minimum(n + counts, length)
    return {"curve": curve, "counts_at_total": at_total.tolist(), "clipped_before_total": clipped}


def one_seed(seed: int, args) -> dict:
    names = args.photos
    mine = [STREAM_CACHE[(name, seed)] for name in names]
    refs = [fit([STREAM_CACHE[(name, s)] for s in args.seeds if s != seed], args.stream)[0] for name in names]
    total = args.queries * len(names)
    runs = {arm: replay(arm, mine, refs, total, args, seed) for arm in ARMS}
    final = {q: rest for q, *rest in runs["uniform"]["curve"]}[total]
    return {"seed": seed, "total": total, "uniform_final": final, "runs": runs,
            "photo_errors_uniform": [errors(fit([s], args.queries)[0], ref) for s, ref in zip(mine, refs)]}


def report(seeds: list[dict], args) -> list[str]:
    total = seeds[0]["total"]
    lines = [f"# Allocation across images ({len(seeds)} seeds: {', '.join(str(s['seed']) for s in seeds)})", "",
             f"{len(args.photos)} photos ({', '.join(args.photos)}) on the embedded EfficientNet-Lite0, top class; "
             f"banzhaf masks, grid {GRID}, ridge (smoothness {SMOOTHNESS}); uniform: {args.queries} queries per photo "
             f"({total} in all); adaptive: a pilot of {total // 4} split equally, "
             f"then rounds of {total // 16 // 2 * 2}. "
             f"Reference per photo: the other seeds' streams pooled ({(len(args.seeds) - 1) * args.stream} queries). "
             "Figures: mean ± 95% t-interval over seeds.", "",
             "queries to reach uniform's final value (x uniform's total; seeds that got there), and the value at "
             "uniform's total:", "",
             "| scheme | " + " | ".join(f"to reach {m}" for m in MEASURES) + " | "
             + " | ".join(f"{m} at uniform's total" for m in MEASURES) + " |", "|---" * (1 + 2 * len(MEASURES)) + "|"]
    claims = []
    for arm in ARMS:
        curves = [s["runs"][arm]["curve"] for s in seeds]
        ratios = [[settled([(q, row[k]) for q, *row in c], s["uniform_final"][k], total) for c, s in zip(curves, seeds)]
                  for k in range(len(MEASURES))]
        at = [[row for q, *row in c if q <= total][-1] for c in curves]
        lines.append(f"| {arm} | " + " | ".join(ratio_cell(r) for r in ratios) + " | "
                     + " | ".join(fmt([a[k] for a in at]) for k in range(len(MEASURES))) + " |")
        if arm != "uniform":
            claims += [f"- {reach_claim(arm, r, 'uniform', m)}" for r, m in zip(ratios, MEASURES) if m != MEASURES[1]]
    per_photo = np.array([s["photo_errors_uniform"] for s in seeds])  # seeds x photos x 2
    spread = per_photo[:, :, 0].std(1) / per_photo[:, :, 0].mean(1)
    lines += ["", "photo difficulty under uniform (L2 error per photo, mean over seeds): "
              + ", ".join(f"{n} {e:.2f}" for n, e in zip(args.photos, per_photo[:, :, 0].mean(0)))
              + f"; coefficient of variation across photos {fmt(spread, 2)}", "",
              "queries per photo at uniform's total (mean over seeds; a photo's stream ends at "
              f"{args.stream}: rounds cut short there before uniform's total, over all seeds, in brackets):", "",
              *[f"- {arm}: " + ", ".join(f"{v:.0f}" for v in counts_at_total(seeds, arm))
                + f" ({sum(s['runs'][arm]['clipped_before_total'] for s in seeds)})" for arm in ARMS[1:]], "",
              "claims, judged on the mean ratio and its interval:", "", *claims]
    return lines


def counts_at_total(seeds: list[dict], arm: str) -> np.ndarray:
    return np.mean([s["runs"][arm]["counts_at_total"] for s in seeds], 0)


def settled(curve: list, target: float, total: int) -> float | None:
    """The share of ``total`` from which a curve of ``(queries, value)`` stays at or below ``target``
    at every round up to ``total`` (a round that dips below by luck and rises again does not
    count); past ``total``, the first round at or below it. None if never."""
    start = None
    for q, v in curve:
        if v <= target + 1e-12:
            start = q if start is None else start
            if q >= total:
                return start / total
        else:
            start = None
    return None


def ratio_cell(ratios: list) -> str:
    reached = [r for r in ratios if r is not None]
    return f"{fmt(reached, 2)} ({len(reached)}/{len(ratios)} seeds)"


STREAM_CACHE: dict = {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--photos", nargs="+", default=PHOTOS)
    parser.add_argument("--queries", type=int, default=256, help="uniform's queries per photo")
    parser.add_argument("--stream", type=int, default=768, help="queries drawn per photo and seed")
    parser.add_argument("--upto", type=float, default=2.0, help="adaptive runs go on to this x uniform's total")
    parser.add_argument("--combine", action="store_true")
    parser.add_argument("--check", action="store_true", help="a tiny run that writes no results")
    args = parser.parse_args()
    if args.check:
        args.seeds, args.photos, args.queries, args.stream = [0, 1], PHOTOS[:2], 32, 64
    if not args.combine:
        from blackbox.adapters import load_image_model

        model = load_image_model(threads=1)
        for seed in args.seeds:
            for name in args.photos:
                STREAM_CACHE[(name, seed)] = draw(model, name, seed, args.stream)
                print(f"stream {name} seed {seed}: {args.stream} queries", flush=True)
    if args.check:
        print("\n".join(report([one_seed(s, args) for s in args.seeds], args)))
        return
    print("\n".join(run_seeds(args, one_seed, report, "allocation_images")))


if __name__ == "__main__":
    main()
