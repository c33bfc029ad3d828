"""Rationing a saliency budget across blocks: lower variance where blocks differ, early stopping."""
import numpy as np
import pytest

from blackbox.errors import InputError
from blackbox.saliency.rationing import rationed_gradient


def heterogeneous_linear(d_block=10, scales=(0.1, 0.3, 1.0, 3.0)):
    blocks = [np.arange(i * d_block, (i + 1) * d_block) for i in range(len(scales))]
    g = np.concatenate([np.full(d_block, s) for s in scales])
    return (lambda x: x @ g), g, blocks


def test_neyman_rationing_halves_the_error_of_an_equal_split():
    f, g, blocks = heterogeneous_linear()
    mse = {}
    for name in ("uniform", "neyman"):
        errs = [np.sum((rationed_gradient(f, np.zeros(g.size), queries=400, sigma=0.1, blocks=blocks,
                                          allocator=name, rounds=4, seed=s).mean - g) ** 2)
                for s in range(60)]
        mse[name] = np.mean(errs)
    assert mse["neyman"] < 0.7 * mse["uniform"]


def test_rounds_spend_the_budget_exactly_and_stay_unbiased():
    f, g, blocks = heterogeneous_linear()
    ests = [rationed_gradient(f, np.zeros(g.size), queries=200, sigma=0.1, blocks=blocks,
                              allocator="neyman", rounds=3, seed=s) for s in range(200)]
    assert all(e.queries == 200 for e in ests)
    for e in ests[:3]:
        assert sum(sum(r["allocation"]) for r in e.extras["rounds"]) == 200
    mean = np.mean([e.mean for e in ests], axis=0)
    se = np.std([e.mean for e in ests], axis=0) / np.sqrt(len(ests))
    assert np.all(np.abs(mean - g) < 5 * se + 1e-9)


def test_target_error_stops_early_and_reports_the_saved_queries():
    f, g, blocks = heterogeneous_linear()
    est = rationed_gradient(f, np.zeros(g.size), queries=4000, sigma=0.1, blocks=blocks,
                            allocator="neyman", rounds=20, target_error=0.3, seed=0)
    assert est.extras["relative_error"] <= 0.3
    assert est.queries < 4000 and est.extras["queries_saved"] == 4000 - est.queries
    assert "target error" in est.stopped


def test_bad_rationing_requests_are_clear_errors():
    f, g, blocks = heterogeneous_linear()
    with pytest.raises(InputError, match="too few"):
        rationed_gradient(f, np.zeros(g.size), queries=10, sigma=0.1, blocks=blocks)
    with pytest.raises(InputError, match="antithetic"):
        rationed_gradient(f, np.zeros(g.size), queries=100, sigma=0.1, blocks=blocks, control="baseline")


@pytest.mark.slow
def test_saliency_on_the_embedded_model_with_an_allocator_and_target_error(model, coffee):
    from blackbox.queries import Budget, QueryRunner
    from blackbox.saliency import saliency

    working = coffee
    target = model.resolve_target(None, working)
    budget = Budget(max_queries=480)
    runner = QueryRunner(model.score_fn(target), budget=budget)
    res = saliency(runner, working, queries=480, grid=8, blocks=4, method="vanilla",
                   allocator="neyman", rounds=3, seed=0)
    assert res.queries == budget.queries == 480 and res.allocator == "neyman"
    rounds = res.estimate.extras["rounds"]
    assert len(rounds) == 3 and len(set(map(tuple, (r["allocation"] for r in rounds[1:])))) >= 1
    assert np.isfinite(res.cells).all() and np.abs(res.cells).sum() > 0
    loose = saliency(model.score_fn(target), working, queries=2000, grid=8, blocks=4, method="vanilla",
                     allocator="neyman", rounds=8, target_error=5.0, seed=0)
    assert loose.queries == 250 and loose.queries_saved == 1750
    assert loose.summary()["queries_saved"] == 1750
