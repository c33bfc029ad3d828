"""The default map's design: each query removes one group of a random partition of the cells (a
quarter), read by least squares with a free intercept. Checked against exact values, against the
same fit written out by hand, and on the real model where half-removed masks fail."""
import numpy as np
import pytest

from blackbox import InputError, saliency
from blackbox.estimators import Regression
from blackbox.images import blur
from blackbox.saliency import Mask, Saliency
from blackbox.saliency.metrics import deletion_insertion
from blackbox.saliency.partitions import Partitions
from blackbox.saliency.spaces import PatchGrid

GRID = PatchGrid(32, 32, 8)
IMAGE = 0.2 + 0.8 * np.random.default_rng(5).random((32, 32, 3)).astype(np.float32)
WEIGHTS = np.random.default_rng(2).standard_normal(64)


def kept(images):
    """The keep indicator of each cell (zero baseline: a removed cell is black)."""
    return np.rint(GRID.pool(np.asarray(images, np.float64) / IMAGE)[..., 0].reshape(len(images), -1))


def additive(images):
    return 3.0 + kept(images) @ WEIGHTS


def test_partitions_remove_each_cell_once_per_block():
    masks = Partitions(4).masks(400, 64, np.random.default_rng(0))
    blocks = masks.reshape(100, 4, 64)
    np.testing.assert_array_equal(blocks.sum(axis=1), np.full((100, 64), 3.0))  # each cell out once per block
    assert set(np.unique((1 - masks).sum(axis=1))) == {16.0}  # a quarter of the cells per query
    assert not np.array_equal(blocks[0], blocks[1])  # a fresh partition per block


def test_an_additive_score_is_read_exactly():
    result = saliency(additive, IMAGE, queries=400, grid=8, baseline=np.zeros_like(IMAGE), smoothness=0)
    assert result.method == "quarters" and result.estimator == "ridge" and result.queries == 400
    np.testing.assert_allclose(result.cells.ravel(), WEIGHTS, atol=0.02)  # only the 0.003 ridge
    assert result.estimate.f0 == pytest.approx(additive(IMAGE[None])[0])  # the photo, asked first


def test_the_fit_is_least_squares_with_a_free_intercept():
    def bumpy(images):  # not additive: the fit is a projection, compared with one written out
        m = kept(images)
        return np.tanh(m @ WEIGHTS / 4) + 0.3 * m[:, 0] * m[:, 1]

    explainer = Saliency(Mask(grid=8, baseline=np.zeros_like(IMAGE)), estimator=Regression(smoothness=0, ridge=1e-9))
    result = explainer(bumpy, IMAGE, queries=601, seed=3)
    # the photo, then 600 masks; least squares with an intercept through the photo's own answer
    masks = np.vstack([np.ones(64), Partitions(4).masks(600, 64, np.random.default_rng(3))])
    design = np.column_stack([np.ones(601), masks])
    answers = bumpy(explainer.check(IMAGE, 601).render(masks)[0])
    weights = np.r_[1e6, np.ones(600)]  # the photo's answer held exactly
    coef = np.linalg.lstsq(design * np.sqrt(weights)[:, None], answers * np.sqrt(weights), rcond=None)[0]
    np.testing.assert_allclose(result.cells.ravel(), coef[1:], atol=1e-5)


def test_partitions_refuse_what_they_cannot_do():
    with pytest.raises(InputError, match="mask space"):
        saliency(additive, IMAGE, queries=400, grid=8, space="pixel", method="quarters")
    with pytest.raises(InputError, match="at least 8 queries"):
        saliency(additive, IMAGE, queries=6, grid=8)
    with pytest.raises(InputError, match="blocks do not apply"):
        saliency(additive, IMAGE, queries=400, grid=8, blocks=4)


@pytest.mark.slow
def test_competing_classes_no_longer_invert_the_deletion_curve(model):
    """chelsea: tabby 0.39 against Egyptian Mau 0.36. Removed into a light blur (4 px), the cells that
    keep the tabby alive among random halves hand it to the Mau near the photo: deleting in the
    order of the half-mask map is slower than a random order. Quarter removals rank the cells by
    their effect near the photo and delete faster than random."""
    from blackbox.sample_images import load_sample

    original = load_sample("chelsea")
    view = model.view(*original.shape[:2])
    photo = view.to_working(original)
    target = model.resolve_target(None, photo)
    score, prob = model.score_fn(target), model.score_fn(target, "prob")
    fill = blur(photo, 4.0)

    def deletion(cells) -> float:
        grid = PatchGrid(224, 224, 14)
        return deletion_insertion(prob, photo, grid.upsample(cells[None])[0], fill, cells=14).deletion_auc

    random = np.mean([deletion(np.random.default_rng(s).random((14, 14))) for s in range(8)])
    halves = deletion(saliency(score, photo, queries=1000, method="banzhaf").cells)
    quarters = deletion(saliency(score, photo, queries=1000).cells)
    assert halves > random > 1.5 * quarters, (halves, random, quarters)
