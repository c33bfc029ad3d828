"""forward_train recovers known optima from loss queries only; resume pays nothing twice."""
import numpy as np
import pytest

from blackbox.errors import InputError
from blackbox.forward_learning import forward_train
from blackbox.queries import Budget


def quadratic_task(seed=0, n=20, d=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, d))
    weights = np.exp(rng.normal(size=n) * 1.5)

    def loss(thetas, items):
        return 0.5 * weights[items] * np.sum((thetas - centres[items]) ** 2, axis=1)

    optimum = (weights[:, None] * centres).sum(0) / weights.sum()
    return loss, optimum


def counting(loss, calls: list):
    """``loss`` that records how many queries each call sends."""
    def counted(thetas, items):
        calls.append(len(thetas))
        return loss(thetas, items)

    return counted


@pytest.mark.parametrize("allocator", ["uniform", "neyman", "flops"])
def test_quadratic_optimum_is_recovered(allocator):
    loss, optimum = quadratic_task()
    start = np.full(5, 3.0)
    res = forward_train(loss, start, 20, batch_size=10, queries_per_step=60, steps=300, sigma=0.1,
                        lr=0.05, allocator=allocator, seed=1)
    assert np.linalg.norm(res.theta - optimum) < 0.1 * np.linalg.norm(start - optimum)
    assert res.queries == 300 * 60
    assert all(sum(h["allocation"]) == 60 and min(h["allocation"]) >= 2 for h in res.history)
    queries, losses = res.curve("loss")
    assert losses[-20:].mean() < 0.5 * losses[:5].mean()


def test_logistic_regression_on_real_data_reaches_whitebox_accuracy():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    x = np.hstack([x, np.ones((len(x), 1))])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:400], order[400:]

    def loss(thetas, items):
        z = np.sum(thetas * x[train][items], axis=1)
        return np.logaddexp(0, -z * (2 * y[train][items] - 1))

    def accuracy(theta):
        return {"accuracy": float(np.mean((x[test] @ theta > 0) == y[test]))}

    res = forward_train(loss, np.zeros(x.shape[1]), len(train), batch_size=16, queries_per_step=64,
                        steps=250, sigma=0.05, lr=0.05, allocator="neyman", seed=0,
                        eval_fn=accuracy, eval_every=50)
    white = LogisticRegression(max_iter=2000).fit(x[train][:, :-1], y[train]).score(x[test][:, :-1], y[test])
    assert res.evals[0]["accuracy"] < 0.7
    assert res.evals[-1]["accuracy"] >= white - 0.03
    assert [e["step"] for e in res.evals] == [0, 50, 100, 150, 200, 250]


def test_resume_from_checkpoint_is_identical_and_pays_nothing_twice(tmp_path):
    loss, _ = quadratic_task(seed=2)
    calls = []
    counted = counting(loss, calls)

    kw = dict(batch_size=5, queries_per_step=30, sigma=0.1, lr=0.05, allocator="flops", seed=3)
    full = forward_train(loss, np.zeros(5), 20, steps=30, **kw)
    path = tmp_path / "run.npz"
    first = forward_train(counted, np.zeros(5), 20, steps=12, checkpoint=path, **kw)
    spent_first = sum(calls)
    resumed = forward_train(counted, np.zeros(5), 20, steps=30, checkpoint=path, **kw)
    assert resumed.resumed_from == 12 and first.queries == spent_first == 12 * 30
    assert sum(calls) - spent_first == 18 * 30  # only the missing steps were queried
    assert np.array_equal(resumed.theta, full.theta)
    assert resumed.queries == full.queries
    assert [h["allocation"] for h in resumed.history] == [h["allocation"] for h in full.history]
    with pytest.raises(InputError, match="different settings"):
        forward_train(counted, np.zeros(5), 20, steps=31, checkpoint=path, **{**kw, "lr": 0.1})


