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
* ``ig-steps`` (mask space): Integrated Gradients without random directions: at fixed midpoints
  of the path each patch is nudged alone (``noise="coordinate"``: finite differences; see
  :mod:`blackbox.saliency.path_steps`). The same map from any seed, and the one that agrees with
  white-box IG; ``queries // (patches + 1)`` path points. Its differences are read by the plain
  mean (``lr``): the smoothness prior of ``ridge`` only blurs them (tuning photos, 1000 queries:
  rho with white-box IG 0.67 with ``lr``, 0.65 with ``ridge``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .path_steps import STEP


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    path: bool = False         # a fresh random position on the baseline -> image path per direction
    times_input: bool = False  # the map is gradient x (input - baseline) (implicit in mask space)
    smoothing: bool = False    # widen the noise by the space's SmoothGrad scale
    center: str = "input"      # where the noise is centred: the input, or "half" (m = 1/2 in mask space)
    noise: str = "gaussian"    # the direction family it queries with by default
    default_sigma: float | None = None  # its own noise scale (else the space's)
    default_estimator: str = "ridge"    # how its answers become a map unless told otherwise

    def sigma(self, space, sigma: float | None = None, smooth: float | None = None) -> float:
        """The noise scale this method queries with in ``space`` (defaults from the method or space)."""
        default = self.default_sigma if self.default_sigma is not None else space.default_sigma
        value = float(sigma if sigma is not None else default)
        if value <= 0:
            raise InputError("sigma must be > 0")
        if self.smoothing:
            extra = smooth if smooth is not None else space.default_smooth
            value = float(np.sqrt(value ** 2 + extra ** 2))
        return value


METHODS = {m.name: m for m in (
    Method("vanilla", "the gradient at the image"),
    Method("smoothgrad", "the gradient of the image smoothed by wider noise", smoothing=True),
    Method("ig", "Integrated Gradients from the baseline to the image", path=True, times_input=True),
    Method("gradxinput", "gradient x (input - baseline)", times_input=True),
    Method("banzhaf", "the mean effect of removing each patch among random halves of the others",
           center="half", noise="hadamard", default_sigma=0.5),
    Method("ig-steps", "Integrated Gradients from one-patch steps at fixed points on the path",
           path=True, times_input=True, noise="coordinate", default_sigma=STEP, default_estimator="lr"),
)}
