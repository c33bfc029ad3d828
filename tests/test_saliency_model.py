"""Saliency on the real embedded model (EfficientNet-Lite0, ONNX runtime + torch twin)."""
import numpy as np
import pytest

from blackbox import Budget, QueryRunner, cosine, deletion_insertion, make_baseline, saliency, spearman
from blackbox.saliency.spaces import PatchGrid


def test_embedded_model_sees_espresso(model, coffee):
    label, prob, index = model.top_k(coffee, 1)[0]
    assert (label, index) == ("espresso", 967) and prob > 0.9
    # the ONNX runtime model and its torch twin agree
    np.testing.assert_allclose(model.log_probs(coffee[None]), model.reference.log_probs(coffee[None]), atol=1e-3)


def test_view_accepts_uint8_and_float_images(model, coffee, coffee_original):
    view = model.view(*coffee_original.shape[:2])
    np.testing.assert_allclose(view.to_working(coffee_original), coffee, atol=1e-6)


def test_targets_resolve_from_labels_synonyms_and_indices(model, coffee):
    assert model.resolve_target(None, coffee).label == "espresso"
    assert model.resolve_target("Tea Cup", coffee).index == 968
    assert model.resolve_target("968", coffee).label == "tea cup"
    from blackbox import InputError

    with pytest.raises(InputError, match="did you mean 'espresso'"):
        model.resolve_target("espreso", coffee)
    with pytest.raises(InputError, match="out of range"):
        model.resolve_target(1000, coffee)


@pytest.mark.slow
def test_cosine_with_white_box_gradient_rises_with_queries(model, coffee):
    """Stein: the LR estimate at noise s equals white-box SmoothGrad's mean gradient at s.
    Per-cell comparison on a 7x7 grid in pixel space."""
    target = model.resolve_target(None, coffee)
    grid, sigma = PatchGrid(224, 224, 7), 0.05
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((24, 7, 7, 1)) * sigma
    noisy = np.clip(coffee[None] + grid.upsample(noise), 0, 1).astype(np.float32)
    wb = model.reference.gradient(noisy, target)  # (24, 224, 224, 3)
    reference = (grid.pool(wb) * grid.cell_pixels[None, :, :, None]).sum(-1).mean(0)
    score = model.score_fn(target)
    cosines = []
    for queries in (100, 400, 1600):
        result = saliency(score, coffee, queries=queries, grid=7, method="vanilla", space="pixel",
                          sigma=sigma, seed=1)
        assert result.queries == queries
        cosines.append(cosine(result.estimate.grad.reshape(7, 7), reference))
    assert cosines[0] < cosines[1] < cosines[2], cosines
    assert cosines[2] > 0.5, cosines


def test_mask_space_map_is_faithful(model, coffee):
    """Deleting the cells the map ranks first kills 'espresso' faster than a random order, and
    inserting them restores it faster."""
    target = model.resolve_target(None, coffee)
    result = saliency(model.score_fn(target), coffee, queries=600, grid=7, seed=0)
    baseline = make_baseline(coffee)
    prob = model.score_fn(target, "prob")
    ours = deletion_insertion(prob, coffee, result.map, baseline, cells=7)
    rand = [deletion_insertion(prob, coffee, np.random.default_rng(s).random((224, 224)), baseline, cells=7)
            for s in range(3)]
    print("ours", ours.as_dict(), "random", [r.as_dict() for r in rand])
    assert ours.deletion_auc < 0.85 * np.mean([r.deletion_auc for r in rand])
    assert ours.insertion_auc > 1.15 * np.mean([r.insertion_auc for r in rand])
    assert result.map.shape == (224, 224) and result.cells.shape == (7, 7)
    assert np.all(np.isfinite(result.stderr)) and result.stderr.mean() < np.abs(result.cells).max()


def test_saliency_is_reproducible_and_maps_back_to_the_image(model, coffee, coffee_original):
    score = model.score_fn(model.resolve_target(None, coffee))
    a = saliency(score, coffee, queries=64, grid=4, seed=5)
    b = saliency(score, coffee, queries=64, grid=4, seed=5)
    np.testing.assert_array_equal(a.map, b.map)
    view = model.view(*coffee_original.shape[:2])
    full = view.to_original(a.map)
    assert full.shape == coffee_original.shape[:2]
    assert np.all(full[~view.coverage()] == 0)  # pixels the model never sees get no attribution
    assert spearman(full[view.coverage()], full[view.coverage()]) == pytest.approx(1.0)


@pytest.mark.parametrize("space,method", [("pixel", "ig"), ("pixel", "gradxinput"), ("mask", "smoothgrad")])
def test_every_method_runs_blockwise_within_its_budget(model, coffee, space, method):
    score = model.score_fn(model.resolve_target(None, coffee))
    result = saliency(score, coffee, queries=96, grid=4, blocks=4, space=space, method=method, seed=0)
    assert result.queries == 96 and result.blocks == 4
    assert np.all(np.isfinite(result.map)) and np.abs(result.map).max() > 0


def test_budget_is_never_exceeded(model, coffee):
    score = model.score_fn(model.resolve_target(None, coffee))
    budget = Budget(max_queries=150)
    runner = QueryRunner(score, budget=budget, batch_size=32)
    result = saliency(runner, coffee, queries=1000, grid=7, seed=0)
    assert budget.queries <= 150 and result.queries == budget.queries
    assert result.stopped and "budget exhausted" in result.stopped
    assert np.all(np.isfinite(result.map))  # the map from what was paid for is kept
