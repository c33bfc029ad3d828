"""The regression estimator, binary (Banzhaf) masks and coarse-to-fine refinement, against
analytic gradients and brute force."""
import numpy as np
import pytest

from blackbox import InputError, saliency
from blackbox.estimators import Regression, lr_gradient
from blackbox.saliency.spaces import MaskSpace, PatchGrid
from blackbox.saliency.metrics import spearman
from blackbox.saliency.rationing import rationed_gradient

D = 30
G = np.random.default_rng(3).standard_normal(D)


def linear(x):
    return x @ G + 2.0


def test_regression_recovers_a_linear_gradient_where_the_lr_mean_is_noisy():
    """Least squares on the same queries removes the cross-talk the LR mean keeps: on a linear
    function with more directions than coordinates it is exact."""
    est = lr_gradient(linear, np.zeros(D), queries=4 * D, sigma=0.3, seed=0, keep_samples=True)
    ridge, stderr = Regression(smoothness=0.0, ridge=1e-9).fit(est)
    np.testing.assert_allclose(ridge, G, atol=1e-6)
    assert np.all(stderr < 1e-6)
    assert np.abs(est.mean - G).max() > 0.3  # the LR mean over the same queries is far off


def test_regression_is_exact_on_quadratics_with_antithetic_pairs():
    """f = x'Hx/2 + b'x: antithetic halves differences are exactly z . (Hx0 + b)."""
    rng = np.random.default_rng(1)
    m = rng.standard_normal((D, D))
    h, b, x0 = m @ m.T, rng.standard_normal(D), rng.standard_normal(D)

    def quad(x):
        return 0.5 * np.einsum("ni,ij,nj->n", x, h, x) + x @ b

    est = lr_gradient(quad, x0, queries=3 * D, sigma=2.0, seed=2, keep_samples=True)
    np.testing.assert_allclose(Regression(smoothness=0.0, ridge=1e-9).fit(est)[0], h @ x0 + b, rtol=1e-5, atol=1e-5)


def test_regression_standard_errors_are_calibrated_on_noisy_answers():
    zs = []
    for seed in range(30):
        noise = np.random.default_rng(100 + seed)

        def noisy(x):
            return linear(x) + noise.normal(0, 0.5, len(x))

        est = lr_gradient(noisy, np.zeros(D), queries=400, sigma=0.5, seed=seed, keep_samples=True)
        g, se = Regression(smoothness=0.0, ridge=1e-9).fit(est)
        zs.append((g - G) / se)
    zs = np.concatenate(zs)
    assert abs(zs.mean()) < 0.1 and 0.8 < zs.std() < 1.2, (zs.mean(), zs.std())


def test_smoothness_prior_helps_a_smooth_map_from_few_queries():
    """A smooth 8x8 gradient from 40 pairs (< 64 unknowns): the neighbour prior beats plain ridge,
    and cross-validation finds a useful weight by itself."""
    grid = PatchGrid(8, 8, 8)
    yy, xx = np.mgrid[0:8, 0:8]
    truth = np.exp(-((yy - 3) ** 2 + (xx - 5) ** 2) / 8.0).ravel()
    errors = {}
    for name, fit in (("ridge", Regression(smoothness=0.0, ridge=0.1)), ("smooth", Regression(smoothness=0.3)),
                      ("gcv", Regression(smoothness=None))):
        errs = []
        for seed in range(10):
            est = lr_gradient(lambda x: x @ truth, np.zeros(64), queries=80, sigma=0.5, seed=seed, keep_samples=True)
            errs.append(np.linalg.norm(fit.fit(est, grid.laplacian())[0] - truth))
        errors[name] = np.mean(errs)
    assert errors["smooth"] < 0.7 * errors["ridge"], errors
    assert errors["gcv"] < 0.8 * errors["ridge"], errors


def test_rounds_keep_every_sample():
    blocks = [np.arange(0, 10), np.arange(10, D)]
    est = rationed_gradient(linear, np.zeros(D), queries=240, sigma=0.2, blocks=blocks, allocator="neyman",
                            rounds=3, seed=0, keep_samples=True)
    assert len(est.samples) == 120  # one antithetic pair per sample
    np.testing.assert_allclose(Regression(smoothness=0.0, ridge=1e-9).fit(est)[0], G, atol=1e-6)


def test_the_regression_needs_kept_samples():
    est = lr_gradient(linear, np.zeros(D), queries=40, sigma=0.2, seed=0)
    with pytest.raises(ValueError, match="keep_samples"):
        Regression().fit(est)


