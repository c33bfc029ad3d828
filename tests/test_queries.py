import threading

import numpy as np
import pytest

from blackbox import Budget, BudgetExceeded, ModelError, QueryRunner


class CountingSum:
    """A real (if tiny) model: the sum of each input; counts every input it was asked about."""

    def __init__(self):
        self.seen = 0

    def __call__(self, x):
        self.seen += len(x)
        return x.reshape(len(x), -1).sum(1)


def test_runner_batches_and_counts():
    fn = CountingSum()
    runner = QueryRunner(fn, batch_size=7)
    x = np.arange(30, dtype=float).reshape(15, 2)
    np.testing.assert_allclose(runner(x), x.sum(1))
    assert runner.record.queries == 15 and runner.record.calls == 3 and fn.seen == 15


def test_budget_refuses_before_the_query_that_would_overspend():
    fn = CountingSum()
    budget = Budget(max_queries=50)
    runner = QueryRunner(fn, budget=budget, batch_size=32)
    with pytest.raises(BudgetExceeded, match="budget exhausted: queries cap is 50"):
        runner(np.ones((64, 3)))
    assert fn.seen == 32 and budget.queries == 32  # the second chunk was never sent
    runner(np.ones((18, 3)))
    assert budget.queries == 50 and budget.remaining == 0
    with pytest.raises(BudgetExceeded):
        runner(np.ones((1, 3)))
    assert fn.seen == 50


def test_tokens_and_cost_reserved_then_settled_from_usage():
    budget = Budget(max_tokens=1000, max_cost=0.01)
    r = budget.reserve(1, tokens=600, cost=0.006)
    with pytest.raises(BudgetExceeded, match="tokens"):
        budget.reserve(1, tokens=600, cost=0.001)  # 600 held + 600 > 1000
    budget.settle(r, tokens=450, cost=0.0045)  # came in under the estimate
    r2 = budget.reserve(1, tokens=500, cost=0.005)
    budget.settle(r2)
    assert budget.tokens == 950 and budget.cost == pytest.approx(0.0095)
    with pytest.raises(BudgetExceeded, match="cost"):
        budget.reserve(1, tokens=10, cost=0.001)
    with pytest.raises(RuntimeError):
        budget.settle(r2)


def test_budget_is_exact_under_concurrent_reservations():
    budget = Budget(max_queries=100)
    granted = []

    def worker():
        for _ in range(60):
            try:
                budget.settle(budget.reserve(1))
                granted.append(1)
            except BudgetExceeded:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 100 and budget.queries == 100


def test_failed_local_call_is_released_and_bad_outputs_are_caught():
    budget = Budget(max_queries=10)

    def broken(x):
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        QueryRunner(broken, budget=budget)(np.ones((4, 1)))
    assert budget.queries == 0 and budget.remaining == 10
    with pytest.raises(ModelError, match="returned 1 scores for 3 inputs"):
        QueryRunner(lambda x: np.ones(1))(np.ones((3, 1)))
    with pytest.raises(ModelError, match="non-finite"):
        QueryRunner(lambda x: np.full(len(x), np.nan))(np.ones((3, 1)))


def test_deadline_stops_reservations_and_late_spending_is_still_recorded():
    import time

    budget = Budget(max_queries=10, max_seconds=0.2)
    r = budget.reserve(2)
    budget.grow(r, tokens=5)
    time.sleep(0.25)
    assert budget.seconds_left() <= 0
    with pytest.raises(BudgetExceeded, match="deadline"):
        budget.reserve(1)
    budget.settle(r, tokens=7)
    budget.record(1, tokens=3)  # an answer that arrived after its reservation was given back
    assert budget.queries == 3 and budget.tokens == 10
    assert Budget().seconds_left() is None
