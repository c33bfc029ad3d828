"""Allocators against brute force, exact budgets, floors/caps, seeds, and unbiased combination."""
import itertools

import numpy as np
import pytest

from blackbox.allocators import (allocate_proportional, allocation_variance, combine, make_allocator,
                                 neyman_efficiency)
from blackbox.errors import InputError


def brute_force(variances, budget, floor, cap=None, unit=1):
    """The exact integer minimiser of sum V_i / n_i by enumeration (small cases only)."""
    n = len(variances)
    best, best_counts = np.inf, None
    hi = cap if cap is not None else budget
    values = range(floor, hi + 1, unit) if floor % unit == 0 else range(unit, hi + 1, unit)
    for counts in itertools.product(values, repeat=n - 1):
        last = budget - sum(counts)
        if last < floor or last > hi or last % unit:
            continue
        c = np.array(list(counts) + [last])
        obj = allocation_variance(variances, c)
        if obj < best:
            best, best_counts = obj, c
    return best, best_counts


@pytest.mark.parametrize("name", ["uniform", "neyman", "flops"])
def test_counts_sum_exactly_and_honour_floor_cap_unit(name):
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 12))
        unit = int(rng.choice([1, 2]))
        floor = unit * int(rng.integers(0, 3))
        cap = None if rng.random() < 0.5 else floor + unit * int(rng.integers(1, 30))
        lo = n * floor
        hi = n * cap if cap is not None else lo + 300
        budget = unit * int(rng.integers(-(-lo // unit), hi // unit + 1))
        v = np.exp(rng.normal(size=n) * 2)
        counts = make_allocator(name, floor=floor, cap=cap, seed=trial, unit=unit).allocate(
            budget, n, variances=v, losses=np.log(v))
        assert counts.dtype.kind == "i"
        assert counts.sum() == budget
        assert np.all(counts >= floor)
        assert cap is None or np.all(counts <= cap)
        assert np.all(counts % unit == 0)


def test_neyman_matches_brute_force_on_small_cases():
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(60):
        n = int(rng.integers(2, 5))
        v = np.exp(rng.normal(size=n) * 1.5)
        budget = int(rng.integers(2 * n, 2 * n + 25))
        cap = None if rng.random() < 0.6 else int(rng.integers(max(3, -(-budget // n)), budget))
        if cap is not None and cap * n < budget:
            cap = None
        best, _ = brute_force(v, budget, floor=2, cap=cap)
        counts = make_allocator("neyman", floor=2, cap=cap).allocate(budget, n, variances=v)
        obj = allocation_variance(v, counts)
        gaps.append(obj / best)
        assert obj <= best * 1.10, (v, budget, cap, counts)
    # largest-remainder rounding of the Neyman rule is exactly optimal in most cases
    assert np.mean(np.isclose(gaps, 1.0)) > 0.7
    uniform = allocation_variance(v, make_allocator("uniform", floor=2).allocate(budget, n))
    assert allocation_variance(v, counts) <= uniform + 1e-12


def test_neyman_is_sqrt_variance_proportional_and_beats_uniform():
    v = np.array([1.0, 4.0, 16.0, 64.0])
    counts = make_allocator("neyman", floor=0).allocate(150, 4, variances=v)
    assert counts.tolist() == [10, 20, 40, 80]
    assert neyman_efficiency(v, counts) == pytest.approx(1.0)
    uni = make_allocator("uniform").allocate(150, 4)
    assert allocation_variance(v, counts) < 0.75 * allocation_variance(v, uni)


def test_neyman_without_variances_is_uniform_and_imputes_missing():
    a = make_allocator("neyman")
    assert a.allocate(40, 4).tolist() == [10, 10, 10, 10]
    counts = a.allocate(40, 4, variances=[np.nan, 1.0, 1.0, 100.0])
    assert counts[0] == counts[1] == counts[2] < counts[3]


def test_flops_is_reproducible_under_seed_and_learns_the_neyman_slope():
    losses = np.arange(8.0)
    v = np.exp(losses) / 100  # variance grows with loss, as for misclassified examples
    runs = []
    for _ in range(2):
        f = make_allocator("flops", seed=7)
        effs, allocs = [], []
        for _ in range(200):
            counts = f.allocate(64, 8, losses=losses)
            allocs.append(counts)
            effs.append(neyman_efficiency(v, counts))
            f.update(variances=v, counts=counts)
        runs.append((np.array(allocs), np.array(effs), f.params))
    assert np.array_equal(runs[0][0], runs[1][0])
    allocs, effs, params = runs[0]
    uniform_eff = neyman_efficiency(v, [8] * 8)
    assert effs[-50:].mean() > 0.9 > uniform_eff + 0.3
    assert params["a"] > 0.5  # more queries to higher-loss items


def test_flops_state_round_trip_continues_identically():
    f = make_allocator("flops", seed=3)
    for _ in range(5):
        c = f.allocate(32, 4, losses=[0, 1, 2, 3])
        f.update(variances=[1, 2, 4, 8], counts=c)
    g = make_allocator("flops", seed=99)
    g.load_state_dict(f.state_dict())
    assert np.array_equal(f.allocate(32, 4, losses=[0, 1, 2, 3]), g.allocate(32, 4, losses=[0, 1, 2, 3]))


def test_bad_requests_are_clear_errors():
    with pytest.raises(InputError, match="cannot give"):
        make_allocator("uniform", floor=2).allocate(5, 3)
    with pytest.raises(InputError, match="exceeds"):
        make_allocator("uniform", floor=2, cap=4).allocate(20, 3)
    with pytest.raises(InputError, match="multiple of 2"):
        make_allocator("uniform", unit=2).allocate(21, 3)
    with pytest.raises(InputError, match="unknown allocator"):
        make_allocator("greedy")
    with pytest.raises(InputError):
        allocate_proportional([1, -1], 10)


def test_combine_is_unbiased_for_any_allocation_and_copy_weighting_is_not():
    # item i's single-query term: g_i + noise; skewed counts; true mean gradient = mean_i g_i
    rng = np.random.default_rng(0)
    g = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, -3.0]])
    counts = [2, 3, 25]
    reps = 4000
    ours, copy = np.zeros((reps, 2)), np.zeros((reps, 2))
    for r in range(reps):
        terms = [g[i] + rng.normal(size=(n, 2)) for i, n in enumerate(counts)]
        ours[r] = combine(terms).grad
        copy[r] = np.concatenate(terms).mean(0)  # the copy-count weighting
    truth = g.mean(0)
    se = ours.std(0) / np.sqrt(reps)
    assert np.all(np.abs(ours.mean(0) - truth) < 4 * se)
    assert np.any(np.abs(copy.mean(0) - truth) > 20 * se)
    # the variance formula (1/B^2) sum V_i/n_i matches the empirical variance
    est = combine([g[i] + rng.normal(size=(n, 2)) for i, n in enumerate(counts)])
    predicted = sum(2.0 / n for n in counts) / 9
    assert ours.var(0).sum() == pytest.approx(predicted, rel=0.1)
    assert np.isfinite(est.variance)
    # per-item sums with counts give the same answer
    terms = [g[i] + rng.normal(size=(n, 2)) for i, n in enumerate(counts)]
    sums = np.stack([t.sum(0) for t in terms])
    assert np.allclose(combine(sums, counts).grad, combine(terms).grad)
