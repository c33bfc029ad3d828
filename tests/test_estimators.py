"""The LR estimator against analytic gradients."""
import numpy as np
import pytest

from blackbox import Budget, QueryRunner, lr_gradient
from blackbox.estimators import Antithetic, Baseline, Plain
from blackbox.noise import NoiseSource

D = 12
A = np.random.default_rng(7).standard_normal(D)


def linear(x):
    return x @ A + 3.0


@pytest.mark.parametrize("control", ["antithetic", "baseline", "none"])
@pytest.mark.parametrize("noise", ["gaussian", "orthogonal", "halton"])
def test_unbiased_on_linear_functions(control, noise):
    """z-scores (estimate - truth) / stderr over many independent runs look standard normal."""
    zs = []
    for seed in range(40):
        est = lr_gradient(linear, np.ones(D), queries=400, sigma=0.5, control=control, noise=noise, seed=seed)
        zs.append((est.grad - A) / est.stderr)
    zs = np.concatenate(zs)
    assert abs(zs.mean()) < 0.1, zs.mean()  # unbiased
    if noise == "gaussian":
        assert 0.7 < zs.std() < 1.3, zs.std()  # the reported standard error is calibrated
    else:  # orthogonal / quasi-random directions beat i.i.d.: the i.i.d. stderr is conservative
        assert zs.std() < 1.3, zs.std()


def test_antithetic_is_exact_on_quadratics():
    """For f = x'Hx/2 + b'x + c the antithetic difference cancels H and c exactly: the estimate
    equals the one for the linear part b + Hx at the same noise, for any sigma."""
    rng = np.random.default_rng(0)
    m = rng.standard_normal((D, D))
    h = m @ m.T
    b = rng.standard_normal(D)
    x0 = rng.standard_normal(D)
    grad = h @ x0 + b

    def quad(x):
        return 0.5 * np.einsum("ni,ij,nj->n", x, h, x) + x @ b + 5.0

    def lin(x):
        return x @ grad

    for sigma in (0.01, 1.0, 10.0):
        q = lr_gradient(quad, x0, queries=200, sigma=sigma, seed=3)
        l = lr_gradient(lin, x0, queries=200, sigma=sigma, seed=3)
        np.testing.assert_allclose(q.grad, l.grad, rtol=1e-8, atol=1e-8)
    # the baseline form does not cancel the curvature: it differs
    qb = lr_gradient(quad, x0, queries=200, sigma=1.0, control="baseline", seed=3)
    lb = lr_gradient(lambda x: lin(x) + 0.5 * x0 @ h @ x0 + x0 @ b + 5.0 - x0 @ grad, x0, queries=200,
                     sigma=1.0, control="baseline", seed=3)
    assert np.abs(qb.grad - lb.grad).max() > 1e-3


def test_matches_gradient_of_the_gaussian_smoothed_function():
    """E[sin(x+z)] = sin(x) exp(-s^2/2): the LR estimate targets cos(x) exp(-s^2/2)."""
    x0 = np.linspace(-2, 2, D)
    sigma = 0.8
    est = lr_gradient(lambda x: np.sin(x).sum(1), x0, queries=40000, sigma=sigma, seed=1)
    truth = np.cos(x0) * np.exp(-sigma ** 2 / 2)
    assert np.all(np.abs(est.grad - truth) < 4 * est.stderr + 1e-9)
    assert np.abs(est.grad - np.cos(x0)).max() > 0.2  # and not the raw gradient at this sigma


def test_orthogonal_directions_reduce_error():
    errs = {k: np.mean([np.linalg.norm(lr_gradient(linear, np.zeros(D), queries=2 * D, sigma=0.1,
                                                   noise=k, seed=s).grad - A) for s in range(30)])
            for k in ("gaussian", "orthogonal")}
    assert errs["orthogonal"] < 0.6 * errs["gaussian"], errs


def test_blockwise_fills_each_block_with_its_own_queries():
    blocks = [np.arange(0, 4), np.arange(4, 12)]
    est = lr_gradient(linear, np.zeros(D), queries=1000, sigma=0.3, blocks=blocks, allocation=[200, 800], seed=0)
    assert est.queries == 1000
    assert np.all(est.count[:4] == 100) and np.all(est.count[4:] == 400)
    assert np.all(np.abs(est.grad - A) < 5 * est.stderr)
    assert np.all(np.isfinite(est.block_variance)) and est.block_variance.shape == (2,)


def test_reproducible_and_independent_of_chunking():
    a = lr_gradient(linear, np.zeros(D), queries=300, sigma=0.2, seed=11, chunk=8)
    b = lr_gradient(linear, np.zeros(D), queries=300, sigma=0.2, seed=11, chunk=256)
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    c = lr_gradient(linear, np.zeros(D), queries=300, sigma=0.2, seed=12)
    assert not np.array_equal(a.grad, c.grad)


