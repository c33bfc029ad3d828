"""Benchmark: alignment through a queried LM over several seeds -- held-out zero-shot accuracy
against training queries for uniform, Neyman and FLOPS allocation, and the backprop reference at
the same steps. Writes benchmarks/results/alignment.{md,json}.

    python -m benchmarks.alignment [--seeds 0 1 2] [--steps 24] [--queries-per-step 256] [--classes 01234]
    python -m benchmarks.alignment --combine   # rewrite the .md from the .json

Each seed is an independent replicate: its own choice of digit images and train/held-out split,
projector initialisation, batches and noise. Within a seed every allocator starts from the same
data and projector. Figures are means over the seeds with 95% Student-t intervals; comparisons
with uniform allocation are paired by seed (:mod:`benchmarks.harness`). Accuracy is measured on the
held-out half at a few checkpoints (its queries are not training queries). No timings: the figures
are quality per query, which the machine's load does not change.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.harness import curve_cell, fmt, paired_claim, reach_claim, reach_ratios, run_seeds  # noqa: E402
from blackbox import tasks  # noqa: E402
from blackbox.adapters.causal_lm import load_causal_lm  # noqa: E402
from blackbox.adapters.image_features import image_features  # noqa: E402
from blackbox.alignment import evaluate, train_backprop, train_projector  # noqa: E402

NAMES = {"uniform": "LR output noise, uniform", "neyman": "LR output noise, Neyman",
         "flops": "LR output noise, FLOPS", "backprop": "backprop (white-box reference)"}


def one_seed(seed: int, args) -> dict:
    lm = load_causal_lm()
    data = tasks.load_digits(tuple(int(c) for c in args.classes), per_class=args.per_class, seed=seed)
    setup = tasks.alignment_setup(lm, image_features(data.images), data, context=args.context, loss=args.loss,
                                  seed=seed)

    def heldout(projector):
        return evaluate(lm, projector, setup.test_x, setup.test_y, setup.task)

    runs = {}
    for name in args.allocators:
        run = train_projector(lm, setup.projector, setup.train_x, setup.train_y, setup.task, steps=args.steps,
                              batch_size=args.batch_size, queries_per_step=args.queries_per_step, sigma=args.sigma,
                              lr=args.lr, allocator=name, seed=seed, eval_fn=heldout, eval_every=args.eval_every)
        runs[name] = {"curve": [(e["queries"], e["accuracy"]) for e in run.evals], "queries": run.queries,
                      "after": run.after["accuracy"]}
        print(f"seed {seed} {name}: {run.before['accuracy']:.3f} -> {run.after['accuracy']:.3f}", flush=True)
    bp = train_backprop(lm, setup.projector, setup.train_x, setup.train_y, setup.task, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, seed=seed, eval_fn=heldout, eval_every=args.eval_every)
    runs["backprop"] = {"curve": [(e["step"], e["accuracy"]) for e in bp.evals], "queries": 0,
                        "after": bp.after["accuracy"]}
    return {"seed": seed, "data": data.summary(), "before": bp.before["accuracy"], "runs": runs}


def report(seeds: list[dict], args) -> list[str]:
    n, total = len(seeds), args.steps * args.queries_per_step
    chance = 1 / len(args.classes)
    data = seeds[0]["data"]
    runs = lambda name: [s["runs"][name] for s in seeds]  # noqa: E731
    lines = [f"# Alignment through a queried LM (digits, EfficientNet-Lite0 -> projector -> SmolLM2-135M), {n} seeds", "",
             f"{len(args.classes)} classes (chance {chance:.0%}), {data['train_images']} train / "
             f"{data['heldout_images']} held-out images per seed, {args.steps} steps x {args.batch_size} images x "
             f"{args.queries_per_step} queries = {total} training queries; k=1 soft token, 16 PCA dims; LM input "
             f"[{args.context!r}][soft token][class word]; loss {args.loss!r}; sigma {args.sigma}, Adam lr {args.lr}. "
             f"Seeds {', '.join(str(s['seed']) for s in seeds)}; mean ± 95% t-interval.", "",
             f"held-out accuracy before training: {fmt([s['before'] for s in seeds])}", "",
             "| method | final held-out accuracy | x chance | / backprop (paired) | final - uniform (paired) | "
             "queries to reach uniform's final acc (x total, seeds that got there) |", "|---|---|---|---|---|---|"]
    targets = [r["after"] for r in runs("uniform")]
    claims = []
    for name in (*args.allocators, "backprop"):
        rs = runs(name)
        finals = [r["after"] for r in rs]
        diffs = [r["after"] - u["after"] for r, u in zip(rs, runs("uniform"))]
        rel = [r["after"] / b["after"] for r, b in zip(rs, runs("backprop")) if b["after"] > 0]
        reach = ""
        if name != "backprop":
            ratios = reach_ratios([r["curve"] for r in rs], targets, total)
            got = [x for x in ratios if x is not None]
            reach = f"{fmt(got, 2)} ({len(got)}/{n})"
        if name not in ("uniform", "backprop"):
            claims += [reach_claim(NAMES[name], ratios, "uniform"), paired_claim(NAMES[name], diffs, "uniform")]
        lines.append(f"| {NAMES[name]} | {fmt(finals)} | {fmt([f / chance for f in finals], 2)} | {fmt(rel, 2)} | "
                     f"{'' if name == 'uniform' else fmt(diffs)} | {reach} |")
    claims.append(paired_claim(NAMES["uniform"], [u["after"] - b["after"] for u, b in
                                                  zip(runs("uniform"), runs("backprop"))], "backprop"))
    lines += ["", "held-out accuracy by training queries (backprop: by step), mean ± interval:", "",
              "| method | curve |", "|---|---|"]
    lines += [f"| {NAMES[name]} | {curve_cell([r['curve'] for r in runs(name)])} |"
              for name in (*args.allocators, "backprop")]
    lines += ["", "claims, judged on the mean and its interval:", ""] + [f"- {c}" for c in claims]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--classes", default="01234")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--queries-per-step", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loss", choices=("ranking", "nll"), default="ranking")
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--eval-every", type=int, default=6)
    ap.add_argument("--allocators", nargs="+", default=["uniform", "neyman", "flops"])
    ap.add_argument("--context", default="Handwritten digit:", help="text before the soft token ('' for none)")
    ap.add_argument("--tag", default="", help="suffix of the results file names")
    ap.add_argument("--combine", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    if "uniform" not in args.allocators:
        ap.error("the comparisons need uniform among --allocators")
    print("\n".join(run_seeds(args, one_seed, report, f"alignment{args.tag}")))


if __name__ == "__main__":
    main()
