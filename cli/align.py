"""``blackbox align``: train an image-to-soft-token projector through the embedded LM, queries only."""
from __future__ import annotations

import argparse
import json
import os
import time

from blackbox.errors import InputError

from .options import ALLOCATOR_CHOICES, add_output_options, positive_float, positive_int

EPILOG = """\
examples:
  blackbox align                                        # digits 0-4, 36 steps x 512 queries, ~5 min
  blackbox align --queries 4096 --allocator neyman --plot curve.png     # a quick look
  blackbox align --classes 0123456789 --per-class 30 --plot curve.png
  blackbox align --save projector.npz --checkpoint run.npz --json

how it works:
  Real handwritten digits (scikit-learn) are upscaled to 224x224 and encoded by the embedded
  EfficientNet-Lite0 (its 1280-d penultimate features, cached). A linear projector maps a
  DIMS-dimensional PCA of them to K soft tokens prepended to the embedded SmolLM2-135M's input.
  Its loss is only queried: by default ("ranking") the cross-entropy of the true caption among
  all class captions given the soft tokens (the zero-shot ranking score; one query per image
  returns every class word's log-probability), or ("nll") the true caption's NLL alone:
  antithetic noise on the soft tokens gives likelihood-ratio gradients, the chain rule through
  the projector gives its update (no backpropagation through the LM), and the allocator rations
  each step's queries across the batch. Zero-shot accuracy ranks every class caption's
  likelihood on held-out images (one query per image).
"""


def add_parser(sub):
    a = sub.add_parser("align", help="align image features to the embedded LM from queries only",
                       description="Train a projector from EfficientNet-Lite0 features to soft tokens of "
                                   "SmolLM2-135M (both embedded, offline) by forward learning, on real "
                                   "digits; report held-out zero-shot accuracy.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--classes", default="01234", help="digits to use, e.g. 01234 (default)")
    a.add_argument("--per-class", type=positive_int, default=30,
                   help="images per class, split half train / half held out (default: 30)")
    a.add_argument("--queries", type=positive_int, default=18432, metavar="N",
                   help="training query budget (default: 18432 = 36 steps of 512)")
    a.add_argument("--queries-per-step", type=positive_int, default=512, metavar="Q", help="(default: 512)")
    a.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default: 32)")
    a.add_argument("--allocator", choices=ALLOCATOR_CHOICES, default="uniform")
    a.add_argument("--perturb", choices=("output", "params"), default="output",
                   help="output: noise on the soft tokens (ULR, default); params: on the weights")
    a.add_argument("--k", type=positive_int, default=1, help="soft tokens (default: 1)")
    a.add_argument("--dims", type=positive_int, default=16, help="PCA dimensions of the features (default: 16)")
    a.add_argument("--context", default="Handwritten digit:",
                   help="text before the soft token (default: 'Handwritten digit:'; '' for none)")
    a.add_argument("--prompt", default="", help="text between the soft token and the class word (needs --context '')")
    a.add_argument("--loss", choices=("ranking", "nll"), default="ranking",
                   help="ranking: cross-entropy among the class captions (default); nll: the true caption's NLL")
    a.add_argument("--sigma", type=positive_float, default=0.3, help="noise scale (default: 0.3)")
    a.add_argument("--lr", type=positive_float, default=0.3, help="Adam step size (default: 0.3)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--checkpoint", metavar="NPZ", help="write/resume the training state here")
    a.add_argument("--save", metavar="NPZ", help="write the trained projector")
    a.add_argument("--plot", metavar="PNG", help="write the training curve")
    add_output_options(a)


def _classes(text: str) -> tuple[int, ...]:
    if not text.isdigit() or len(set(text)) != len(text) or len(text) < 2:
        raise InputError(f"--classes must be at least two distinct digits like 01234, got {text!r}")
    return tuple(int(c) for c in text)


def run(args) -> int:
    import numpy as np

    from blackbox.alignment import CaptionTask, Projector, evaluate, train_projector
    from blackbox.queries import Budget

    classes = _classes(args.classes)
    if args.queries_per_step % 2 or args.queries_per_step < 2 * args.batch_size:
        raise InputError(f"--queries-per-step must be even and >= 2 x --batch-size ({2 * args.batch_size})")
    for path, what in ((args.save, "the projector"), (args.plot, "the plot"), (args.checkpoint, "the checkpoint")):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InputError(f"cannot write {what} {path}: its folder does not exist")
    from blackbox.adapters.causal_lm import load_causal_lm
    from blackbox.adapters.image_features import image_features, load_digit_set

    started = time.perf_counter()
    images, labels, names = load_digit_set(classes, per_class=args.per_class, seed=args.seed)
    feats = image_features(images, progress=not args.no_progress)
    half = len(labels) // 2
    lm = load_causal_lm()
    task = CaptionTask(args.prompt, [" " + w for w in names], context=args.context, loss=args.loss)
    proj = Projector.fit(feats[:half], k=args.k, embed_dim=lm.embed_dim, dims=min(args.dims, half - 1),
                         scale=lm.embedding_scale(), init=np.tile(lm.embed_tokens(" picture")[0], args.k),
                         seed=args.seed)
    before = evaluate(lm, proj, feats[half:], labels[half:], task)
    budget = Budget(max_queries=args.queries)
    res = train_projector(lm, proj, feats[:half], labels[:half], task, batch_size=args.batch_size,
                          queries_per_step=args.queries_per_step, sigma=args.sigma, lr=args.lr,
                          allocator=args.allocator, perturb=args.perturb, seed=args.seed, budget=budget,
                          checkpoint=args.checkpoint, progress=not args.no_progress)
    after = evaluate(lm, res.projector, feats[half:], labels[half:], task)
    if args.save:
        res.projector.save(args.save)
    if args.plot:
        from blackbox.plots import save_figure
        import matplotlib.pyplot as plt

        q, loss = res.train.curve("loss")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(q, loss, lw=1)
        ax.set_xlabel("queries"), ax.set_ylabel(f"{args.loss} loss (batch mean)")
        ax.set_title(f"alignment from queries ({args.allocator}, {args.perturb} noise)")
        save_figure(fig, args.plot)
    report = {"classes": list(classes), "train_images": half, "heldout_images": len(labels) - half,
              "queries_used": res.queries, "stopped": res.train.stopped, "allocator": args.allocator,
              "perturb": args.perturb, "loss": args.loss, "chance": before["chance"],
              "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
              "nll_before": round(before["mean_nll"], 4), "nll_after": round(after["mean_nll"], 4),
              "eval_queries": before["queries"] + after["queries"],
              "seconds": round(time.perf_counter() - started, 1), "projector": args.save, "plot": args.plot}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"held-out zero-shot accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%} "
              f"(chance {before['chance']:.1%}) after {res.queries} training queries "
              f"in {report['seconds']:.0f} s")
        for path, what in ((args.save, "projector"), (args.plot, "plot")):
            if path:
                print(f"wrote {what}: {path}")
    return 0