def test_weights_by_delivered_perturbation():
    """A box that quantises its input coarsely (step = sigma / 2) and says what it delivered: the
    estimate is weighted by the delivered perturbation and stays unbiased for the gradient; a box
    that delivers what was asked gives the same estimate as a plain function."""
    def quantised(points):
        delivered = np.round(points / 0.1) * 0.1
        return delivered @ A, delivered

    zs = []
    for seed in range(20):
        est = lr_gradient(quantised, np.zeros(D), queries=400, sigma=0.2, seed=seed)
        zs.append((est.grad - A) / est.stderr)
    assert abs(np.mean(zs)) < 0.15
    exact = lr_gradient(lambda p: (linear(p), p), np.zeros(D), queries=100, sigma=0.2, seed=0)
    plain = lr_gradient(linear, np.zeros(D), queries=100, sigma=0.2, seed=0)
    np.testing.assert_allclose(exact.grad, plain.grad)


def test_budget_exhaustion_keeps_what_was_paid_for():
    budget = Budget(max_queries=100)
    runner = QueryRunner(linear, budget=budget, batch_size=16)
    est = lr_gradient(runner, np.zeros(D), queries=400, sigma=0.5, seed=0, chunk=32)
    assert est.stopped and "budget exhausted" in est.stopped
    assert budget.queries <= 100 and est.queries == budget.queries
    assert est.count.max() > 0 and np.all(np.isfinite(est.grad))


def test_noise_sources_are_standard_normal():
    for kind in ("gaussian", "orthogonal", "halton"):
        z = NoiseSource(5, kind, seed=0).draw(20000)
        assert np.abs(z.mean(0)).max() < 0.05 and np.abs(z.std(0) - 1).max() < 0.05, kind


def test_hadamard_designs_are_balanced_orthogonal_signs_and_beat_random_signs():
    """Each block of 2^k rows has balanced, mutually orthogonal +-1 columns; a stream split into
    several draws gives the same rows; on a linear function the LR mean (no regression) is then
    exact over whole blocks, where random signs leave cross-talk."""
    blocks = NoiseSource(196, "hadamard", seed=3).draw(512)
    assert set(np.unique(blocks)) == {-1.0, 1.0}
    for block in (blocks[:256], blocks[256:]):
        np.testing.assert_array_equal(block.T @ block, 256 * np.eye(196))
    assert not np.array_equal(blocks[:256], blocks[256:])  # a fresh design per block
    split = NoiseSource(196, "hadamard", seed=3)
    np.testing.assert_array_equal(np.concatenate([split.draw(100), split.draw(300), split.draw(112)]), blocks)
    errors = {}
    for kind in ("hadamard", "rademacher"):
        est = lr_gradient(linear, np.zeros(D), queries=2 * 32, sigma=0.5, noise=kind, seed=0)
        errors[kind] = np.abs(est.grad - A).max()
    assert errors["hadamard"] < 1e-9 < errors["rademacher"]


class KnownCentre:
    """A control of one's own: the baseline form with ``f(c)`` known in advance (no query for it)."""

    name = "known"
    queries_per_direction = 1
    needs_f0 = False
    per_direction_centre = False

    def __init__(self, value):
        self.value = value

    def points(self, centers, block, z):
        points = np.array(centers, dtype=np.float64, copy=True)
        points[:, block] += z
        return points

    def combine(self, values, delivered, centers, f0):
        return delivered - centers, values - self.value


def test_controls_are_objects_that_spend_what_they_say():
    """A control passed as an object gives the estimate of its name bit for bit, and spends its
    queries per direction plus one for f(c) when it needs it; a control of one's own plugs in
    through the same interface."""
    centre = np.linspace(-1, 1, D)
    for obj, spent in ((Antithetic(), 100), (Baseline(), 101), (Plain(), 101)):
        by_name = lr_gradient(linear, centre, queries=101, sigma=0.5, control=obj.name, seed=4, keep_samples=True)
        by_object = lr_gradient(linear, centre, queries=101, sigma=0.5, control=obj, seed=4, keep_samples=True)
        assert by_name.queries == by_object.queries == spent, obj.name
        assert np.array_equal(by_name.grad, by_object.grad) and np.array_equal(by_name.m2, by_object.m2)
        assert np.array_equal(by_name.samples.responses, by_object.samples.responses)
    known = lr_gradient(linear, centre, queries=100, sigma=0.5, control=KnownCentre(linear(centre[None])[0]), seed=4)
    given = lr_gradient(linear, centre, queries=100, sigma=0.5, control="baseline", f0=linear(centre[None])[0], seed=4)
    assert known.queries == given.queries == 100 and np.array_equal(known.grad, given.grad)
    with pytest.raises(ValueError, match="known control variate needs a fixed centre"):
        lr_gradient(linear, centre, queries=100, sigma=0.5, control=KnownCentre(0.0),
                    center_fn=lambda rng, n: np.zeros((n, D)))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        lr_gradient(linear, np.zeros(D), queries=100, sigma=0)
    with pytest.raises(ValueError):
        lr_gradient(linear, np.zeros(D), queries=100, sigma=1, control="magic")
    with pytest.raises(ValueError):
        lr_gradient(linear, np.zeros(D), queries=1, sigma=1)