def _corrupt_checkpoints(good: bytes):
    """A truncated copy, random bytes, and npz files whose fields are missing or wrong."""
    import io
    import json

    def npz(**fields):
        buf = io.BytesIO()
        np.savez(buf, **fields)
        return buf.getvalue()

    arrays = dict(theta=np.zeros(5), adam_m=np.zeros(5), adam_v=np.zeros(5), memory=np.zeros(20))
    return {"truncated": good[: len(good) // 2], "random bytes": np.random.default_rng(0).bytes(3000),
            "empty": b"", "no meta": npz(**arrays), "meta not json": npz(meta=np.array("{oops"), **arrays),
            "meta without fields": npz(meta=np.array(json.dumps({"config": {}})), **arrays),
            "wrong memory shape": npz(**{**arrays, "memory": np.zeros(3)}, meta=np.array(json.dumps(
                {"config": {}, "adam_t": 0, "step": 1, "queries": 1, "history": [], "evals": []})))}


def test_a_corrupt_checkpoint_is_a_clear_error_and_is_left_as_it_was(tmp_path):
    loss, _ = quadratic_task(seed=2)
    kw = dict(batch_size=5, queries_per_step=10, sigma=0.1, lr=0.05, allocator="flops", seed=3)
    good = tmp_path / "good.npz"
    forward_train(loss, np.zeros(5), 20, steps=2, checkpoint=good, **kw)
    for name, content in _corrupt_checkpoints(good.read_bytes()).items():
        path = tmp_path / f"{name.replace(' ', '-')}.npz"
        path.write_bytes(content)
        calls = []
        with pytest.raises(InputError, match="cannot read checkpoint .*delete it to start over") as err:
            forward_train(counting(loss, calls), np.zeros(5), 20, steps=4, checkpoint=path, **kw)
        assert "\n" not in str(err.value), name
        assert sum(calls) == 0, f"{name}: queried before the checkpoint was read"
        assert path.read_bytes() == content, f"{name}: the checkpoint was overwritten"


def test_budget_and_total_queries_are_never_overspent():
    loss, _ = quadratic_task()
    budget = Budget(max_queries=250)
    res = forward_train(loss, np.zeros(5), 20, batch_size=5, queries_per_step=60, steps=100,
                        sigma=0.1, lr=0.05, budget=budget)
    assert budget.queries == res.queries == 240 and "budget" in res.stopped
    res = forward_train(loss, np.zeros(5), 20, batch_size=5, queries_per_step=60, total_queries=500,
                        sigma=0.1, lr=0.05)
    assert res.queries == 480 and res.steps == 8


def test_bad_settings_are_clear_errors():
    loss, _ = quadratic_task()
    with pytest.raises(InputError, match="even"):
        forward_train(loss, np.zeros(5), 20, batch_size=10, queries_per_step=15, steps=1, sigma=0.1, lr=0.1)
    with pytest.raises(InputError, match="steps"):
        forward_train(loss, np.zeros(5), 20, batch_size=10, queries_per_step=20, sigma=0.1, lr=0.1)


class QuadraticExact:
    """An exact gradient source on the same quadratic (what the backprop references are)."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(20, 5))
        self.weights = np.exp(rng.normal(size=20) * 1.5)
        self.n_items = 20

    def gradient(self, theta, items):
        from blackbox.forward_learning import Estimate

        w, c = self.weights[items], self.centres[items]
        return Estimate((w[:, None] * (theta - c)).mean(0), np.full(len(items), np.nan),
                        0.5 * w * np.sum((theta - c) ** 2, axis=1))


def test_exact_and_query_sources_share_the_loop_batches_and_history_schema():
    from blackbox.forward_learning import train

    loss, optimum = quadratic_task()
    exact = train(QuadraticExact(), np.full(5, 3.0), steps=300, batch_size=10, lr=0.05, seed=1,
                  eval_fn=lambda t: {"distance": float(np.linalg.norm(t - optimum))}, eval_every=100)
    lr = forward_train(loss, np.full(5, 3.0), 20, batch_size=10, queries_per_step=60, steps=300, sigma=0.1,
                       lr=0.05, seed=1)
    assert np.linalg.norm(exact.theta - optimum) < 0.05 and exact.queries == 0
    assert [e["step"] for e in exact.evals] == [0, 100, 200, 300] and exact.after["distance"] < 0.05
    assert set(exact.history[0]) == set(lr.history[0])           # one history schema
    assert [h["items"] for h in exact.history] == [h["items"] for h in lr.history]   # the same batches
    for run in (exact, lr):
        seconds = [h["seconds"] for h in run.history]
        assert seconds == sorted(seconds) and seconds[-1] <= run.seconds   # time since the start, one meaning
    assert exact.history[0]["allocation"] is None and lr.history[0]["allocation"] == [6] * 10


def test_checkpoint_every_is_honoured_and_an_interrupted_run_resumes_from_it(tmp_path):
    loss, _ = quadratic_task(seed=4)
    calls = []
    counted = counting(loss, calls)

    def stop_at_7(step, theta, row):
        if step == 7:
            raise KeyboardInterrupt

    kw = dict(batch_size=5, queries_per_step=20, sigma=0.1, lr=0.05, allocator="neyman", seed=2, checkpoint_every=5)
    full = forward_train(loss, np.zeros(5), 20, steps=12, **kw)
    path = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        forward_train(counted, np.zeros(5), 20, steps=12, checkpoint=path, callback=stop_at_7, **kw)
    assert sum(calls) == 7 * 20
    resumed = forward_train(counted, np.zeros(5), 20, steps=12, checkpoint=path, **kw)
    assert resumed.resumed_from == 5 and sum(calls) == 7 * 20 + 7 * 20   # steps 6-12 again, 1-5 not
    assert np.array_equal(resumed.theta, full.theta) and resumed.queries == full.queries == 240


def test_a_budget_that_runs_out_in_the_evaluation_keeps_what_was_learned():
    from blackbox.queries import QueryRunner

    loss, optimum = quadratic_task()
    budget = Budget(max_queries=10 * 60 + 5)
    eval_runner = QueryRunner(lambda x: np.zeros(len(x)), budget)

    def evaluation(theta):  # 3 paid queries per evaluation, on the training budget
        eval_runner(np.zeros((3, 1)))
        return {"distance": float(np.linalg.norm(theta - optimum))}

    res = forward_train(loss, np.full(5, 3.0), 20, batch_size=10, queries_per_step=60, steps=10, sigma=0.1,
                        lr=0.05, budget=budget, eval_fn=evaluation, eval_every=None)
    # 3 (first evaluation) + 10 x 60 (training) = 603: the final evaluation (3 more) does not fit
    assert res.steps == 10 and res.queries == 600 and budget.queries == 603
    assert "budget" in res.stopped and "evaluation not finished" in res.stopped
    assert len(res.evals) == 1 and res.after == res.before        # the final evaluation never ran
    assert np.linalg.norm(res.theta - optimum) < np.linalg.norm(np.full(5, 3.0) - optimum)


def test_a_progress_bar_does_not_change_the_run():
    """(conftest disables tqdm's drawing; its calls still run.)"""
    loss, _ = quadratic_task(seed=5)
    kw = dict(batch_size=5, queries_per_step=20, steps=6, sigma=0.1, lr=0.05, allocator="flops", seed=4)
    quiet = forward_train(loss, np.zeros(5), 20, **kw)
    shown = forward_train(loss, np.zeros(5), 20, progress=True, **kw)
    assert np.array_equal(shown.theta, quiet.theta) and shown.queries == quiet.queries == 120
    assert [h["allocation"] for h in shown.history] == [h["allocation"] for h in quiet.history]
