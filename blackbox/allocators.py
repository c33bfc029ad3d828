"""Query allocators: how many queries each item of a batch gets (FLOPS, section 4 of the notes).

A step of forward learning over ``B`` items (examples, or blocks of an image) estimates each
item's gradient from ``n_i`` queries. With per-query variance ``V_i`` the combined estimate
(:func:`combine`, item ``i`` weighted by ``1/n_i``, so it is unbiased *whatever* the allocation)
has variance ``(1/B^2) sum_i V_i / n_i``; under ``sum_i n_i = N`` the optimum is the Neyman rule
``n_i ~ sqrt(V_i)``.

* ``uniform``: equal shares.
* ``neyman``: ``n_i ~ sqrt(V_i)`` from variances measured earlier (a pilot, or the item's previous
  visit); items with no estimate get the median of the others.
* ``flops``: the learned Gaussian allocator of FLOPS. Per batch, the (z-scored) item losses
  ``l_i`` give a Gaussian with mean ``a*l_i + c`` and covariance
  ``s^2 exp(-(l_i - l_j)^2 / (2 lam^2))``; a sample ``u`` gives weights ``exp(u_i)``, rescaled to
  the budget. After the step, :meth:`FlopsAllocator.update` moves ``(a, c, s, lam)`` along the
  score-function (LR) gradient of a reward against a running baseline. The default reward is the
  variance efficiency ``(sum sqrt V_i)^2 / (N sum V_i / n_i)`` (1 at the Neyman optimum), from the
  variances measured in the step; a loss improvement can be passed instead. Items are *not*
  weighted by copy count (the published code does that, which biases the objective).

Every allocator returns integers that sum exactly to the budget, honour ``floor`` and ``cap``
(``unit=2`` keeps every count even, for antithetic pairs), round by largest remainder, and are
reproducible under ``seed``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InputError

ALLOCATORS = ("uniform", "neyman", "flops")


def allocate_proportional(weights: Sequence[float], budget: int, *, floor: int = 0,
                          cap: int | None = None, unit: int = 1) -> np.ndarray:
    """Integers ``n_i`` summing exactly to ``budget``, as close to ``t * weights`` as allowed.

    The continuous solution is clipped to ``[floor, cap]`` (water-filling on ``t``), then rounded
    by largest remainder; counts are multiples of ``unit``.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    n = w.size
    if n == 0:
        raise InputError("cannot allocate queries to zero items")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("allocation weights must be finite and >= 0")
    if unit < 1 or budget % unit:
        raise InputError(f"a budget of {budget} queries is not a multiple of {unit} (antithetic pairs)")
    total = budget // unit
    lo = -(-floor // unit)  # ceil
    hi = None if cap is None else cap // unit
    if hi is not None and hi < lo:
        raise InputError(f"cap {cap} is below the floor {floor}")
    if n * lo > total:
        raise InputError(f"a budget of {budget} queries cannot give {n} items at least {floor} each")
    if hi is not None and n * hi < total:
        raise InputError(f"a budget of {budget} queries exceeds {n} items x cap {cap}")
    if w.sum() <= 0:
        w = np.ones(n)
    hi_arr = np.full(n, np.inf if hi is None else float(hi))

    def filled(t):
        return np.clip(t * w, lo, hi_arr)

    # bisection on t so that sum(clip(t w)) = total (monotone, continuous)
    t_lo, t_hi = 0.0, 1.0
    while filled(t_hi).sum() < total:
        t_hi *= 2.0
        if t_hi > 1e300:
            break
    for _ in range(200):
        mid = 0.5 * (t_lo + t_hi)
        if filled(mid).sum() < total:
            t_lo = mid
        else:
            t_hi = mid
    x = filled(t_hi)
    counts = np.floor(x + 1e-9).astype(np.int64)
    counts = np.clip(counts, lo, None if hi is None else hi)
    rest = total - int(counts.sum())
    if rest > 0:
        room = np.ones(n, bool) if hi is None else counts < hi
        remainder = np.where(room, x - counts, -np.inf)
        order = np.lexsort((np.arange(n), -remainder))  # largest remainder, ties by index
        order = [i for i in order if room[i]]
        for i in order[:rest]:
            counts[i] += 1
    elif rest < 0:  # float slack: take back from the smallest remainders above the floor
        remainder = np.where(counts > lo, x - counts, np.inf)
        for i in np.argsort(remainder, kind="stable")[: -rest]:
            counts[i] -= 1
    assert counts.sum() == total
    return counts * unit


def allocation_variance(variances: Sequence[float], counts: Sequence[int]) -> float:
    """``sum_i V_i / n_i``: the objective every allocator tries to minimise (up to ``1/B^2``)."""
    v = np.asarray(variances, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    return float(np.sum(v / n))


def neyman_efficiency(variances: Sequence[float], counts: Sequence[int]) -> float:
    """``(sum sqrt V_i)^2 / (N sum V_i/n_i)``: 1 at the (continuous) Neyman optimum, less elsewhere."""
    v = np.maximum(np.asarray(variances, dtype=np.float64), 0)
    n = np.asarray(counts, dtype=np.float64)
    obj = float(np.sum(v / n))
    if obj <= 0:
        return 1.0
    return float(np.sum(np.sqrt(v)) ** 2 / (n.sum() * obj))


def _impute(values, n_items: int) -> np.ndarray | None:
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size != n_items:
        raise InputError(f"{v.size} values for {n_items} items")
    ok = np.isfinite(v)
    if not ok.any():
        return None
    fill = float(np.median(v[ok]))
    return np.where(ok, v, fill)


class Allocator:
    """Base class: equal shares (``uniform``)."""

    name = "uniform"

    def __init__(self, *, floor: int = 2, cap: int | None = None, seed: int | None = None,
                 unit: int = 1):
        if floor < 0:
            raise InputError("floor must be >= 0")
        self.floor, self.cap, self.unit, self.seed = int(floor), cap, int(unit), seed
        self.rng = np.random.default_rng(seed)

    def weights(self, n_items: int, variances, losses) -> np.ndarray:
        return np.ones(n_items)

    def allocate(self, budget: int, n_items: int, *, variances=None, losses=None) -> np.ndarray:
        """Integer query counts for ``n_items`` items summing exactly to ``budget``."""
        if not isinstance(budget, (int, np.integer)) or budget < 0:
            raise InputError(f"budget must be a whole number >= 0, got {budget!r}")
        if n_items < 1:
            raise InputError("n_items must be >= 1")
        w = self.weights(n_items, variances, losses)
        return allocate_proportional(w, int(budget), floor=self.floor, cap=self.cap, unit=self.unit)

    def update(self, reward: float | None = None, *, variances=None, counts=None) -> None:
        """Learn from the step just taken (only FLOPS learns)."""


    # checkpointing: plain JSON-able state
    def state_dict(self) -> dict:
        return {"name": self.name, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise InputError(f"checkpoint holds a {state.get('name')!r} allocator, not {self.name!r}")
        self.rng.bit_generator.state = state["rng"]


class UniformAllocator(Allocator):
    name = "uniform"


class NeymanAllocator(Allocator):
    """``n_i ~ sqrt(V_i)``; uniform until variances are known."""

    name = "neyman"

    def weights(self, n_items, variances, losses):
        v = _impute(variances, n_items)
        if v is None:
            return np.ones(n_items)
        return np.sqrt(np.maximum(v, 0.0))


@dataclass
class _Sample:
    u: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    feats: np.ndarray


class FlopsAllocator(Allocator):
    """The FLOPS learned Gaussian allocator with parameters ``(a, c, s, lam)``.

    ``losses`` (or, if absent, log-variances) are the per-item features; without either the
    allocation is uniform. ``lr`` is the step size of the (normalised) policy-gradient update,
    ``beta`` the decay of the running reward baseline.
    """

    name = "flops"

    def __init__(self, *, floor: int = 2, cap: int | None = None, seed: int | None = None,
                 unit: int = 1, lr: float = 0.05, beta: float = 0.9, init_s: float = 0.3,
                 init_lam: float = 1.0, max_ratio: float = 20.0):
        super().__init__(floor=floor, cap=cap, seed=seed, unit=unit)
        # theta = (a, c, log s, log lam); c only shifts all weights, so it mostly rides along
        self.theta = np.array([0.0, 0.0, math.log(init_s), math.log(init_lam)])
        self.lr, self.beta, self.max_ratio = lr, beta, max_ratio
        self.baseline: float | None = None
        self.reward_var = 1.0
        self.steps = 0
        self._last: _Sample | None = None
        self._m, self._v, self._t = np.zeros(4), np.zeros(4), 0

    @property
    def params(self) -> dict:
        a, c, log_s, log_lam = self.theta
        return {"a": float(a), "c": float(c), "s": float(math.exp(log_s)), "lam": float(math.exp(log_lam))}

    def _features(self, n_items, variances, losses):
        raw = _impute(losses, n_items)
        if raw is None:
            v = _impute(variances, n_items)
            if v is None:
                return None
            raw = np.log(np.maximum(v, 1e-300))
        sd = raw.std()
        return (raw - raw.mean()) / sd if sd > 1e-12 else np.zeros(n_items)

    def _gaussian(self, feats):
        a, c, log_s, log_lam = self.theta
        s2, lam = math.exp(2 * log_s), math.exp(log_lam)
        diff2 = (feats[:, None] - feats[None, :]) ** 2
        kern = np.exp(-diff2 / (2 * lam ** 2))
        cov = s2 * kern + 1e-6 * np.eye(feats.size)
        return a * feats + c, cov, kern, diff2

    def weights(self, n_items, variances, losses):
        feats = self._features(n_items, variances, losses)
        if feats is None:
            self._last = None
            return np.ones(n_items)
        mean, cov, _, _ = self._gaussian(feats)
        chol = np.linalg.cholesky(cov)
        u = mean + chol @ self.rng.standard_normal(n_items)
        self._last = _Sample(u, mean, cov, feats)
        # clamp: no item gets more than max_ratio x another's weight
        u_c = np.clip(u - u.max(), -math.log(self.max_ratio), 0.0)
        return np.exp(u_c)

    def _score(self, sample: _Sample) -> np.ndarray:
        """d log N(u; mean, cov) / d theta for the last sample."""
        a, c, log_s, log_lam = self.theta
        s2, lam = math.exp(2 * log_s), math.exp(log_lam)
        _, _, kern, diff2 = self._gaussian(sample.feats)
        inv = np.linalg.inv(sample.cov)
        r = sample.u - sample.mean
        alpha = inv @ r
        d_mean = alpha  # d log p / d mean
        d_cov = 0.5 * (np.outer(alpha, alpha) - inv)
        g_a = float(d_mean @ sample.feats)
        g_c = float(d_mean.sum())
        g_log_s = float(np.sum(d_cov * (2 * s2 * kern)))
        g_log_lam = float(np.sum(d_cov * (s2 * kern * diff2 / lam ** 2)))
        return np.array([g_a, g_c, g_log_s, g_log_lam])

    def update(self, reward: float | None = None, *, variances=None, counts=None) -> None:
        """Policy-gradient step on ``(a, c, s, lam)`` from the last allocation's reward.

        Pass ``reward`` (e.g. a loss improvement; larger is better), or ``variances`` measured in
        the step with the ``counts`` used: the reward is then the Neyman efficiency.
        """
        if reward is None:
            if variances is None or counts is None:
                raise InputError("FLOPS update needs a reward, or variances and counts")
            v = np.asarray(variances, dtype=np.float64)
            ok = np.isfinite(v)
            if not ok.any():
                return
            reward = neyman_efficiency(v[ok], np.asarray(counts)[ok])
        reward = float(reward)
        if not math.isfinite(reward):
            return
        if self.baseline is None:
            self.baseline = reward
            self._last = None
            return
        advantage = reward - self.baseline
        self.reward_var = self.beta * self.reward_var + (1 - self.beta) * advantage ** 2
        self.baseline = self.beta * self.baseline + (1 - self.beta) * reward
        if self._last is not None:
            # Adam ascent on the normalised advantage x score (the LR / REINFORCE gradient)
            grad = self._score(self._last) * advantage / math.sqrt(self.reward_var + 1e-12)
            self._t += 1
            self._m = 0.9 * self._m + 0.1 * grad
            self._v = 0.999 * self._v + 0.001 * grad ** 2
            m_hat = self._m / (1 - 0.9 ** self._t)
            v_hat = self._v / (1 - 0.999 ** self._t)
            self.theta = self.theta + self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            self.theta[2] = np.clip(self.theta[2], math.log(0.1), math.log(3.0))
            self.theta[3] = np.clip(self.theta[3], math.log(0.05), math.log(20.0))
            self.theta[:2] = np.clip(self.theta[:2], -5.0, 5.0)
        self.steps += 1
        self._last = None


    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(theta=self.theta.tolist(), baseline=self.baseline, reward_var=self.reward_var,
                     steps=self.steps, adam=[self._m.tolist(), self._v.tolist(), self._t])
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.theta = np.asarray(state["theta"], dtype=np.float64)
        self.baseline, self.reward_var, self.steps = state["baseline"], state["reward_var"], state["steps"]
        m, v, t = state["adam"]
        self._m, self._v, self._t = np.asarray(m, dtype=np.float64), np.asarray(v, dtype=np.float64), int(t)


_CLASSES = {"uniform": UniformAllocator, "neyman": NeymanAllocator, "flops": FlopsAllocator}


def make_allocator(name: str | Allocator, *, floor: int = 2, cap: int | None = None,
                   seed: int | None = None, unit: int = 1, **options) -> Allocator:
    """``uniform`` | ``neyman`` | ``flops`` (an :class:`Allocator` instance is passed through)."""
    if isinstance(name, Allocator):
        return name
    if name not in _CLASSES:
        raise InputError(f"unknown allocator {name!r}; choose from {', '.join(ALLOCATORS)}")
    return _CLASSES[name](floor=floor, cap=cap, seed=seed, unit=unit, **options)


@dataclass
class Combined:
    """The combined estimate: ``grad`` (mean over items of each item's mean), and its variance."""

    grad: np.ndarray
    variance: float            # estimated trace variance of ``grad`` (nan if not estimable)
    item_variance: np.ndarray  # per-query trace variance of each item (nan with < 2 terms)


def combine(per_item_estimates, counts: Sequence[int] | None = None) -> Combined:
    """Unbiased combination: ``(1/B) sum_i (1/n_i) sum_j term_ij``.

    ``per_item_estimates`` is either a list of ``(n_i, d)`` arrays of single-query terms (counts
    are their lengths), or a ``(B, d)`` array of per-item *sums* of terms with ``counts``.
    Weighting each item by ``1/n_i`` keeps the estimate unbiased for any allocation; weighting by
    copy count (``sum / sum n``) would not.
    """
    if isinstance(per_item_estimates, (list, tuple)) and counts is None:
        terms = [np.atleast_2d(np.asarray(t, dtype=np.float64)) for t in per_item_estimates]
        if not terms:
            raise InputError("nothing to combine")
        if any(len(t) == 0 for t in terms):
            raise InputError("every item needs at least one query term")
        means = np.stack([t.mean(0) for t in terms])
        n = np.array([len(t) for t in terms], dtype=np.float64)
        item_var = np.array([t.var(0, ddof=1).sum() if len(t) > 1 else np.nan for t in terms])
        b = len(terms)
        var = float(np.sum(item_var / n) / b ** 2) if np.all(np.isfinite(item_var)) else float("nan")
        return Combined(means.mean(0), var, item_var)
    sums = np.asarray(per_item_estimates, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if counts is None or n.shape != sums.shape[:1]:
        raise InputError("per-item sums need one count per item")
    if np.any(n <= 0):
        raise InputError("every item needs at least one query")
    means = sums / n.reshape((-1,) + (1,) * (sums.ndim - 1))
    return Combined(means.mean(0), float("nan"), np.full(len(n), np.nan))
