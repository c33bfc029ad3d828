"""The occlusion sampler, plugged into a Saliency of parts like any other sampler: each cell's value
is the score's drop when that cell alone is removed, checked against those queries made by hand."""
import numpy as np
import pytest

from blackbox import Budget, InputError, QueryRunner
from blackbox.saliency import Mask, METHODS, Saliency
from blackbox.saliency.occlusion import Occlusion

RNG = np.random.default_rng(3)
IMAGE = RNG.random((40, 48, 3)).astype(np.float32)
WEIGHTS = RNG.normal(size=IMAGE.shape).astype(np.float32)


def model(images):
    """A score that is not linear in the cells: removing two cells is not the sum of each alone."""
    x = np.asarray(images, dtype=np.float64)
    return np.tanh((x * WEIGHTS).sum(axis=(1, 2, 3)) / 300.0) + x[:, :20, :24].mean(axis=(1, 2, 3)) ** 2


def by_hand(space):
    """f(image) - f(image with cell c at the baseline), per cell, rendered by the space itself."""
    points = np.ones((space.dim + 1, space.dim))
    points[np.arange(1, space.dim + 1), np.arange(space.dim)] = 0.0
    images, delivered = space.render(points)
    scores = model(images)
    return (scores[0] - scores[1:]) / (delivered[0] - np.diag(delivered[1:]))


def test_occlusion_reads_each_cell_removed_alone():
    explainer = Saliency(Mask(grid=6), METHODS["banzhaf"], sampler=Occlusion())
    result = explainer(model, IMAGE, queries=500)
    space = explainer.check(IMAGE, 500)
    np.testing.assert_allclose(result.cells.ravel(), by_hand(space), rtol=1e-9, atol=1e-12)
    assert result.queries == 37 and result.estimator == "lr" and result.stopped is None  # 6 x 6 cells + the image


def test_occlusion_keeps_what_a_budget_paid_for():
    runner = QueryRunner(model, budget=Budget(max_queries=20), batch_size=8)
    result = Saliency(Mask(grid=6), sampler=Occlusion())(runner, IMAGE, queries=500)
    measured = result.estimate.count.astype(bool)
    assert result.stopped and result.queries == 16 and measured.sum() == 15  # two chunks of 8: the image + 15 cells
    space = Saliency(Mask(grid=6)).check(IMAGE, 500)
    np.testing.assert_allclose(result.cells.ravel()[measured], by_hand(space)[measured], rtol=1e-9, atol=1e-12)
    assert np.all(result.cells.ravel()[~measured] == 0)


def test_occlusion_refuses_what_it_cannot_do():
    from blackbox.saliency import Pixel

    with pytest.raises(InputError, match="needs 37 queries"):
        Saliency(Mask(grid=6), sampler=Occlusion())(model, IMAGE, queries=30)
    with pytest.raises(InputError, match="mask space"):
        Saliency(Pixel(grid=6), sampler=Occlusion())(model, IMAGE, queries=100)
