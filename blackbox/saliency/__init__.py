"""Black-box saliency maps from forward queries only.

A map is composed of small parts, each replaceable on its own:

* a **space** (what is perturbed; :mod:`blackbox.saliency.spaces`): ``mask`` (default; per-patch
  mixing with a blurred baseline: the effect of removing each patch) or ``pixel`` (per-patch
  additive brightness noise). The space renders queries, reports the perturbation delivered
  and reads an estimate back as a map;
* a **method** (:mod:`blackbox.saliency.methods`): where the noise is centred and what the map
  multiplies the gradient by (vanilla, SmoothGrad, Integrated Gradients, gradient x input), or
  binary masks in complement pairs (Banzhaf values);
* an **estimator** (how the answers are explained; :mod:`blackbox.estimators`): the plain
  likelihood-ratio mean (the unbiased reference) or least squares over the same queries with a
  smoothness prior;
* a **sampler**: one pass with a fixed allocation across blocks, rounds rationed by an
  allocator (:mod:`blackbox.saliency.rationing`), coarse to fine (:mod:`blackbox.saliency.refine`),
  for ``banzhaf`` optionally a pass over every cell followed by the top cells re-measured
  among themselves (:mod:`blackbox.saliency.focus`), or, for ``ig-steps``, a fixed walk along
  the path, one patch at a time (:mod:`blackbox.saliency.path_steps`).
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import numpy as np

from ..errors import InputError
from ..estimators import ESTIMATORS, Regression, lr_gradient
from .spaces import SPACES, PatchGrid
from ..images import ImageView, as_float_image, blur
from ..queries import Budget, QueryRunner
from .rationing import rationed_gradient
from .methods import METHODS, Method
from .path_steps import path_points, path_steps
from .focus import first_stage, focused
from .refine import coarse_to_fine
from .result import SaliencyResult

__all__ = ["ESTIMATORS", "METHODS", "PRIOR_QUERIES", "SPACES", "Method", "SaliencyResult", "defaults",
           "make_baseline", "prior_weight", "saliency"]

PRIOR_QUERIES = 1000
"""Up to this many queries the smoothness prior weighs ``smoothness`` times the data's weight per
patch; beyond it the prior stays as strong as it was here, so it fades relative to the data and the
map converges to the plain least squares (the patches' Banzhaf values) as the budget grows. Held
relative to the data at every budget, the prior's bias never fades: on the table photos the map
then deleted slower at 4000 queries than at 1000 (see :func:`prior_weight`)."""


def prior_weight(smoothness: float | None, queries: int) -> float | None:
    """The smoothness the fit uses for a budget of ``queries``: ``smoothness`` up to
    :data:`PRIOR_QUERIES`, ``smoothness * PRIOR_QUERIES / queries`` beyond (``None``, cross-validation,
    stays ``None``).

    Measured by ``benchmarks/saliency_prior.py`` (truth: least squares without a prior over 16000
    queries; seeds 0 and 1): relative error of the table photos' cell maps at 4000 queries 0.177
    faded against 0.217 held, closer on 8 of 8 photos (tuning photos 0.246 / 0.297, 6 of 6)."""
    if smoothness is None or queries <= PRIOR_QUERIES:
        return smoothness
    return smoothness * PRIOR_QUERIES / queries


def make_baseline(image: np.ndarray, kind: str = "blur", radius: float | None = None) -> np.ndarray:
    """The 'removed' image: a strong blur (default), the mean colour, or black."""
    if kind == "blur":
        return blur(image, radius if radius is not None else max(image.shape[:2]) / 16)
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1)), image.shape).astype(np.float32).copy()
    if kind == "black":
        return np.zeros_like(image)
    raise InputError(f"unknown baseline {kind!r} (blur, mean or black)")


def saliency(
    score: Callable[[np.ndarray], np.ndarray] | QueryRunner,
    image: np.ndarray,
    *,
    queries: int = 1000,
    method: str | None = None,
    space: str = "mask",
    estimator: str | None = None,
    grid: int | tuple[int, int] = 14,
    blocks: int = 1,
    sigma: float | None = None,
    smooth: float | None = None,
    per_channel: bool = False,
    control: str = "antithetic",
    noise: str | None = None,
    smoothness: float | None = 0.1,
    baseline: str | np.ndarray = "blur",
    allocation: np.ndarray | None = None,
    seed: int | None = 0,
    budget: Budget | None = None,
    batch_size: int = 32,
    progress: bool = False,
    allocator: str | None = None,
    rounds: int | None = None,
    target_error: float | None = None,
    refine: bool = False,
    focus: float = 0.0,
    target: object | None = None,
    view: ImageView | None = None,
) -> SaliencyResult:
    """Explain ``score`` (images -> one float each, e.g. a target log-probability) at ``image``.

    ``image`` is the working image the model sees, ``(H, W, 3)`` in [0, 1] (or uint8).
    The defaults were chosen on tuning photos kept out of the benchmark
    (``benchmarks/results/saliency.tuning.md``): in mask space the ``banzhaf`` method (halves of
    the patches removed by a randomised Hadamard design, each mask followed by its complement)
    with the ``ridge`` estimator (least squares over all answers, neighbouring patches alike with
    weight ``smoothness``, held fixed above 1000 queries so that it fades relative to the data:
    :func:`prior_weight`); ``method=None`` means ``banzhaf`` in mask space and ``ig`` in pixel space,
    ``estimator=None`` the method's own (``ridge``; ``lr`` for ``ig-steps``).
    ``score`` may be a plain function or a :class:`QueryRunner` (to share a budget and counters).
    Spends at most ``queries`` queries; if a budget runs out first, the map built from the
    queries already answered is returned with ``stopped`` set.
    ``allocator`` (``uniform``, ``neyman``, ``flops``) rations the budget across the ``blocks``
    in ``rounds`` (default 4); ``target_error`` stops once the relative standard error of the
    estimate is at or below it (see :mod:`blackbox.saliency.rationing`), reporting ``queries_saved``.
    ``refine`` spends part of the budget on a coarser grid first, then the rest on the fine cells
    of the coarse cells that matter, rationed by ``allocator`` (default ``neyman``; see
    :mod:`blackbox.saliency.refine`).
    ``focus`` (banzhaf in one pass only; off by default) is the share of cells, ranked highest by
    the first half of the budget, that the second half re-measures among themselves with every
    other cell held fixed (:mod:`blackbox.saliency.focus`; e.g. ``0.3``): a map that deletes
    faster, at some cost in stability from seed to seed and in insertion.
    ``method="ig-steps"`` (mask space) needs no randomness: at ``queries // (patches + 1)`` fixed
    points of the path it nudges each patch alone by ``sigma`` (default 0.05), the map that agrees
    with white-box Integrated Gradients; blocks, allocators and refinement do not apply to it.
    ``target`` (what the map explains) and ``view`` (how the working image was cut from the
    original) are kept in the result, which maps itself back to the original with ``view``.
    """
    space_cls = _choose(SPACES, space, "space")
    method = method or space_cls.default_method
    method_def = _choose(METHODS, method, "method")
    estimator = estimator or method_def.default_estimator
    if not isinstance(queries, (int, np.integer)) or queries < 2:
        raise InputError(f"queries must be a whole number >= 2, got {queries}")
    image = as_float_image(image)
    rows, cols = (grid, grid) if isinstance(grid, (int, np.integer)) else grid
    cell_grid = PatchGrid(image.shape[0], image.shape[1], int(rows), int(cols))
    cell_blocks = cell_grid.blocks(blocks)
    base = as_float_image(baseline if isinstance(baseline, np.ndarray) else make_baseline(image, baseline))
    perturbed = space_cls(image, cell_grid, baseline=base, per_channel=per_channel)
    sigma = method_def.sigma(perturbed, sigma, smooth)
    noise = noise or method_def.noise
    stepped = method_def.path and noise == "coordinate"
    planned = queries
    if stepped:
        _check_steps(space, allocation, allocator, rounds, target_error, refine, blocks, control)
        planned = len(path_points(queries, perturbed.dim)) * (perturbed.dim + 1)  # whole path points
    sample = _sampler(allocation, allocator, rounds, target_error, refine, blocks)
    focus = _focus(focus, method_def, space, allocation, allocator, rounds, target_error, refine, blocks, control)
    # the prior fades with the queries the fit reads: with focus, stage 1's (the map is its fit)
    explainer = _estimator(estimator, smoothness, first_stage(queries, perturbed.dim, focus))
    runner = _runner(score, budget, batch_size)
    if progress:
        runner.start_progress(planned, f"saliency ({method}, {space})")
    q0, m0, t0 = runner.record.queries, runner.record.model_seconds, time.perf_counter()
    try:
        rng = np.random.default_rng(seed)
        if stepped:
            est = path_steps(perturbed.probe(method_def, runner, cell_blocks).f, perturbed.dim, queries=queries,
                             step=sigma, chunk=runner.batch_size, keep_samples=explainer.keep_samples)
        elif focus:
            probe = perturbed.probe(method_def, runner, cell_blocks)
            est, flat, flat_err = focused(probe, explainer, perturbed.prior(), queries=queries, sigma=sigma,
                                          noise=noise, seed=rng, share=focus)
        elif refine:
            est = sample(perturbed, method_def, runner, queries=queries, sigma=sigma, control=control,
                         noise=noise, seed=rng, keep_samples=explainer.keep_samples)
        else:
            probe = perturbed.probe(method_def, runner, cell_blocks)
            est = sample(probe.f, probe.center, queries=queries, sigma=sigma, control=control,
                         noise=noise, blocks=probe.blocks, seed=rng,
                         center_fn=probe.center_fn, keep_samples=explainer.keep_samples)
        if not focus:
            flat, flat_err = explainer.fit(est, perturbed.prior())
        attribution = perturbed.attribution(method_def, flat, flat_err)
    finally:
        if progress:
            runner.close()
    return SaliencyResult(
        map=attribution.pixels, cells=attribution.cells, stderr=attribution.stderr, method=method,
        space=space, estimator=estimator, cell_grid=cell_grid, blocks=blocks, sigma=sigma,
        signed=attribution.signed, queries=runner.record.queries - q0, seconds=time.perf_counter() - t0,
        model_seconds=runner.record.model_seconds - m0, stopped=est.stopped,
        queries_saved=int(est.extras.get("queries_saved", 0)), allocator=est.extras.get("allocator"),
        focus=focus, estimate=est, target=target, view=view)


def defaults() -> dict:
    """The keyword defaults of :func:`saliency` (what a map is made of unless told otherwise)."""
    import inspect

    return {name: p.default for name, p in inspect.signature(saliency).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _choose(options: dict, name: str, what: str):
    if name not in options:
        raise InputError(f"unknown {what} {name!r}; choose from {', '.join(options)}")
    return options[name]


def _estimator(name: str, smoothness: float | None, queries: int):
    cls = _choose(ESTIMATORS, name, "estimator")
    if cls is Regression:
        if smoothness is not None and smoothness < 0:
            raise InputError(f"smoothness must be >= 0 (or None to choose it by cross-validation), got {smoothness}")
        return Regression(prior_weight(smoothness, queries))
    return cls()


def _runner(score, budget: Budget | None, batch_size: int) -> QueryRunner:
    if isinstance(score, QueryRunner):
        if budget is not None:
            raise InputError("pass the budget to the QueryRunner, not to saliency()")
        return score
    return QueryRunner(score, budget=budget, batch_size=batch_size)


def _check_steps(space: str, allocation, allocator, rounds, target_error, refine: bool, blocks: int,
                 control: str) -> None:
    """Integrated Gradients in steps walks the path one patch at a time: nothing to ration."""
    if space != "mask":
        raise InputError("Integrated Gradients in steps (one-patch steps on the path) works in mask space")
    if (allocation is not None or allocator is not None or rounds is not None or target_error is not None
            or refine or blocks != 1):
        raise InputError("Integrated Gradients in steps nudges every patch at every path point: "
                         "blocks, allocators, target errors and refinement do not apply")
    if control != "antithetic":
        raise InputError("Integrated Gradients in steps uses its own control (the path image); leave control alone")


def _focus(focus: float | None, method, space: str, allocation, allocator, rounds, target_error,
           refine: bool, blocks: int, control: str) -> float:
    """The share of cells re-measured in a second stage (0: none); asked for where it cannot
    apply, a one-line error."""
    plain = (allocation is None and allocator is None and rounds is None and target_error is None
             and not refine and blocks == 1 and control == "antithetic")
    fits = space == "mask" and method.name == "banzhaf"
    try:
        focus = 0.0 if focus is None else float(focus)
    except (TypeError, ValueError):
        raise InputError(f"focus is a share of the cells, between 0 and 1; got {focus!r}") from None
    if not 0 <= focus <= 1:
        raise InputError(f"focus is a share of the cells, between 0 and 1; got {focus}")
    if focus and not fits:
        raise InputError("focus re-measures banzhaf masks: it needs method banzhaf in mask space")
    if focus and not plain:
        raise InputError("focus runs its own two stages: it does not combine with blocks, allocators, "
                         "target errors, refinement or another control")
    return focus


def _sampler(allocation, allocator: str | None, rounds: int | None, target_error: float | None,
             refine: bool, blocks: int):
    """One pass with a fixed allocation across blocks, rounds rationed by an allocator, or coarse
    to fine (the allocator rations the fine stage)."""
    if refine:
        if allocation is not None or rounds is not None or target_error is not None or blocks != 1:
            raise InputError("refine picks its own blocks and rounds: pass only an allocator with it")
        return functools.partial(coarse_to_fine, allocator=allocator or "neyman")
    if allocator is None and rounds is None and target_error is None:
        return functools.partial(lr_gradient, allocation=allocation)
    if allocation is not None:
        raise InputError("pass either a fixed allocation or an allocator, not both")
    return functools.partial(rationed_gradient, allocator=allocator or "uniform", rounds=rounds or 4,
                             target_error=target_error)
