"""``blackbox saliency``: a saliency map of an image from forward queries only."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from blackbox.errors import ModelError

from . import remote, saliency_many
from .remote import interrupted_line
from .files import check_figure_format, check_outputs, save_npy
from .options import (ALLOCATOR_CHOICES, add_model_file_options, add_output_options, add_remote_options, nonneg_int,
                      positive_float, positive_int, share)

EPILOG = """\
examples:
  blackbox sample-image coffee coffee.png
  blackbox saliency coffee.png --queries 1000 --out coffee-saliency.png
  blackbox saliency coffee.png --target "tea cup" --method ig --estimator lr --json
  blackbox saliency photo.jpg --out photo-saliency.png --save-map map.npy
  blackbox saliency photo.jpg --method banzhaf --refine      # random halves, coarse to fine
  blackbox saliency photo.jpg --space pixel --method vanilla --grid 16 --blocks 4
  blackbox saliency coffee.png --method ig-steps   # the map white-box IG would draw
  blackbox saliency coffee.png --method banzhaf --focus 0.3   # the second half re-ranks the top 30%
  blackbox saliency coffee.png --model gpt-vision --target espresso --batch   # half price, answers later

how it works:
  The model is only queried (forward passes). Each query perturbs the image on a GRID x GRID
  patch grid and asks for the target's log-probability. In mask space (default) a patch is
  mixed with a blurred copy, so the map says how much removing each patch lowers the target
  score: red supports the target, blue speaks against it. The default method (quarters) asks
  for the photo once, then removes a random quarter of the patches per query (the patches split
  into four random groups, each removed in turn): the images stay near the photo, where a
  deletion curve looks, so when classes compete the map ranks the patches by what removing them
  from the photo does. banzhaf removes random halves, each mask followed by its complement (far
  from the photo: a patch can keep the target alive among halves yet hand it to a rival near the
  photo); it is the method --blocks, the allocators, --refine and --focus work with. ig walks the
  path from the blurred copy to the image, and ig-steps walks it without randomness, one patch
  nudged at a time at fixed points (the same map from any seed, close to white-box IG, but less
  faithful to removal: pick it to compare with gradient methods). The default estimator fits all
  answers at once by least squares with a prior that neighbouring patches are alike (ridge); lr
  is the plain mean over the same queries (for quarters, each patch's difference of mean scores
  kept versus removed; unbiased for banzhaf and ig, noisier; the default for ig-steps, whose
  steps the prior would only blur). --focus F (banzhaf) spends the second half of the queries
  on the share F of patches the first half ranks highest, removed in halves among themselves
  while every other patch stays fixed: the top patches are ordered precisely, at some cost in
  stability from seed to seed.

half price (--batch, remote OpenAI models):
  The map's queries are drawn before any is answered, so they can go to OpenAI's Batch API as
  one batch (a design in stages, --refine or --focus, sends one batch per stage): half the
  price, answers within 24 hours (usually minutes), a progress line on stderr while it runs.
  The map is the one the run without --batch draws (same seed, same requests). --queries,
  --max-tokens and --max-cost reserve the batch's worst case before it is uploaded. The batch
  is recorded in the query cache: a run stopped while it runs (Ctrl-C, a lost terminal) and
  started again with the same command waits for that batch instead of paying again; what an
  expired or cancelled batch did not answer is sent again as a new batch. --dry-run prints
  both prices. Try it offline against 'blackbox serve', which has the Batch API too.

outputs:
  --out      the cell map smoothly upsampled (bilinear between cell centres, as the colour bar
             says) over the photo in grey, colour scale centred at 0
  --save-map the raw cell map, not smoothed: every pixel of the image's own H x W holds its
             patch's value (0 outside what the model saw), as float32 .npy
