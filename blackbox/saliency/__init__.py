"""Black-box saliency maps from forward queries only.

A map is composed of parts (:class:`Saliency`), each replaceable on its own:

* a **space** (what is perturbed; :mod:`blackbox.saliency.spaces`): :class:`Mask` (default; per-patch
  mixing with a blurred baseline: the effect of removing each patch) or :class:`Pixel` (per-patch
  additive brightness noise). Bound to an image, it renders queries, reports the perturbation
  delivered and reads an estimate back as a map;
* a **method** (:mod:`blackbox.saliency.methods`): where the noise is centred and what the map
  multiplies the gradient by (vanilla, SmoothGrad, Integrated Gradients, gradient x input), or
  binary masks in complement pairs (Banzhaf values);
* an **estimator** (how the answers are explained; :mod:`blackbox.estimators`): the plain
  likelihood-ratio mean (the unbiased reference) or least squares over the same queries with a
  smoothness prior;
* a **sampler** (how the queries are spent; :mod:`blackbox.saliency.samplers`): one pass, blocks
  rationed by an allocator, coarse to fine, focus on the top cells, or steps along the path.

:func:`saliency` is the front that names the parts with plain options (what the command line
passes); :func:`explain_image` (:mod:`blackbox.saliency.pipeline`) is the one pipeline from a
model and a photo to a map.
"""
from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

from ..estimators import ESTIMATORS, PRIOR_QUERIES, Estimator, LRMean, Regression, prior_weight
from ..images import ImageView
from ..queries import Budget, QueryRunner
from .compose import Saliency
from .methods import METHODS, Method
from .result import SaliencyResult
from .samplers import CoarseToFine, Focus, Job, OnePass, PathSteps, Rationed, Reading, Sampler
from .spaces import SPACES, Mask, Pixel, make_baseline

__all__ = ["ESTIMATORS", "METHODS", "PRIOR_QUERIES", "SPACES", "CoarseToFine", "Estimator", "Focus", "Job",
           "LRMean", "Mask", "Method", "OnePass", "PathSteps", "Pixel", "Rationed", "Reading", "Regression",
           "Saliency", "SaliencyResult", "Sampler", "defaults", "make_baseline", "prior_weight", "saliency"]


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

    ``image`` is the working image the model sees, ``(H, W, 3)`` in [0, 1] (or uint8). The
    defaults were chosen on tuning photos kept out of the benchmark: in mask space the ``banzhaf``
    method (halves of the patches removed by a randomised Hadamard design, each mask followed by
    its complement) read by the ``ridge`` estimator (least squares over all answers, neighbouring
    patches alike with weight ``smoothness``, held fixed above :data:`PRIOR_QUERIES` queries so
    that it fades relative to the data); ``method=None`` means ``banzhaf`` in mask space and
    ``ig`` in pixel space, ``estimator=None`` the sampler's own (``ridge``; ``lr`` for ``ig-steps``).

    The sampler follows from the options: ``allocator`` (``uniform``, ``neyman``, ``flops``),
    ``rounds`` (default 4) or ``target_error`` ration the budget across the ``blocks``
    (:class:`Rationed`); ``refine`` spends part of it on a coarser grid first (:class:`CoarseToFine`);
    ``focus`` (a share of the cells, e.g. 0.3) re-measures the top cells among themselves with
    the second half of the budget (:class:`Focus`); ``method="ig-steps"`` walks the path of
    Integrated Gradients one patch at a time (:class:`PathSteps`); otherwise one pass over
    ``blocks`` with a fixed ``allocation`` and the control variate ``control`` (:class:`OnePass`).
    Options that belong to another sampler are refused with a one-line error.

    ``score`` may be a plain function or a :class:`QueryRunner` (to share a budget and counters).
    Spends at most ``queries`` queries; if a budget runs out first, the map built from the
    queries already answered is returned with ``stopped`` set. ``target`` (what the map explains)
    and ``view`` (how the working image was cut from the original) are kept in the result.
    """
    explainer = Saliency.from_options(
        method=method, space=space, estimator=estimator, grid=grid, blocks=blocks, sigma=sigma, smooth=smooth,
        per_channel=per_channel, control=control, noise=noise, smoothness=smoothness, baseline=baseline,
        allocation=allocation, allocator=allocator, rounds=rounds, target_error=target_error, refine=refine,
        focus=focus)
    return explainer(score, image, queries=queries, seed=seed, budget=budget, batch_size=batch_size,
                     progress=progress, target=target, view=view)


def defaults() -> dict:
    """The keyword defaults of :func:`saliency` (what a map is made of unless told otherwise)."""
    return {name: p.default for name, p in inspect.signature(saliency).parameters.items()
            if p.default is not inspect.Parameter.empty}
