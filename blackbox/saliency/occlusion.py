"""Occlusion: each cell removed alone, the rest of the image in place.

The classic baseline of saliency maps (Zeiler and Fergus 2014) as a sampler: the image itself,
then one query per cell with that cell mixed fully to the baseline (``m_c = 0``, every other
``m = 1``). A cell's value is the score's drop per unit of removal actually delivered,
``(f(x) - f(x without c)) / (1 - m_c delivered)``: its effect at the photo itself, with every
other cell present. ``cells + 1`` queries draw the whole map and a larger budget buys nothing more
(the queries are deterministic), so the sampler spends only those; a budget that stops it early
keeps the cells measured so far (the others read 0). One answer per cell gives no error estimate
(the standard errors are infinite).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..estimators import Estimator, GradientEstimate, LRMean, Samples
from .samplers import Job, Sampler, ask_in_chunks


class Occlusion(Sampler):
    """Each cell of a mask space removed alone; ``cells + 1`` queries."""

    name = "occlusion"

    def check(self, space, method, queries: int) -> None:
        if space.name != "mask":
            raise InputError(f"occlusion removes cells: it works in mask space, not {space.name} space")
        if queries < space.dim + 1:
            raise InputError(f"occlusion needs {space.dim + 1} queries on a grid of {space.dim} cells "
                             f"(the image and each cell removed once); got {queries}")

    def planned(self, queries: int, dim: int) -> int:
        return dim + 1

    def fit_queries(self, queries: int, dim: int) -> int:
        return dim + 1

    def default_estimator(self) -> Estimator:
        return LRMean()

    def sample(self, job: Job) -> GradientEstimate:
        dim = job.space.dim
        f = job.probe().f
        points = np.ones((dim + 1, dim))
        points[np.arange(1, dim + 1), np.arange(dim)] = 0.0  # row 0 the image, row c + 1 cell c removed
        est = GradientEstimate.empty(dim)
        est.m2 = np.zeros(dim)
        values, delivered, est.stopped = ask_in_chunks(f, points, job.runner.batch_size)
        est.queries = len(values)
        est.samples = self._record(est, values, delivered) if len(values) else Samples(np.zeros((0, dim)), np.zeros(0))
        return est

    @staticmethod
    def _record(est: GradientEstimate, values: np.ndarray, delivered: np.ndarray) -> Samples:
        """Fold the answers in (row 0 is the image itself); the samples: each cell's move and the
        change of score it caused."""
        est.f0, est.extras["image"] = float(values[0]), delivered[0]
        values, delivered = values[1:], delivered[1:]
        cells = np.arange(len(values))
        moved = delivered - est.extras["image"]
        size = moved[cells, cells]
        ok = size != 0
        est.mean[cells[ok]] = (values[ok] - est.f0) / size[ok]
        est.count[cells[ok]] = 1
        return Samples(moved[ok], values[ok] - est.f0)
