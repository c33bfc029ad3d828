"""Likelihood-ratio (score-function) gradient estimates from forward queries only.

For a black box ``f`` and Gaussian noise ``z ~ N(0, sigma^2 I)``::

    grad E[f(c + z)] = E[f(c + z) z] / sigma^2

which is the gradient of the Gaussian-smoothed ``f`` (it tends to ``grad f(c)`` as sigma -> 0).
The plain form is useless in practice; the estimator always offers a control variate:

* ``antithetic`` (default): ``(f(c+z) - f(c-z)) z / (2 sigma^2)``, 2 queries per direction, exact
  for quadratics;
* ``baseline``: ``(f(c+z) - f(c)) z / sigma^2``, one query for ``f(c)`` plus one per direction;
* ``none``: the plain identity (for teaching and tests).

Blockwise mode perturbs one block of coordinates at a time (``blocks``), so each block's estimate
fills its own coordinates only; ``allocation`` says how many queries each block gets.
The query function may return ``(values, delivered_points)`` when what reaches the model differs
from what was asked (clipping, 8-bit quantisation); the estimate then weights by the perturbation
actually delivered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import BudgetExceeded
from .noise import NoiseSource

CONTROLS = ("antithetic", "baseline", "none")


@dataclass
class Samples:
    """The raw material of an estimate, kept for estimators that fit all of it at once: per
    direction, the perturbation delivered (``(n, d)``; for antithetic pairs half the difference of
    the two delivered points) and the response (half the difference of the two answers, or the
    answer minus the control ``f(c)``)."""

    directions: np.ndarray
    responses: np.ndarray

    def __len__(self) -> int:
        return len(self.responses)

    @classmethod
    def join(cls, parts: Sequence["Samples"]) -> "Samples":
        return cls(np.concatenate([p.directions for p in parts]), np.concatenate([p.responses for p in parts]))


@dataclass
class GradientEstimate:
    """A gradient estimate with its per-coordinate standard error.

    ``count``/``mean``/``m2`` are per-coordinate running statistics of the single-direction terms
    (Welford), so estimates from several rounds merge exactly with :meth:`merge`.
    """

    mean: np.ndarray
    m2: np.ndarray
    count: np.ndarray
    queries: int = 0
    f0: float | None = None
    stopped: str | None = None  # why the estimate stopped short of its plan (e.g. budget)
    block_variance: np.ndarray | None = None  # per-query variance of each block's estimate
    extras: dict = field(default_factory=dict)
    samples: Samples | None = field(default=None, repr=False)  # with keep_samples=True

    @property
    def grad(self) -> np.ndarray:
        return self.mean

    @property
    def stderr(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(self.count > 1, self.m2 / np.maximum(self.count - 1, 1), np.inf)
            return np.sqrt(var / np.maximum(self.count, 1))

    def merge(self, other: "GradientEstimate") -> "GradientEstimate":
        n1, n2 = self.count, other.count
        n = n1 + n2
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, n2 / np.maximum(n, 1), 0.0)
        mean = self.mean + delta * frac
        m2 = self.m2 + other.m2 + delta ** 2 * np.where(n > 0, n1 * n2 / np.maximum(n, 1), 0.0)
        kept = [e.samples for e in (self, other) if e.samples is not None]
        return GradientEstimate(mean, m2, n, self.queries + other.queries,
                                self.f0 if self.f0 is not None else other.f0,
                                other.stopped or self.stopped, samples=Samples.join(kept) if kept else None)

    @classmethod
    def empty(cls, dim: int) -> "GradientEstimate":
        return cls(np.zeros(dim), np.zeros(dim), np.zeros(dim, dtype=np.int64))


def _evaluate(f: Callable, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = f(points)
    if isinstance(result, tuple):
        values, delivered = result
        return np.asarray(values, dtype=np.float64), np.asarray(delivered, dtype=np.float64)
    return np.asarray(result, dtype=np.float64), points


def split_budget(total: int, parts: int, floor: int = 0) -> np.ndarray:
    """Split ``total`` integer queries into ``parts`` near-equal integers that sum to ``total``."""
    base = np.full(parts, total // parts, dtype=np.int64)
    base[: total % parts] += 1
    return np.maximum(base, floor)


def lr_gradient(
    f: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]],
    center: np.ndarray,
    *,
    queries: int,
    sigma: float,
    control: str = "antithetic",
    noise: str = "gaussian",
    blocks: Sequence[np.ndarray] | None = None,
    allocation: Sequence[int] | None = None,
    seed: int | np.random.Generator | None = None,
    f0: float | None = None,
    chunk: int = 64,
    center_fn: Callable[[np.random.Generator, int], np.ndarray] | None = None,
    keep_samples: bool = False,
) -> GradientEstimate:
    """Estimate ``grad f`` at ``center`` (a flat vector) with ``queries`` forward queries.

    ``f`` maps an ``(n, d)`` array of points to ``n`` floats (or to ``(values, delivered)``).
    ``blocks``: optional list of index arrays that partition (or cover part of) the coordinates;
    each block is perturbed alone, with ``allocation[k]`` queries (default: an equal split).
    ``center_fn(rng, n)``, when given, draws a fresh centre per direction (an ``(n, d)`` array),
    as Integrated Gradients does with a random path position per query; the baseline control
    variate is then unavailable.
    ``keep_samples`` keeps every direction and response in ``est.samples`` (for :class:`Regression`).
    If the budget runs out part-way, the estimate built from the queries already answered is
    returned with ``stopped`` set, so nothing paid for is lost.
    """
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    if sigma <= 0:
        raise ValueError("sigma must be > 0")
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    dim = center.size
    if blocks is None:
        blocks = [np.arange(dim)]
    blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
    per_query = 2 if control == "antithetic" else 1
    if control == "baseline" and center_fn is not None:
        raise ValueError("the baseline control variate needs a fixed centre; use antithetic")
    if allocation is None:
        spend = queries - (1 if control == "baseline" and f0 is None else 0)
        allocation = split_budget(max(spend, 0), len(blocks))
    allocation = np.asarray(allocation, dtype=np.int64)
    if len(allocation) != len(blocks):
        raise ValueError("allocation needs one entry per block")
    if queries < per_query + (1 if control == "baseline" and f0 is None else 0):
        raise ValueError(f"{queries} queries are too few for the {control} estimator")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    est = GradientEstimate.empty(dim)
    est.block_variance = np.full(len(blocks), np.nan)
    used = 0
    kept: list[Samples] = []
    try:
        if control == "baseline" and f0 is None:
            values, _ = _evaluate(f, center[None, :])
            used += 1
            f0 = float(values[0])
        est.f0 = f0
        for k, (block, n_k) in enumerate(zip(blocks, allocation)):
            directions = int(n_k) // per_query
            if directions == 0:
                continue
            source = NoiseSource(block.size, noise, rng)
            step = max(1, min(chunk // per_query, (1 << 22) // max(block.size, 1)))
            block_terms: list[np.ndarray] = []
            for start in range(0, directions, step):
                m = min(step, directions - start)
                z = source.draw(m) * sigma
                centers = center_fn(rng, m) if center_fn is not None else np.broadcast_to(center, (m, dim))
                plus = np.array(centers, dtype=np.float64, copy=True)
                plus[:, block] += z
                if control == "antithetic":
                    minus = np.array(centers, dtype=np.float64, copy=True)
                    minus[:, block] -= z
                    values, delivered = _evaluate(f, np.concatenate([plus, minus]))
                    used += 2 * m
                    fp, fm = values[:m], values[m:]
                    moved = (delivered[:m] - delivered[m:]) / 2.0
                    response = (fp - fm) / 2.0
                else:
                    values, delivered = _evaluate(f, plus)
                    used += m
                    moved = delivered - np.asarray(centers)
                    response = values - (f0 if control == "baseline" else 0.0)
                terms = response[:, None] * moved[:, block] / sigma ** 2
                if keep_samples:
                    kept.append(Samples(moved, response))
                _welford_update(est, block, terms)
                block_terms.append(terms)
            all_terms = np.concatenate(block_terms)
            if len(all_terms) > 1:
                est.block_variance[k] = all_terms.var(axis=0, ddof=1).sum() * per_query
    except BudgetExceeded as exc:
        est.stopped = str(exc)
    est.queries = used
    if keep_samples:
        est.samples = Samples.join(kept) if kept else Samples(np.zeros((0, dim)), np.zeros(0))
    return est


def _welford_update(est: GradientEstimate, block: np.ndarray, terms: np.ndarray) -> None:
    """Merge a batch of single-direction terms into the running statistics of ``block``."""
    n_b = terms.shape[0]
    mean_b = terms.mean(0)
    m2_b = ((terms - mean_b) ** 2).sum(0)
    n_a = est.count[block]
    mean_a = est.mean[block]
    n = n_a + n_b
    delta = mean_b - mean_a
    est.mean[block] = mean_a + delta * n_b / n
    est.m2[block] = est.m2[block] + m2_b + delta ** 2 * n_a * n_b / n
    est.count[block] = n


class Estimator:
    """How the answers of a saliency run become one value per coordinate: ``fit(estimate, prior)
    -> (values, standard errors)``. ``keep_samples`` asks the sampler to keep every direction and
    response (a regression reads them all); ``for_budget(queries)`` is the estimator as set for a
    run whose fit reads that many queries (a prior that fades with the data overrides it)."""

    name = "estimator"
    keep_samples = False

    def fit(self, est: GradientEstimate, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def for_budget(self, queries: int) -> "Estimator":
        return self


class LRMean(Estimator):
    """The plain likelihood-ratio mean: unbiased, with per-coordinate standard errors from the
    spread of its terms. The reference every other estimator is judged against."""

    name = "lr"

    def fit(self, est: GradientEstimate, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return est.mean, est.stderr


PRIOR_QUERIES = 1000
"""Up to this many queries the smoothness prior weighs ``smoothness`` times the data's weight per
coordinate; beyond it the prior stays as strong as it was here, so it fades relative to the data
and the fit converges to plain least squares as the budget grows."""


def prior_weight(smoothness: float | None, queries: int) -> float | None:
    """The smoothness a fit of ``queries`` queries uses: ``smoothness`` up to
    :data:`PRIOR_QUERIES`, ``smoothness * PRIOR_QUERIES / queries`` beyond (``None``,
    cross-validation, stays ``None``)."""
    if smoothness is None or queries <= PRIOR_QUERIES:
        return smoothness
    return smoothness * PRIOR_QUERIES / queries


class Regression(Estimator):
    """Least squares over the same queries: fit every response ``r_i ~ z_i . g``.

    The LR mean treats the share of every other coordinate in ``r_i`` as noise, so each
    coordinate's variance carries the sum of all squared gradient entries; least squares removes
    that cross-talk (LIME and KernelSHAP are regressions too). The fit is regularised by
    ``w (smoothness g' P g + ridge |g|^2)`` with ``P`` the space's smoothness penalty (the sum of
    squared differences between neighbouring cells) and ``w = trace(Z'Z) / d``, the data's weight
    per coordinate, so both numbers are relative to the data. ``smoothness=None`` chooses it by
    generalised cross-validation from ``GCV_GRID``. Standard errors come from the residuals and
    the regularised normal equations (they leave out the prior's bias).
    """

    name = "ridge"
    keep_samples = True
    GCV_GRID = tuple(10.0 ** np.arange(-3, 1.01, 0.5))

    def __init__(self, smoothness: float | None = 0.3, ridge: float = 0.003):
        if (smoothness is not None and smoothness < 0) or ridge < 0:
            raise ValueError("smoothness and ridge must be >= 0")
        self.smoothness, self.ridge = smoothness, ridge

    def for_budget(self, queries: int) -> "Regression":
        """The prior as strong, relative to the data, as :func:`prior_weight` sets it for ``queries``."""
        return Regression(prior_weight(self.smoothness, queries), self.ridge)

    def fit(self, est: GradientEstimate, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if est.samples is None:
            raise ValueError("the regression needs the samples: estimate with keep_samples=True")
        z, r = est.samples.directions, est.samples.responses
        dim = z.shape[1]
        if len(r) == 0:
            return np.zeros(dim), np.full(dim, np.inf)
        smooth = np.zeros((dim, dim))
        if prior is not None:
            smooth[:len(prior), :len(prior)] = prior
        gram, zr = z.T @ z, z.T @ r
        weight = max(float(np.trace(gram)) / dim, 1e-300)
        best = None
        for lam in self.GCV_GRID if self.smoothness is None else (self.smoothness,):
            inverse = np.linalg.pinv(gram + weight * (lam * smooth + self.ridge * np.eye(dim)), hermitian=True)
            g = inverse @ zr
            residual = r - z @ g
            dof = float(np.sum(inverse * gram))  # trace(inverse @ gram): both symmetric
            gcv = float(residual @ residual) / max(len(r) - dof, 1e-9) ** 2
            if best is None or gcv < best[0]:
                best = (gcv, lam, g, float(residual @ residual), dof, inverse)
        _, lam, g, rss, dof, inverse = best
        noise = rss / max(len(r) - dof, 1.0)
        var = noise * np.einsum("ij,jk,ki->i", inverse, gram, inverse)
        est.extras["smoothness"] = lam
        return g, np.sqrt(np.maximum(var, 0.0))


ESTIMATORS = {LRMean.name: LRMean, Regression.name: Regression}
