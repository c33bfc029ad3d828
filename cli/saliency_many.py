"""``blackbox saliency a.png b.jpg DIR/ --out-dir OUT``: many images, one budget, one summary.

The multi-image form of ``blackbox saliency`` (several IMAGEs, a folder, or ``--out-dir``). Each
image is explained as the single-image form would explain it alone; results go to ``OUT`` as
they finish (``NAME.json``, ``NAME.npz``, ``NAME.png``) with ``OUT/summary.json`` for the run, and
a rerun of the same command skips the images already done.
"""
from __future__ import annotations

import argparse
import json
import os

from blackbox.errors import InputError

from . import remote
from .options import positive_int

MANY_ONLY = {"executor": "serial", "workers": None, "address": None, "max_queries": None,
             "faithfulness": False, "no_overlays": False}

EPILOG = """
many images:
  blackbox saliency photos/ extra.jpg --out-dir out/ --queries 500
  blackbox saliency photos/ --out-dir out/ --executor pool --workers 2
  blackbox saliency photos/ --out-dir out/ --executor ray --address auto
  blackbox saliency photos/ --model gpt-vision --target cat --out-dir out/ --max-cost 2 --dry-run
  blackbox saliency photos/ --model gpt-vision --target cat --out-dir out/ --batch
  Several IMAGEs (files or folders of images) or --out-dir explain them all, --queries map
  queries each, with one budget (--max-queries/--max-tokens/--max-cost/--deadline cap the whole
  run) and write OUT/NAME.json, NAME.npz (the map) and NAME.png per image plus OUT/summary.json.
  Rerun the same command to finish an interrupted run: images already done are skipped and a
  remote model's answered queries come from the cache. With --batch (serial executor) the
  queries of every image go out together: one batch per stage for the whole folder.
"""


def add_many_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("many images (several IMAGEs, a folder, or --out-dir)")
    g.add_argument("--out-dir", metavar="DIR", help="write one result per image and summary.json here (resumable)")
    g.add_argument("--executor", choices=("serial", "pool", "ray"), default="serial",
                   help="serial (default), pool = local processes, ray = a Ray cluster (pip install 'blackbox-lr[ray]')")
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="worker processes (default: one per CPU of the machine or cluster)")
    g.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: $RAY_ADDRESS, else start one here)")
    g.add_argument("--max-queries", type=positive_int, metavar="N", help="hard cap on queries across all images (billable requests for remote models)")
    g.add_argument("--faithfulness", action="store_true",
                   help="also measure deletion/insertion AUCs (42 more queries per image)")
    g.add_argument("--no-overlays", action="store_true", help="do not draw NAME.png overlays")


def wanted(args) -> bool:
    """Is this the multi-image form? Also rejects options that make no sense in the other form."""
    many = len(args.image) > 1 or os.path.isdir(args.image[0]) or args.out_dir is not None
    if many:
        if args.out_dir is None:
            what = (f"{args.image[0]} is a directory: its images give" if len(args.image) == 1
                    else "several images give")
            raise InputError(f"{what} one result each: name a folder for them with --out-dir DIR")
        for option, flag in ((args.out, "--out"), (args.save_map, "--save-map")):
            if option:
                raise InputError(f"{flag} is for one image; with --out-dir each image gets NAME.png and NAME.npz")
    else:
        given = [k for k, default in MANY_ONLY.items() if getattr(args, k) != default]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise InputError(f"{flags}: for several images; add --out-dir DIR to explain {args.image[0]} that way")
    return many


def saliency_options(args, seed: bool = True) -> dict:
    """The saliency parts the arguments name (and the seed, for explain_many)."""
    return dict(method=args.method, space=args.space, estimator=args.estimator, smoothness=args.smoothness,
                refine=args.refine, grid=args.grid, blocks=args.blocks, sigma=args.sigma,
                **({"seed": args.seed} if seed else {}), allocator=args.allocator, rounds=args.rounds,
                target_error=args.target_error,
                **({"focus": args.focus} if args.focus else {}))  # off: the settings of earlier runs, unchanged


def run(args) -> int:
    from blackbox.adapters.spec import model_spec
    from blackbox.many import explain_many
    from blackbox.queries import Budget

    remote.check_local_options(args)
    budget = Budget(max_queries=args.max_queries, max_tokens=args.max_tokens, max_cost=args.max_cost,
                    max_seconds=args.deadline)
    model_options = remote.model_options(args, budget)
    model_options.pop("budget", None)
    if args.dry_run:
        return dry_run(args, model_options, budget)
    batch = explain_many(args.image, model_spec(args.model, **model_options), queries=args.queries,
                         targets=args.target, budget=budget, out_dir=args.out_dir, executor=args.executor,
                         workers=args.workers, address=args.address, faithfulness=args.faithfulness,
                         overlays=not args.no_overlays, progress=not args.no_progress, batch=args.batch,
                         **saliency_options(args))
    summary = batch.summary()
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(batch.table())
        c = batch.counts()
        spent = batch.spent
        print(f"explained {c['done']} of {c['images']} images ({c['resumed']} from an earlier run) with "
              f"{spent['queries']} queries in {batch.seconds:.1f} s (executor {batch.executor}, {batch.workers} "
              f"worker{'s' if batch.workers > 1 else ''})")
        if remote.is_remote(args.model):
            cached = sum(r.details.get("cached", 0) for r in batch)
            print(f"remote usage: {spent['queries']} requests paid{' (through the Batch API)' if args.batch else ''}, "
                  f"{cached} from cache, {spent['tokens']} tokens, ${spent['cost']:.4f}")
        if batch.interrupted:
            print(f"stopped early: {batch.interrupted}; rerun the same command to finish")
        print(f"wrote {os.path.join(args.out_dir, 'summary.json')} and NAME.json/.npz"
              f"{'' if args.no_overlays else '/.png'} per image in {args.out_dir}")
    failed = [r for r in batch if r.status == "failed"]
    if failed:
        raise InputError(f"{len(failed)} of {len(batch)} images failed, e.g. {failed[0].name}: {failed[0].error}")
    return 0


def dry_run(args, model_options: dict, budget) -> int:
    """What the whole run would spend: every image is planned on the remote engine, nothing is sent."""
    from blackbox.adapters.registry import load_image_model
    from blackbox.many import collect_images, explain_many

    images = len(collect_images(args.image))
    if not remote.is_remote(args.model):
        print(f"dry run: {args.model} is local and free; the run would use {images} x {args.queries} queries")
        return 0
    model = load_image_model(args.model, budget=budget, **model_options)
    try:
        explain_many(args.image, model, queries=args.queries, targets=args.target, budget=budget,
                     progress=not args.no_progress, **saliency_options(args))
        report = {**remote.dry_run_report(model, args, images * args.queries), "images": images}
    finally:
        model.close()
    if args.json:
        print(json.dumps(report))
    else:
        print(f"dry run over {images} images (--queries {args.queries} each):")
        remote.print_dry_run(report)
    return 0
