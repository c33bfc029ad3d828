"""Benchmark: alignment through a queried LM -- held-out zero-shot accuracy against queries spent
for uniform, Neyman and FLOPS allocation, the backprop reference at the same steps, wall time and
peak memory. Writes benchmarks/results/alignment.{md,json}.

    python benchmarks/alignment.py [--steps 24] [--per-class 30] [--classes 01234]

Same data, projector init, batches and noise seeds for every allocator; accuracy is measured on
the held-out half at a few checkpoints (its queries are not counted as training queries).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from blackbox import tasks
from blackbox.adapters.causal_lm import load_causal_lm
from blackbox.adapters.image_features import image_features
from blackbox.alignment import evaluate, train_backprop, train_projector

RESULTS = Path(__file__).parent / "results"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", default="01234")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--steps", type=int, default=36)
    ap.add_argument("--queries-per-step", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loss", choices=("ranking", "nll"), default="ranking")
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--eval-every", type=int, default=6)
    ap.add_argument("--allocators", nargs="+", default=["uniform", "neyman", "flops"])
    ap.add_argument("--context", default="Handwritten digit:", help="text before the soft token ('' for none)")
    ap.add_argument("--tag", default="", help="suffix of the results file names")
    args = ap.parse_args()
    t_all = time.perf_counter()
    classes = tuple(int(c) for c in args.classes)
    data = tasks.load_digits(classes, per_class=args.per_class, seed=0)
    t = time.perf_counter()
    feats = image_features(data.images)
    feat_s = time.perf_counter() - t
    labels, half = data.labels, int((~data.test).sum())
    lm = load_causal_lm()
    setup = tasks.alignment_setup(lm, feats, data, context=args.context, loss=args.loss)
    task, proj = setup.task, setup.projector
    tr_x, tr_y, te_x, te_y = setup.train_x, setup.train_y, setup.test_x, setup.test_y

    def heldout(p):
        return evaluate(lm, p, te_x, te_y, task)

    rows = []
    for name in args.allocators:
        t = time.perf_counter()
        run = train_projector(lm, proj, tr_x, tr_y, task, steps=args.steps, batch_size=args.batch_size,
                              queries_per_step=args.queries_per_step, sigma=args.sigma, lr=args.lr, allocator=name,
                              seed=0, eval_fn=heldout, eval_every=args.eval_every)
        rows.append({"method": f"LR output noise, {name}", "curve": [(e["queries"], e["accuracy"]) for e in run.evals],
                     "final_accuracy": run.evals[-1]["accuracy"], "queries": run.queries,
                     "seconds": round(time.perf_counter() - t, 1)})
        print(rows[-1], flush=True)
    t = time.perf_counter()
    bp = train_backprop(lm, proj, tr_x, tr_y, task, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=0,
                        eval_fn=heldout, eval_every=args.eval_every)
    rows.append({"method": "backprop (white-box reference)", "curve": [(e["step"], e["accuracy"]) for e in bp.evals],
                 "final_accuracy": bp.evals[-1]["accuracy"], "queries": 0,
                 "seconds": round(time.perf_counter() - t, 1)})
    print(rows[-1], flush=True)
    chance = 1 / len(classes)
    bp_acc = rows[-1]["final_accuracy"]
    info = {"classes": list(classes), "train_images": half, "heldout_images": len(labels) - half,
            "steps": args.steps, "batch_size": args.batch_size, "queries_per_step": args.queries_per_step,
            "loss": args.loss, "sigma": args.sigma, "lr": args.lr,
            "chance": chance, "feature_seconds": round(feat_s, 1),
            "wall_seconds": round(time.perf_counter() - t_all, 1), "peak_rss_mb": round(peak_mb()),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_average_at_end": os.getloadavg()[0]}
    lines = ["# Alignment through a queried LM (digits, EfficientNet-Lite0 -> projector -> SmolLM2-135M)", "",
             f"{len(classes)} classes (chance {chance:.0%}), {half} train / {len(labels) - half} held-out images, "
             f"{args.steps} steps x {args.batch_size} images x {args.queries_per_step} queries; k=1 soft token, "
             f"16 PCA dims; LM input [{args.context!r}][soft token][class word]; loss {args.loss!r}; "
             f"sigma {args.sigma}, Adam lr {args.lr}.", "",
             "| method | training queries | held-out accuracy by checkpoint (queries or step: acc) | final | x chance | / backprop | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        curve = ", ".join(f"{q}: {a:.2f}" for q, a in r["curve"])
        rel = r["final_accuracy"] / bp_acc if bp_acc > 0 else float("nan")
        lines.append(f"| {r['method']} | {r['queries']} | {curve} | {r['final_accuracy']:.3f} | "
                     f"{r['final_accuracy'] / chance:.2f} | {rel:.2f} | {r['seconds']} |")
    lines += ["", f"Wall time {info['wall_seconds']} s in total (features {info['feature_seconds']} s, cached after the "
              f"first run); peak RSS {info['peak_rss_mb']} MB; {info['cores']} cores (load average at the end "
              f"{info['load_average_at_end']:.1f})."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"alignment{args.tag}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"alignment{args.tag}.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