"""


def add_parser(sub) -> None:
    from blackbox.adapters.registry import DEFAULT_MODEL, KNOWN_MODELS
    from blackbox.saliency import ESTIMATORS, METHODS, PRIOR_QUERIES, SPACES, OnePass, PathSteps, defaults
    from blackbox.saliency.focus import SHARE as FOCUS_SHARE

    models = "\n".join(f"  {k:28s} {v}" for k, v in KNOWN_MODELS.items())
    s = sub.add_parser("saliency", help="a saliency map of an image from forward queries only",
                       description="Compute a black-box saliency map of IMAGE for a target class.\n\nmodels:\n" + models,
                       epilog=EPILOG + saliency_many.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("image", metavar="IMAGE", nargs="+",
                   help="an image file (PNG, JPEG, ...); several files or folders: see 'many images'")
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL}, embedded, offline)")
    s.add_argument("--target", help="what to explain: a label ('espresso') or class index (default: the top-1 class)")
    s.add_argument("--queries", type=positive_int, default=1000, metavar="N", help="query budget (default: 1000)")
    default = defaults()
    s.add_argument("--method", choices=METHODS,
                   help=f"quarters = remove a random quarter of the patches per query (mask space), banzhaf = "
                        f"remove random halves, ig = Integrated Gradients, "
                        f"ig-steps = Integrated Gradients from one-patch steps (mask space, no randomness), "
                        f"vanilla, smoothgrad, gradxinput (default: {SPACES['mask'].default_method} in mask space, "
                        f"{SPACES['pixel'].default_method} in pixel space)")
    s.add_argument("--space", choices=SPACES, default=default["space"],
                   help=f"mask: mix patches with a blurred copy; pixel: add brightness noise (default: {default['space']})")
    s.add_argument("--estimator", choices=ESTIMATORS,
                   help=f"ridge = least squares over all answers with a smoothness prior; lr = the plain "
                        f"likelihood-ratio mean (default: {OnePass().default_estimator().name}, "
                        f"{PathSteps().default_estimator().name} for ig-steps, whose steps a prior would only blur)")
    s.add_argument("--smoothness", type=_smoothness, default=default["smoothness"], metavar="S",
                   help=f"ridge: weight of the prior that neighbouring patches are alike, relative to the data "
                        f"of up to {PRIOR_QUERIES} queries (above, it stays as strong as there, so it fades as the "
                        f"budget grows); 'auto' = cross-validation (default: {default['smoothness']})")
    s.add_argument("--refine", action="store_true",
                   help="coarse to fine: a coarser grid first, then the queries go to the patches that matter")
    s.add_argument("--focus", type=share, default=0.0, metavar="F",
                   help=f"banzhaf: spend the second half of the queries re-measuring the share F of patches the "
                        f"first half ranks highest, among themselves with the rest held fixed (e.g. {FOCUS_SHARE}): "
                        f"deletes faster, a little less stable from seed to seed (default: 0 = off)")
    s.add_argument("--grid", type=positive_int, default=default["grid"], metavar="G",
                   help=f"perturb a G x G patch grid (default: {default['grid']})")
    s.add_argument("--blocks", type=positive_int, default=1, metavar="K",
                   help="perturb K spatial blocks of patches one at a time (default: 1 = all at once)")
    s.add_argument("--sigma", type=positive_float,
                   help="noise scale (not used by quarters; default: 0.5 for banzhaf, the step 0.05 for ig-steps, else 0.3 in mask space "
                        "and 0.1 in pixel space)")
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default: 0)")
    s.add_argument("--out", metavar="PNG",
                   help="write an overlay picture: the cell map smoothly upsampled, colour scale centred at 0")
    s.add_argument("--save-map", metavar="NPY",
                   help="write the raw (unsmoothed) map at the image's own H x W: each pixel its patch's value (.npy)")
    add_output_options(s)
    s.add_argument("--allocator", choices=ALLOCATOR_CHOICES,
                   help="ration the budget across the --blocks in rounds: uniform, neyman "
                        "(queries ~ each block's measured std) or flops (learned)")
    s.add_argument("--rounds", type=positive_int, metavar="R", help="allocation rounds (default: 4)")
    s.add_argument("--target-error", type=positive_float, metavar="E",
                   help="stop once the relative standard error of the map is <= E (e.g. 0.2); "
                        "reports the queries saved")
    add_remote_options(s, batch_help="send the map's queries through OpenAI's Batch API: half price, answers "
                                     "within 24 h (usually minutes), one batch per stage; resumable (see 'half price')")
    add_model_file_options(s)
    saliency_many.add_many_options(s)


def _smoothness(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'auto', got {text!r}")
    return value


def run(args) -> int:
    if saliency_many.wanted(args):
        return saliency_many.run(args)
    args.image = args.image[0]
    from blackbox.adapters.registry import load_image_model
    from blackbox.images import load_image
    from blackbox.queries import Budget

    # everything that can be checked is checked before the first query is paid
    check_outputs({"the overlay": args.out, "the map": args.save_map}, inputs=(args.image,))
    check_figure_format(args.out)
    started = time.perf_counter()
    original = load_image(args.image)
    remote.check_local_options(args)
    budget = Budget(max_queries=args.queries, max_tokens=args.max_tokens, max_cost=args.max_cost,
                    max_seconds=args.deadline)
    model = load_image_model(args.model, **remote.model_options(args, budget))
    try:
        return _explain(args, model, original, budget, started)
    except KeyboardInterrupt:
        import atexit
        import gc

        atexit.register(gc.freeze)  # exit without a final sweep of every object (a second or more)
        if model.paid:
            print(interrupted_line(model, budget), file=sys.stderr)
        else:
            print("blackbox: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        model.close()


def _explain(args, model, original, budget, started) -> int:
    from blackbox.saliency import Saliency
    from blackbox.saliency.pipeline import explain_image

    if args.dry_run and not model.paid:
        print(f"dry run: {model.name} is local and free; the run would use {args.queries} queries")
        return 0
    explainer = Saliency.from_options(**saliency_many.saliency_options(args, seed=False))
    done = explain_image(model, original, target=args.target, queries=args.queries, explainer=explainer,
                         seed=args.seed, budget=budget, progress=not args.no_progress, batch=args.batch)
    if args.dry_run:
        report = remote.dry_run_report(model, args, done.map_queries)
        print(json.dumps(report)) if args.json else remote.print_dry_run(report)
        return 0
    result = done.result
    if result.queries == 0:
        raise ModelError(f"no map to write: stopped before any query of the map was answered: {result.stopped}")
    if not np.all(np.isfinite(result.map)):
        raise ModelError("no map to write: the estimate is not finite")
    if not np.any(result.cells):
        print(f"blackbox: warning: the map is all zeros: every one of the {result.queries} answered queries "
              "scored the same (the model did not react to any patch)", file=sys.stderr)
    _write(args, model, original, result)
    report = _report(args, model, done, time.perf_counter() - started)
    if args.json:
        print(json.dumps(report))
    else:
        _print_summary(args, model, done, report["seconds"])
    return 0


def _write(args, model, original, result) -> None:
    from blackbox.plots import overlay, save_figure

    if args.save_map:
        save_npy(args.save_map, result.full_map)
    if args.out:
        title = (f"{model.name}: '{result.target.label}' ({result.method}, {result.estimator}, {args.space} space, "
                 f"grid {args.grid}{', refined' if args.refine else ''}{', focused' if result.focus else ''})"
                 f" - {result.queries} queries")
        fig = overlay(original, result.display_map, title=title, signed=result.signed,
                      coverage=result.view.coverage(),
                      legend=f"{_legend(args.space, result)}\n(per patch, smoothed between patch centres)")
        save_figure(fig, args.out)


def _report(args, model, done, seconds: float) -> dict:
    result, target = done.result, done.target
    report = {
        "model": model.name, "target_label": target.label, "target_index": target.index,
        "top5": [{"label": l, "probability": round(p, 6), "index": i} for l, p, i in done.top5],
        "queries_used": result.queries, "seconds": round(seconds, 3),
        **{k: v for k, v in result.summary().items() if k not in ("queries_used", "seconds")},
        "out": args.out, "map": args.save_map, "map_shape": list(result.full_map.shape),
    }
    if model.paid:
        report.update(usage=model.usage(), provenance={**model.provenance(), "seed": args.seed})
    return report


def _print_summary(args, model, done, seconds: float) -> None:
    result = done.result
    if done.top5:
        print(f"{model.name}: top classes {', '.join(f'{l} {p:.3f}' for l, p, _ in done.top5[:3])}")
    settings = ", ".join([result.method, result.estimator, f"{args.space} space", f"grid {args.grid}"]
                         + (["refined"] if args.refine else [])
                         + ([f"top {result.focus:.0%} of patches re-measured"] if result.focus else []))
    print(f"explained '{done.target.label}' with {result.queries} queries in {seconds:.1f} s "
          f"({settings}; {result.overhead:.0%} of the time outside the model)")
    if result.stopped:
        print(f"stopped early: {result.stopped}")
    if result.queries_saved:
        print(f"saved {result.queries_saved} of {args.queries} queries (target error reached)")
    if model.paid:
        print(remote.usage_line(model))
    for path, what in ((args.out, "overlay"), (args.save_map, "map")):
        if path:
            print(f"wrote {what}: {path}")


def _legend(space: str, result) -> str:
    """What the colours mean: a removal effect, or (on the IG path) each patch's share of the score's
    change from the blurred copy to the image (the shares add up to that change)."""
    from blackbox.saliency import METHODS

    if space == "mask":
        if METHODS[result.method].path:
            return "IG share of the target score's change from blur"
        return "effect of removing the patch on the target score"
    return "attribution on the target score" if result.signed else "|gradient| of the target score"
