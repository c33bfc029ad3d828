"""Saliency methods: what a map integrates the gradient over, and how it reads the estimate back.

Every method runs on the same likelihood-ratio queries (see :mod:`blackbox.estimators`); a
method only says where the noise is centred and what the map multiplies the gradient by:

* ``vanilla``: the gradient of the target score at the image (smoothed at a small sigma);
* ``smoothgrad``: the same at ``sqrt(sigma^2 + smooth^2)`` (Stein: LR at noise s *is* SmoothGrad's
  mean gradient at s);
* ``ig``: Integrated Gradients from the baseline to the image, one random path position per
  antithetic pair;
* ``gradxinput``: gradient times (input - baseline);
* ``banzhaf`` (mask space): the average effect of removing each patch when a random half of the
  others is removed too (its Banzhaf value): binary masks, each antithetic pair a mask and its
  complement (the LR pairs with +-1/2 sign noise around m = 1/2). Large, on-off perturbations:
  what deletion and insertion curves measure. The masks come from randomised Hadamard designs
  (``noise="hadamard"``): every two patches are removed together exactly as often as apart, so
  the estimate of one patch carries no share of another's effect (``noise="rademacher"``: fully
  random halves).
* ``quarters`` (mask space; the default): each query removes one of four random groups of the
  patches, a quarter of the image, so the masked images stay near the photo, where a deletion
  curve looks; least squares with a free intercept reads each patch's effect of removal there
  (see :mod:`blackbox.saliency.partitions`). Defined by its sampler,
  :class:`~blackbox.saliency.partitions.Partitions`.
* ``ig-steps`` (mask space): Integrated Gradients without random directions: at fixed midpoints
  of the path each patch is nudged alone (``noise="coordinate"``: finite differences; see
  :mod:`blackbox.saliency.path_steps`). The same map from any seed, and the one that agrees with
  white-box IG; ``queries // (patches + 1)`` path points. It is defined by its sampler,
  :class:`~blackbox.saliency.samplers.PathSteps`, whose differences the plain mean reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .partitions import Partitions
from .path_steps import STEP
from .samplers import PathSteps


@dataclass(frozen=True)
class Method:
    """Where the noise is centred, which directions it takes and at what scale, and what the map
    multiplies the gradient by. ``sigma``/``smooth`` of None take the space's own scale."""

    name: str
    summary: str
    path: bool = False         # a fresh random position on the baseline -> image path per direction
    times_input: bool = False  # the map is gradient x (input - baseline) (implicit in mask space)
    smoothing: bool = False    # widen the noise by the SmoothGrad scale ``smooth``
    center: str = "input"      # where the noise is centred: the input, or "half" (m = 1/2 in mask space)
    noise: str = "gaussian"    # the direction family (blackbox.noise)
    sigma: float | None = None
    smooth: float | None = None
    sampler: type | None = None  # the one sampler this method is computed by, if it has one

    def noise_scale(self, space) -> float:
        """The noise scale this method queries with in ``space``."""
        value = float(self.sigma if self.sigma is not None else space.default_sigma)
        if value <= 0:
            raise InputError("sigma must be > 0")
        if self.smoothing:
            extra = self.smooth if self.smooth is not None else space.default_smooth
            value = float(np.sqrt(value ** 2 + extra ** 2))
        return value


METHODS = {m.name: m for m in (
    Method("vanilla", "the gradient at the image"),
    Method("smoothgrad", "the gradient of the image smoothed by wider noise", smoothing=True),
    Method("ig", "Integrated Gradients from the baseline to the image", path=True, times_input=True),
    Method("gradxinput", "gradient x (input - baseline)", times_input=True),
    Method("banzhaf", "the mean effect of removing each patch among random halves of the others",
           center="half", noise="hadamard", sigma=0.5),
    Method("ig-steps", "Integrated Gradients from one-patch steps at fixed points on the path",
           path=True, times_input=True, noise="coordinate", sigma=STEP, sampler=PathSteps),
    Method("quarters", "the effect of removing each patch near the photo, a random quarter of the patches at a time",
           noise="partition", sigma=1.0, sampler=Partitions),
)}