# ---- a linear "model" in mask space: the exact per-cell answer is known (brute force)
IMAGE = np.random.default_rng(5).random((32, 32, 3)).astype(np.float32)
BASELINE = np.zeros_like(IMAGE)
WEIGHTS = np.zeros((32, 32, 3))
WEIGHTS[4:12, 20:30] = 3.0   # an "object" in the top right
WEIGHTS[24:30, 2:8] = -1.0   # something that speaks against it


def linear_model(images):
    return np.einsum("nhwc,hwc->n", np.asarray(images, dtype=np.float64), WEIGHTS)


def brute_force_cells(grid: PatchGrid) -> np.ndarray:
    """Remove one cell at a time (occlusion): exact for a linear model."""
    full = linear_model(IMAGE[None])[0]
    out = np.zeros(grid.cells)
    for c in range(grid.cells):
        removed = np.where((grid.cell_ids == c)[..., None], BASELINE, IMAGE)
        out[c] = full - linear_model(removed[None])[0]
    return out.reshape(grid.rows, grid.cols)


def relative_error(cells, truth) -> float:
    return float(np.abs(cells - truth).max() / np.abs(truth).max())


@pytest.mark.parametrize("method", ["banzhaf", "ig"])
def test_mask_methods_find_the_brute_force_map_of_a_linear_model(method):
    """Removing a cell of a linear model costs exactly its brute-force (occlusion) value, on the
    IG path and among random halves alike; the regression gets it from 200 pairs for 64 cells
    (up to 8-bit rounding), the LR mean over the same queries only roughly."""
    truth = brute_force_cells(PatchGrid(32, 32, 8))
    options = dict(queries=400, grid=8, method=method, baseline=BASELINE, seed=0)
    result = saliency(linear_model, IMAGE, estimator="ridge", smoothness=0.0, **options)
    lr_mean = saliency(linear_model, IMAGE, estimator="lr", **options)
    assert result.queries == lr_mean.queries == 400
    assert relative_error(result.cells, truth) < 0.06
    assert relative_error(lr_mean.cells, truth) > 2 * relative_error(result.cells, truth)


def test_coarse_to_fine_matches_brute_force_and_spends_on_the_cells_that_matter():
    grid = PatchGrid(32, 32, 8)
    truth = brute_force_cells(grid)
    result = saliency(linear_model, IMAGE, queries=300, grid=8, method="banzhaf", estimator="ridge",
                      smoothness=0.0, baseline=BASELINE, refine=True, seed=0)
    assert result.queries == 300
    assert relative_error(result.cells, truth) < 0.08
    # the fine stage rations its pairs across the 16 coarse cells by their importance
    allocation = np.array(result.estimate.extras["allocation"])
    coarse_grid, parent = grid.coarsened(2)
    importance = np.bincount(parent, weights=np.abs(truth).ravel(), minlength=coarse_grid.cells)
    assert allocation.sum() == 300 - result.estimate.extras["coarse_queries"]
    assert allocation[np.argmax(importance)] > 2 * np.median(allocation)
    assert spearman(allocation, importance) > 0.5


def test_coarsened_grid_nests_the_fine_cells():
    fine = PatchGrid(224, 224, 14)
    coarse, parent = fine.coarsened(2)
    assert (coarse.rows, coarse.cols) == (7, 7)
    # every pixel's fine cell sits inside that pixel's coarse cell
    np.testing.assert_array_equal(parent[fine.cell_ids], coarse.cell_ids)


def test_refinement_refuses_what_it_cannot_do():
    with pytest.raises(InputError, match="mask space"):
        saliency(linear_model, IMAGE, queries=300, grid=8, space="pixel", refine=True)
    with pytest.raises(InputError, match="too few"):
        saliency(linear_model, IMAGE, queries=20, grid=8, refine=True, method="banzhaf")
    with pytest.raises(InputError, match="mask space"):
        saliency(linear_model, IMAGE, queries=100, grid=8, space="pixel", method="banzhaf")


