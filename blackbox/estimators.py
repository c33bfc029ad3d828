"""Likelihood-ratio (score-function) gradient estimates from forward queries only.

For a black box ``f`` and Gaussian noise ``z ~ N(0, sigma^2 I)``::

    grad E[f(c + z)] = E[f(c + z) z] / sigma^2

which is the gradient of the Gaussian-smoothed ``f`` (it tends to ``grad f(c)`` as sigma -> 0).
Every plain term carries the whole value ``f(c)`` as noise, so the estimator subtracts a control
variate, an object (:class:`ControlVariate`) passed by name or as itself:

* :class:`Antithetic` (``"antithetic"``, the default): ``(f(c+z) - f(c-z)) z / (2 sigma^2)``, 2
  queries per direction, exact for quadratics;
* :class:`Baseline` (``"baseline"``): ``(f(c+z) - f(c)) z / sigma^2``, one query for ``f(c)`` plus
  one per direction;
* :class:`Plain` (``"none"``): the plain identity (for teaching and tests).

Blockwise mode perturbs one block of coordinates at a time (``blocks``), so each block's estimate
fills its own coordinates only; ``allocation`` says how many queries each block gets.
The query function may return ``(values, delivered_points)`` when what reaches the model differs
from what was asked (clipping, 8-bit quantisation); the estimate then weights by the perturbation
actually delivered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from .errors import BudgetExceeded
from .noise import NoiseSource

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


class ControlVariate(Protocol):
    """How the queries of one perturbation direction become an LR term (see :func:`lr_gradient`).

    ``queries_per_direction``: the points each direction costs; ``needs_f0``: whether ``f(c)`` is
    queried first (unless given); ``per_direction_centre``: whether a centre drawn per direction
    (``center_fn``) is allowed. :meth:`points` gives the points to evaluate for ``m`` directions
    ``z`` (``(m, len(block))``) around ``centers`` (``(m, d)``); :meth:`combine` turns their answers
    and the points actually delivered into ``(moved, response)``: per direction the perturbation
    delivered (``(m, d)``) and the response it is weighted by.
    """

    name: str
    queries_per_direction: int
    needs_f0: bool
    per_direction_centre: bool

    def points(self, centers: np.ndarray, block: np.ndarray, z: np.ndarray) -> np.ndarray: ...

    def combine(self, values: np.ndarray, delivered: np.ndarray, centers: np.ndarray,
                f0: float | None) -> tuple[np.ndarray, np.ndarray]: ...


def _around(centers: np.ndarray) -> np.ndarray:
    """A writable float copy of the centres in their own memory order (column-major for a
    broadcast centre): ``f``'s reductions follow the layout of the points it gets, so every
    control hands it the same layout."""
    return np.array(centers, dtype=np.float64, copy=True)


class Antithetic:
    """``(f(c+z) - f(c-z)) z / (2 sigma^2)``: two queries per direction, exact for quadratics. The
    moved point is half the difference of the two delivered points, the response half the
    difference of the two answers."""

    name = "antithetic"
    queries_per_direction = 2
    needs_f0 = False
    per_direction_centre = True

    def points(self, centers, block, z):
        plus, minus = _around(centers), _around(centers)
        plus[:, block] += z
        minus[:, block] -= z
        return np.concatenate([plus, minus])

    def combine(self, values, delivered, centers, f0):
        m = len(values) // 2
        return (delivered[:m] - delivered[m:]) / 2.0, (values[:m] - values[m:]) / 2.0


class _OneSided:
    """One query per direction, ``f(c+z)`` less an offset: ``(moved, response)`` is the delivered
    point minus the centre and the answer minus :meth:`offset`."""

    queries_per_direction = 1

    def points(self, centers, block, z):
        plus = _around(centers)
        plus[:, block] += z
        return plus

    def combine(self, values, delivered, centers, f0):
        return delivered - np.asarray(centers), values - self.offset(f0)

    def offset(self, f0: float | None) -> float:
        raise NotImplementedError


class Baseline(_OneSided):
    """``(f(c+z) - f(c)) z / sigma^2``: one query for ``f(c)``, then one per direction; ``f(c)``
    is one value, so the centre must be fixed."""

    name = "baseline"
    needs_f0 = True
    per_direction_centre = False

    def offset(self, f0):
        return f0


class Plain(_OneSided):
    """``f(c+z) z / sigma^2``: the bare identity, one query per direction (for teaching and tests)."""

    name = "none"
    needs_f0 = False
    per_direction_centre = True

    def offset(self, f0):
        return 0.0


CONTROLS = {c.name: c for c in (Antithetic(), Baseline(), Plain())}


def control_variate(control: str | ControlVariate) -> ControlVariate:
    """The control variate named ``control`` (a key of ``CONTROLS``), or ``control`` itself."""
    if not isinstance(control, str):
        return control
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    return CONTROLS[control]


def lr_gradient(
    f: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]],
    center: np.ndarray,
    *,
    queries: int,
    sigma: float,
    control: str | ControlVariate = "antithetic",
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
    ``control``: a :class:`ControlVariate` or its name (``antithetic``, ``baseline``, ``none``).
    ``blocks``: optional list of index arrays that partition (or cover part of) the coordinates;
    each block is perturbed alone, with ``allocation[k]`` queries (default: an equal split).
    ``center_fn(rng, n)``, when given, draws a fresh centre per direction (an ``(n, d)`` array),
    as Integrated Gradients does with a random path position per query; a control that needs a
    fixed centre (baseline) is then unavailable.
    ``keep_samples`` keeps every direction and response in ``est.samples`` (for :class:`Regression`).
    If the budget runs out part-way, the estimate built from the queries already answered is
    returned with ``stopped`` set, so nothing paid for is lost.
    """
    control = control_variate(control)
    center, blocks, allocation = _plan(control, center, queries, sigma, blocks, allocation, f0, center_fn)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    sampler = _Sampler(f, center, sigma, control, rng, center_fn, keep_samples, len(blocks))
    try:
        if control.needs_f0 and f0 is None:
            f0 = sampler.value_at_centre()
        sampler.est.f0 = sampler.f0 = f0
        for k, (block, n_k) in enumerate(zip(blocks, allocation)):
            sampler.sample_block(k, block, int(n_k) // control.queries_per_direction, noise, chunk)
    except BudgetExceeded as exc:
        sampler.est.stopped = str(exc)
    return sampler.finish()


def _plan(control: ControlVariate, center, queries: int, sigma: float, blocks, allocation, f0, center_fn):
    """Validate the settings; returns the flat centre, the blocks and the queries of each block."""
    if sigma <= 0:
        raise ValueError("sigma must be > 0")
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    if blocks is None:
        blocks = [np.arange(center.size)]
    blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
    if center_fn is not None and not control.per_direction_centre:
        raise ValueError(f"the {control.name} control variate needs a fixed centre; use antithetic")
    first = 1 if control.needs_f0 and f0 is None else 0  # the query of f(c)
    if allocation is None:
        allocation = split_budget(max(queries - first, 0), len(blocks))
    allocation = np.asarray(allocation, dtype=np.int64)
    if len(allocation) != len(blocks):
        raise ValueError("allocation needs one entry per block")
    if queries < control.queries_per_direction + first:
        raise ValueError(f"{queries} queries are too few for the {control.name} estimator")
    return center, blocks, allocation


class _Sampler:
    """The running state of one :func:`lr_gradient` call: queries spent, statistics, samples."""

    def __init__(self, f, center, sigma, control, rng, center_fn, keep_samples, n_blocks):
        self.f, self.center, self.sigma, self.control, self.rng = f, center, sigma, control, rng
        self.center_fn, self.keep_samples = center_fn, keep_samples
        self.est = GradientEstimate.empty(center.size)
        self.est.block_variance = np.full(n_blocks, np.nan)
        self.f0: float | None = None
        self.used = 0
        self.kept: list[Samples] = []

    def value_at_centre(self) -> float:
        values, _ = _evaluate(self.f, self.center[None, :])
        self.used += 1
        return float(values[0])

    def sample_block(self, k: int, block: np.ndarray, directions: int, noise: str, chunk: int) -> None:
        """``directions`` directions in ``block``, asked ``chunk`` queries at a time; records the
        per-query variance of the block's estimate."""
        if directions == 0:
            return
        per = self.control.queries_per_direction
        source = NoiseSource(block.size, noise, self.rng)
        step = max(1, min(chunk // per, (1 << 22) // max(block.size, 1)))
        terms = np.concatenate([self.sample_chunk(block, source, min(step, directions - start))
                                for start in range(0, directions, step)])
        if len(terms) > 1:
            self.est.block_variance[k] = terms.var(axis=0, ddof=1).sum() * per

    def sample_chunk(self, block: np.ndarray, source: NoiseSource, m: int) -> np.ndarray:
        """Query ``m`` directions, merge their terms into the estimate and return them."""
        z = source.draw(m) * self.sigma
        if self.center_fn is not None:
            centers = self.center_fn(self.rng, m)
        else:
            centers = np.broadcast_to(self.center, (m, self.center.size))
        values, delivered = _evaluate(self.f, self.control.points(centers, block, z))
        self.used += self.control.queries_per_direction * m
        moved, response = self.control.combine(values, delivered, centers, self.f0)
        terms = response[:, None] * moved[:, block] / self.sigma ** 2
        if self.keep_samples:
            self.kept.append(Samples(moved, response))
        _welford_update(self.est, block, terms)
        return terms

    def finish(self) -> GradientEstimate:
        self.est.queries = self.used
        if self.keep_samples:
            dim = self.center.size
            self.est.samples = Samples.join(self.kept) if self.kept else Samples(np.zeros((0, dim)), np.zeros(0))
        return self.est


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
