"""``blackbox align``: train an image-to-soft-token projector through the embedded LM, queries only."""
from __future__ import annotations

import argparse
import json
import os
import time

from blackbox.errors import InputError

from .files import check_writable
from .options import add_output_options, add_training_options, positive_float, positive_int

EPILOG = """\
examples:
  blackbox align                                        # digits 0-4, 36 steps x 512 queries, ~5 min
  blackbox align --queries 4096 --allocator neyman --plot curve.png     # a quick look
  blackbox align --classes 0123456789 --per-class 30 --plot curve.png
  blackbox align --images photos/ --captions captions.csv --plot curve.png
  blackbox align --save projector.npz --checkpoint run.npz --json

your images:
  --images DIR holds the pictures; --captions FILE (.csv, .tsv, .jsonl or .json) names each file
  and its caption or class word (--file-column, --caption-column; default 'file' and 'caption').
  The distinct captions are the classes (at least two, each with two or more images); every class
  is split half for training, half held out. One-word captions that are single LM tokens (cat,
  dog, red) cost one LM sequence per query; longer captions one per caption.

how it works:
  Images (by default real handwritten digits from scikit-learn, upscaled to 224x224) are encoded by
  the embedded EfficientNet-Lite0 (its 1280-d penultimate features, cached). A linear projector
  maps a DIMS-dimensional PCA of them to K soft tokens read by the embedded SmolLM2-135M between
  --context and the class word. Its loss is only queried: by default ("ranking") the
  cross-entropy of the true caption among all class captions given the soft tokens (the zero-shot
  ranking score), or ("nll") the true caption's NLL alone: antithetic noise on the soft tokens
  gives likelihood-ratio gradients, the chain rule through the projector gives its update (no
  backpropagation through the LM), and the allocator rations each step's queries across the
  batch. Zero-shot accuracy ranks every class caption's likelihood on held-out images.
"""


def add_parser(sub):
    a = sub.add_parser("align", help="align image features to the embedded LM from queries only",
                       description="Train a projector from EfficientNet-Lite0 features to soft tokens of "
                                   "SmolLM2-135M (both embedded, offline) by forward learning, on real digits or "
                                   "your own captioned images; report held-out zero-shot accuracy.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = a.add_argument_group("data (default: handwritten digits)")
    d.add_argument("--classes", help="digits to use, e.g. 01234 (default)")
    d.add_argument("--per-class", type=positive_int,
                   help="digits: images per class, split half train / half held out (default: 30)")
    d.add_argument("--images", metavar="DIR", help="a folder of your images (with --captions)")
    d.add_argument("--captions", metavar="FILE", help="table of file names and captions (with --images)")
    d.add_argument("--file-column", metavar="NAME", help="column of the file names (default: file)")
    d.add_argument("--caption-column", metavar="NAME", help="column of the captions (default: caption)")
    t = a.add_argument_group("training")
    t.add_argument("--queries", type=positive_int, default=18432, metavar="N",
                   help="training query budget (default: 18432 = 36 steps of 512)")
    t.add_argument("--queries-per-step", type=positive_int, default=512, metavar="Q", help="(default: 512)")
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default: 32)")
    t.add_argument("--perturb", choices=("output", "params"), default="output",
                   help="output: noise on the soft tokens (ULR, default); params: on the weights")
    t.add_argument("--k", type=positive_int, default=1, help="soft tokens (default: 1)")
    t.add_argument("--dims", type=positive_int, default=16, help="PCA dimensions of the features (default: 16)")
    t.add_argument("--context", help="text before the soft token (default: 'Handwritten digit:' for digits, "
                                     "'A photo of' for your images; '' for none)")
    t.add_argument("--prompt", default="", help="text between the soft token and the class word (needs --context '')")
    t.add_argument("--loss", choices=("ranking", "nll"), default="ranking",
                   help="ranking: cross-entropy among the class captions (default); nll: the true caption's NLL")
    t.add_argument("--sigma", type=positive_float, default=0.3, help="noise scale (default: 0.3)")
    add_training_options(t, lr=0.3, lr_help="Adam step size (default: 0.3)")
    t.add_argument("--save", metavar="NPZ", help="write the trained projector")
    add_output_options(a)