def test_banzhaf_queries_are_masks_and_their_complements():
    seen = []
    space = MaskSpace(IMAGE, PatchGrid(32, 32, 4), BASELINE)

    def spy(images):
        seen.append(np.asarray(images).copy())
        return linear_model(images)

    saliency(spy, IMAGE, queries=8, grid=4, method="banzhaf", baseline=BASELINE, seed=0, batch_size=8)
    images = np.concatenate(seen)
    first, second = images[:4], images[4:]
    # each pair sums to image + baseline (up to 8-bit rounding): complementary binary masks
    np.testing.assert_allclose(first + second, np.broadcast_to(IMAGE + BASELINE, first.shape), atol=2 / 255)
    assert space.dim == 16


@pytest.mark.parametrize("levels", [(0.0, 1.0), (0.475, 0.525), (-0.2, 1.3)])
def test_two_level_masks_render_exactly_as_the_general_mixing_does(levels):
    """The fast path for two-level masks (banzhaf's 0/1, ig-steps' two sides of a step, levels
    that clip) copies each cell from a uniform rendering; it must give the very pixels (and
    delivered mask values) of the general mixing, on an uneven grid."""
    rng = np.random.default_rng(5)
    image, baseline = rng.random((37, 50, 3)).astype(np.float32), rng.random((37, 50, 3)).astype(np.float32)
    space = MaskSpace(image, PatchGrid(37, 50, 5, 7), baseline)
    masks = np.where(rng.random((9, 35)) < 0.5, *levels[::-1])
    nudged = masks.copy()
    nudged[0, 0] = 0.3  # a third level: the whole batch takes the general path
    fast, fast_delivered = space.render(masks)
    general, general_delivered = space.render(nudged)
    np.testing.assert_array_equal(fast[1:], general[1:])
    np.testing.assert_array_equal(fast_delivered[1:], general_delivered[1:])
    assert not np.array_equal(fast[0], fast[1])


def test_smooth_upsample_interpolates_between_cell_centres():
    grid = PatchGrid(40, 40, 4)
    cells = np.random.default_rng(0).random((4, 4))
    centres, pixels = np.arange(5, 40, 10), np.arange(40) + 0.5  # cell and pixel centres
    rows = np.stack([np.interp(pixels, centres, cells[:, j]) for j in range(4)], axis=1)
    reference = np.stack([np.interp(pixels, centres, rows[i]) for i in range(40)])
    np.testing.assert_allclose(grid.smooth_upsample(cells), reference, atol=1e-6)
    wide = grid.smooth_upsample(cells, 20, 80)  # another output size: the same field, rescaled
    assert wide.shape == (20, 80) and wide[0, 0] == pytest.approx(cells[0, 0])


# ---- Integrated Gradients in steps: one patch nudged at a time at fixed points of the path
U = np.random.default_rng(7).standard_normal((32, 32, 3))
V = np.random.default_rng(8).standard_normal((32, 32, 3)) / 40


def quadratic_model(images):
    x = np.asarray(images, dtype=np.float64)
    return np.einsum("nhwc,hwc->n", x, U) + np.einsum("nhwc,hwc->n", x, V) ** 2


def quadratic_ig_cells(grid: PatchGrid) -> np.ndarray:
    """Analytic IG of u.x + (v.x)^2 from the baseline, per cell: along m = alpha the derivative
    for cell c is u.D_c + 2 (v.b + alpha S) v.D_c (D_c = the cell's image - baseline, S = sum of
    all v.D_c); its integral over alpha in [0, 1] replaces alpha by 1/2."""
    diff = IMAGE - BASELINE
    per_cell = lambda w: np.bincount(grid.cell_ids.ravel(), weights=(w * diff).sum(axis=2).ravel(), minlength=grid.cells)
    ud, vd = per_cell(U), per_cell(V)
    vb = float((V * BASELINE).sum())
    return (ud + 2 * (vb + vd.sum() / 2) * vd).reshape(grid.rows, grid.cols)


def test_ig_steps_is_the_analytic_integrated_gradient_and_the_same_from_any_seed():
    """On a quadratic the midpoint rule and the centred one-patch step are exact, so the map is
    analytic IG up to 8-bit rounding (which a larger step shrinks); completeness holds; no seed
    changes it; random directions on the same budget (``ig``, same estimator) are several times
    further off."""
    grid = PatchGrid(32, 32, 8)
    truth = quadratic_ig_cells(grid)
    options = dict(queries=400, grid=8, baseline=BASELINE, estimator="lr")
    steps = saliency(quadratic_model, IMAGE, method="ig-steps", seed=0, **options)
    again = saliency(quadratic_model, IMAGE, method="ig-steps", seed=1, **options)
    assert steps.queries == 6 * 65 and steps.estimate.extras["path_points"] == 6  # 400 // (64 + 1) points
    np.testing.assert_array_equal(steps.cells, again.cells)
    assert relative_error(steps.cells, truth) < 0.03
    wide = saliency(quadratic_model, IMAGE, method="ig-steps", sigma=0.2, **options)
    assert relative_error(wide.cells, truth) < 0.01
    ends = quadratic_model(np.stack([IMAGE, BASELINE]))
    assert wide.cells.sum() == pytest.approx(ends[0] - ends[1], rel=0.005)  # completeness
    assert steps.cells.sum() == pytest.approx(ends[0] - ends[1], rel=0.03)  # (8-bit rounding at the small step)
    random_paths = saliency(quadratic_model, IMAGE, method="ig", seed=0, **options)
    assert relative_error(random_paths.cells, truth) > 5 * relative_error(steps.cells, truth)


def test_ig_steps_up_and_down_cancel_a_patchs_own_curvature():
    """f = sum_c (a_c . x)^2 with a_c on cell c: along the path cell c's derivative is linear in
    alpha, IG_c = (a_c . x)^2 from a black baseline, and a one-sided step of size h is off by
    h (a_c . x)^2 at every point (20% at h = 0.2). Steps up at even points and down at odd ones,
    weighted equally, cancel it: the map is exact up to rounding."""
    grid = PatchGrid(32, 32, 4)
    weights = np.random.default_rng(9).standard_normal((32, 32, 3)) / 50

    def per_cell_squares(images):
        x = np.asarray(images, dtype=np.float64) * weights
        sums = np.stack([np.bincount(grid.cell_ids.ravel(), weights=im.sum(axis=2).ravel(), minlength=16) for im in x])
        return (sums ** 2).sum(axis=1)

    truth = np.bincount(grid.cell_ids.ravel(), weights=(IMAGE * weights).sum(axis=2).ravel(), minlength=16) ** 2
    steps = saliency(per_cell_squares, IMAGE, method="ig-steps", queries=4 * 17, grid=4, baseline=BASELINE,
                     estimator="lr", sigma=0.2)
    assert steps.estimate.extras["path_points"] == 4
    assert relative_error(steps.cells.ravel(), truth) < 0.01  # where one-sided steps would be 20% off


def test_each_method_reads_its_answers_with_its_own_estimator_unless_told():
    """ig-steps' differences are read by the plain mean (a smoothness prior would blur them),
    banzhaf's masks by the ridge fit; an explicit estimator wins."""
    options = dict(queries=200, grid=6, baseline=BASELINE)
    steps = saliency(quadratic_model, IMAGE, method="ig-steps", **options)
    assert steps.estimator == "lr"
    np.testing.assert_array_equal(steps.cells, saliency(quadratic_model, IMAGE, method="ig-steps",
                                                         estimator="lr", **options).cells)
    ridge = saliency(quadratic_model, IMAGE, method="ig-steps", estimator="ridge", **options)
    assert ridge.estimator == "ridge" and not np.array_equal(ridge.cells, steps.cells)
    assert saliency(quadratic_model, IMAGE, **options).estimator == "ridge"


def test_ig_steps_keeps_what_a_budget_paid_for_and_refuses_what_it_cannot_do():
    from blackbox import Budget, QueryRunner

    budget = Budget(max_queries=150)
    runner = QueryRunner(quadratic_model, budget=budget, batch_size=32)
    stopped = saliency(runner, IMAGE, queries=1000, grid=7, method="ig-steps", baseline=BASELINE, estimator="lr")
    assert budget.queries == 150 and stopped.queries == 150 and stopped.stopped
    # 3 whole path points of 1 + 49 queries: every answer paid for is in the map
    assert stopped.estimate.count.tolist() == [3] * 49 and np.all(np.isfinite(stopped.cells))
    with pytest.raises(InputError, match="at least 65 queries"):
        saliency(quadratic_model, IMAGE, queries=64, grid=8, method="ig-steps")
    with pytest.raises(InputError, match="mask space"):
        saliency(quadratic_model, IMAGE, queries=400, grid=8, method="ig-steps", space="pixel")
    with pytest.raises(InputError, match="do not apply"):
        saliency(quadratic_model, IMAGE, queries=400, grid=8, method="ig-steps", blocks=4)