def _classes(text: str) -> tuple[int, ...]:
    if not text.isdigit() or len(set(text)) != len(text) or len(text) < 2:
        raise InputError(f"--classes must be at least two distinct digits like 01234, got {text!r}")
    return tuple(int(c) for c in text)


def _data(args):
    from blackbox import tasks

    if (args.images is None) != (args.captions is None):
        raise InputError("give both --images and --captions (or neither, for the digits)")
    if args.images is None:
        wrong = [f"--{n.replace('_', '-')}" for n in ("file_column", "caption_column") if getattr(args, n)]
        if wrong:
            raise InputError(f"{', '.join(wrong)} apply to your own images (--images/--captions)")
        classes = _classes(args.classes or "01234")
        return tasks.load_digits(classes, per_class=args.per_class or 30, seed=args.seed), "Handwritten digit:"
    wrong = [f"--{n.replace('_', '-')}" for n in ("classes", "per_class") if getattr(args, n)]
    if wrong:
        raise InputError(f"{', '.join(wrong)} apply to the digits, not to --images/--captions")
    data = tasks.load_captioned_images(args.images, args.captions, file_column=args.file_column or "file",
                                       caption_column=args.caption_column or "caption", seed=args.seed)
    return data, "A photo of"


def run(args) -> int:
    from blackbox.alignment import evaluate, train_projector
    from blackbox.queries import Budget
    from blackbox.tasks import alignment_setup

    if args.queries_per_step % 2 or args.queries_per_step < 2 * args.batch_size:
        raise InputError(f"--queries-per-step must be even and >= 2 x --batch-size ({2 * args.batch_size})")
    for path, what in ((args.save, "the projector"), (args.plot, "the plot"), (args.checkpoint, "the checkpoint")):
        if path:
            check_writable(path, what)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    data, context = _data(args)
    from blackbox.adapters.causal_lm import load_causal_lm
    from blackbox.adapters.image_features import image_features

    lm = load_causal_lm()
    setup = alignment_setup(lm, image_features(data.images, progress=not args.no_progress), data,
                            context=context if args.context is None else args.context, prompt=args.prompt,
                            loss=args.loss, k=args.k, dims=args.dims, seed=args.seed)

    def heldout(projector):
        return evaluate(lm, projector, setup.test_x, setup.test_y, setup.task)

    res = train_projector(lm, setup.projector, setup.train_x, setup.train_y, setup.task, perturb=args.perturb,
                          sigma=args.sigma, batch_size=args.batch_size, queries_per_step=args.queries_per_step,
                          lr=args.lr, allocator=args.allocator, seed=args.seed, budget=Budget(max_queries=args.queries),
                          checkpoint=args.checkpoint, progress=not args.no_progress, eval_fn=heldout,
                          eval_every=args.eval_every)
    if args.save:
        res.learned.save(args.save)
    if args.plot:
        from blackbox.plots import learning_curves, save_figure

        save_figure(learning_curves({args.perturb: res}, loss_label=f"{args.loss} loss", chance=1 / len(data.names),
                                    title=f"alignment from queries ({args.allocator}, {args.perturb} noise)"),
                    args.plot)
    before, after = res.before, res.after
    report = {**data.summary(), "queries_used": res.queries, "stopped": res.stopped, "allocator": args.allocator,
              "perturb": args.perturb, "loss": args.loss, "chance": 1 / len(data.names),
              "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
              "nll_before": round(before["mean_nll"], 4), "nll_after": round(after["mean_nll"], 4),
              "eval_queries": res.eval_queries, "seconds": round(time.perf_counter() - started, 1),
              "projector": args.save, "plot": args.plot}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"held-out zero-shot accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%} "
              f"(chance {report['chance']:.1%}) after {res.queries} training queries in {report['seconds']:.0f} s")
        if res.stopped:
            print(f"stopped: {res.stopped}")
        for path, what in ((args.save, "projector"), (args.plot, "plot")):
            if path:
                print(f"wrote {what}: {path}")
    return 0