def test_coordinate_directions_are_finite_differences():
    """One coordinate at a time, sqrt(d) e_c, each once per block: identity covariance over a
    block, and with antithetic pairs the LR mean is the central difference (exact on quadratics)."""
    from blackbox.noise import NoiseSource

    z = NoiseSource(D, "coordinate", 0).draw(D)
    np.testing.assert_allclose(z.T @ z / D, np.eye(D))
    quad = lambda x: x @ G + 0.5 * (x ** 2).sum(axis=1)
    x0 = np.random.default_rng(1).standard_normal(D)
    est = lr_gradient(quad, x0, queries=2 * D, sigma=0.1, noise="coordinate", seed=0)
    np.testing.assert_allclose(est.mean, G + x0, atol=1e-9)


# ---- focus: the top cells re-measured among themselves, every other cell held fixed
FOCUS_GRID = PatchGrid(32, 32, 8)
FOCUS_IMAGE = 0.2 + 0.8 * np.random.default_rng(5).random((32, 32, 3)).astype(np.float32)
_rng = np.random.default_rng(1)
FOCUS_TOP = _rng.choice(64, 19, replace=False)           # 19 cells that matter, in a known order
FOCUS_WEIGHTS = np.full(64, 0.02)
FOCUS_WEIGHTS[FOCUS_TOP] = 1.0 + 0.05 * np.arange(19)
FOCUS_TRIPLES = np.array([_rng.choice(np.setdiff1d(np.arange(64), FOCUS_TOP), 3, replace=False)
                          for _ in range(40)])        # three-way interactions among the other cells


def interacting_model(images):
    """Additive in the cells that matter, plus odd interactions among the others: complement
    pairs over every cell alias them onto the main effects; held fixed, they cancel."""
    m = np.rint(FOCUS_GRID.pool(np.asarray(images, np.float64) / FOCUS_IMAGE)[..., 0].reshape(len(images), -1))
    signs = 2 * m - 1
    return m @ FOCUS_WEIGHTS + 0.1 * np.prod(signs[:, FOCUS_TRIPLES], axis=2).sum(axis=1)


def test_focus_orders_the_top_cells_exactly_where_one_pass_cannot():
    options = dict(grid=8, baseline=np.zeros_like(FOCUS_IMAGE), method="banzhaf")
    focused, one_pass = [], []
    for seed in range(4):
        result = saliency(interacting_model, FOCUS_IMAGE, queries=400, seed=seed, focus=0.3, **options)
        assert result.focus == 0.3 and result.queries == 400
        assert result.estimate.extras["focus_queries"] == 200 and len(result.estimate.extras["focus_cells"]) == 19
        # the map keeps stage 1's values (its first 200 queries), only re-ordered among the candidates
        first = saliency(interacting_model, FOCUS_IMAGE, queries=200, seed=seed, focus=0, **options)
        np.testing.assert_allclose(np.sort(result.cells.ravel()), np.sort(first.cells.ravel()))
        others = np.setdiff1d(np.arange(64), result.estimate.extras["focus_cells"])
        np.testing.assert_array_equal(result.cells.ravel()[others], first.cells.ravel()[others])
        focused.append(spearman(result.cells.ravel()[FOCUS_TOP], FOCUS_WEIGHTS[FOCUS_TOP]))
        whole = saliency(interacting_model, FOCUS_IMAGE, queries=400, seed=seed, focus=0, **options)
        one_pass.append(spearman(whole.cells.ravel()[FOCUS_TOP], FOCUS_WEIGHTS[FOCUS_TOP]))
    assert min(focused) > 0.98, focused
    assert max(one_pass) < 0.95 and np.mean(one_pass) < np.mean(focused) - 0.1, one_pass


def test_focus_keeps_what_a_budget_paid_for_and_refuses_what_it_cannot_do():
    from blackbox import Budget, QueryRunner

    options = dict(grid=8, baseline=np.zeros_like(FOCUS_IMAGE), method="banzhaf")
    # stopped inside stage 1: the stage-1 map of what was answered, no second stage
    options.update(focus=0.3)
    early = saliency(QueryRunner(interacting_model, budget=Budget(max_queries=150)), FOCUS_IMAGE, queries=400, **options)
    assert early.stopped and early.queries <= 150 and early.estimate.extras["focus_queries"] == 0
    # stopped inside stage 2 with at least one pair per candidate: its pairs re-order the candidates
    late = saliency(QueryRunner(interacting_model, budget=Budget(max_queries=300)), FOCUS_IMAGE, queries=400, **options)
    assert late.stopped and late.queries <= 300 and 0 < late.estimate.extras["focus_queries"] <= 100
    assert len(late.estimate.extras["focus_cells"]) == 19 and np.all(np.isfinite(late.cells))
    assert saliency(interacting_model, FOCUS_IMAGE, queries=400, grid=8).focus == 0  # off unless asked
    with pytest.raises(InputError, match="banzhaf"):
        saliency(interacting_model, FOCUS_IMAGE, queries=400, **dict(options, method="ig"))
    with pytest.raises(InputError, match="focus do not apply"):  # the default draws its own queries
        saliency(interacting_model, FOCUS_IMAGE, queries=400, **dict(options, method=None))
    with pytest.raises(InputError, match="does not combine"):
        saliency(interacting_model, FOCUS_IMAGE, queries=400, blocks=4, **options)
    with pytest.raises(InputError, match="does not combine"):
        saliency(interacting_model, FOCUS_IMAGE, queries=400, refine=True, **options)
    with pytest.raises(InputError, match="between 0 and 1"):
        saliency(interacting_model, FOCUS_IMAGE, queries=400, **dict(options, focus=1.5))


# ---- the smoothness prior fades above 1000 queries: more queries, closer to the true values
def banzhaf_model(images):
    """Additive in the cells (weights that are not smooth) plus pairwise interactions (complement
    pairs turn them into main effects: cell i's Banzhaf value is a_i + sum_j b_ij / 2) plus odd
    three-way interactions (noise to every fit)."""
    m = np.rint(FOCUS_GRID.pool(np.asarray(images, np.float64) / FOCUS_IMAGE)[..., 0].reshape(len(images), -1))
    signs = 2 * m - 1
    pairs = np.einsum("ni,ij,nj->n", m, BANZHAF_B, m)
    return m @ BANZHAF_A + pairs + 0.1 * np.prod(signs[:, FOCUS_TRIPLES], axis=2).sum(axis=1)


_rng = np.random.default_rng(3)
BANZHAF_A = _rng.standard_normal(64)
BANZHAF_B = np.triu(0.2 * _rng.standard_normal((64, 64)), 1)
BANZHAF_VALUES = BANZHAF_A + (BANZHAF_B + BANZHAF_B.T).sum(axis=1) / 2


def test_the_smoothness_prior_fades_above_1000_queries_so_the_map_converges_to_the_banzhaf_values():
    from blackbox.saliency import PRIOR_QUERIES, prior_weight

    assert prior_weight(0.1, 500) == prior_weight(0.1, PRIOR_QUERIES) == 0.1
    assert prior_weight(0.1, 4000) == pytest.approx(0.025) and prior_weight(None, 4000) is None
    options = dict(grid=8, baseline=np.zeros_like(FOCUS_IMAGE), seed=0, method="banzhaf")
    error = lambda cells: np.linalg.norm(cells.ravel() - BANZHAF_VALUES) / np.linalg.norm(BANZHAF_VALUES)
    faded, held = {}, {}
    for n in (1000, 2000, 8000):
        result = saliency(banzhaf_model, FOCUS_IMAGE, queries=n, **options)
        assert result.estimate.extras["smoothness"] == pytest.approx(0.1 * min(1, 1000 / n))
        faded[n] = error(result.cells)
        held[n] = error(Regression(0.1).fit(result.estimate, FOCUS_GRID.laplacian())[0])  # the prior as at 1000
    assert faded[1000] == pytest.approx(held[1000])  # up to 1000 queries nothing changes
    assert held[8000] > 0.7 * held[2000], held    # held relative to the data, its bias stays
    assert faded[8000] < 0.5 * held[8000] and faded[8000] < faded[2000] < faded[1000], (faded, held)


def test_focus_fits_stage_1_with_the_prior_of_its_own_queries():
    options = dict(grid=8, baseline=np.zeros_like(FOCUS_IMAGE), seed=0, method="banzhaf")
    result = saliency(banzhaf_model, FOCUS_IMAGE, queries=4000, focus=0.3, **options)
    first = saliency(banzhaf_model, FOCUS_IMAGE, queries=2000, **options)  # stage 1 alone: 2000 queries
    assert result.estimate.extras["focus_queries"] == 2000
    assert result.estimate.extras["smoothness"] == pytest.approx(0.05)  # faded for 2000 queries, not 4000
    np.testing.assert_allclose(np.sort(result.cells.ravel()), np.sort(first.cells.ravel()))
