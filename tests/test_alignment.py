"""Alignment through a queried LM: real SmolLM2, real EfficientNet-Lite0 features of real digits.

Lean on purpose (the LM forward is ~10-100 ms per sequence on 2 shared cores): a handful of
images, one soft token, a few hundred queries. Quality figures live in benchmarks/alignment.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sklearn")

from blackbox.alignment import (CaptionTask, Projector, caption_loss, caption_nll, evaluate,  # noqa: E402
                                output_gradient, train_projector, word_basis)
from blackbox.errors import BudgetExceeded, InputError  # noqa: E402
from blackbox.queries import Budget  # noqa: E402

WORDS = [" zero", " one", " two"]


@pytest.fixture(scope="module")
def lm():
    from blackbox.adapters.causal_lm import load_causal_lm

    try:
        return load_causal_lm()
    except Exception as exc:  # noqa: BLE001 - the LM extra is optional
        pytest.skip(f"the embedded LM is not available: {exc}")


@pytest.fixture(scope="module")
def digits():
    from blackbox.adapters.image_features import image_features, load_digit_set

    images, labels, names = load_digit_set(classes=(0, 1, 2), per_class=8, seed=0)
    return image_features(images), labels, names


def _projector(lm, feats, seed=0):
    return Projector.fit(feats, k=1, embed_dim=lm.embed_dim, dims=6, scale=lm.embedding_scale(),
                         init=lm.embed_tokens(" picture")[0], init_std=0.3, seed=seed)


def test_digit_features_are_real_and_cached(digits):
    from blackbox.adapters.image_features import image_features, load_digit_set

    feats, labels, names = digits
    assert feats.shape == (24, 1280) and names == ["zero", "one", "two"]
    assert np.all(feats >= 0) and np.all(feats <= 6)          # ReLU6 then average pooling
    # same-class images are closer than different-class ones (the encoder sees the digits)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = f @ f.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(f), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean()
    images, _, _ = load_digit_set(classes=(0, 1, 2), per_class=8, seed=0)
    assert np.array_equal(image_features(images), feats)      # from the content-keyed cache
    with pytest.raises(InputError):
        image_features(np.zeros((2, 32, 32, 3)))


def test_projector_shapes_roundtrip_and_bad_input(lm, digits, tmp_path):
    feats, _, _ = digits
    p = _projector(lm, feats)
    soft = p.soft_tokens(feats)
    assert soft.shape == (24, 1, lm.embed_dim) and np.all(np.isfinite(soft))
    h = p.reduce(feats)
    assert np.allclose(h[:, :-1].mean(0), 0, atol=1e-6) and np.allclose(h[:, :-1].std(0, ddof=1), 1, atol=1e-6)
    p.save(tmp_path / "p.npz")
    q = Projector.load(tmp_path / "p.npz")
    assert np.array_equal(q.soft_tokens(feats), soft)
    assert np.array_equal(p.with_theta(p.theta).weight, p.weight)
    with pytest.raises(InputError):
        p.soft_tokens(feats[:, :10])
    with pytest.raises(InputError):
        p.with_theta(np.zeros(3))
    with pytest.raises(InputError):
        CaptionTask(" digit", [" one"])


@pytest.mark.slow
def test_output_perturbation_gradient_matches_backprop(lm, digits):
    """The ULR estimate (noise on the soft tokens, chain rule to W) agrees with autograd."""
    feats, labels, _ = digits
    task = CaptionTask("", WORDS)
    p = _projector(lm, feats, seed=1)
    h = p.reduce(feats)
    items = np.arange(4)
    soft = p.soft_tokens(reduced=h[items])
    _, g = lm.nll_and_grad(soft, [""] * 4, [WORDS[c] for c in labels[items]])
    exact = (g.reshape(4, -1) * p.scale).T @ h[items] / 4
    budget = Budget(max_queries=320)
    est = output_gradient(lm, p, h[items], labels[items], task, [80] * 4,
                          sigma=0.05, rng=np.random.default_rng(3), budget=budget)
    assert est.queries == budget.queries == 320
    cos = est.grad @ exact.reshape(-1) / (np.linalg.norm(est.grad) * np.linalg.norm(exact))
    # d = 576 noise dims per item and 40 pairs each: a correct estimator lands near 0.5 here,
    # a wrong sign or a wrong chain rule near 0 or below
    assert cos > 0.25, cos


def test_output_basis_estimate_matches_backprop_and_survives_save(lm, digits, tmp_path):
    """With a word basis the LR estimator perturbs r = 5 coordinates instead of 576: a few pairs
    per item already agree with autograd (the ranking loss, pulled back through the basis)."""
    feats, labels, _ = digits
    task = CaptionTask("", WORDS, context="Handwritten digit:", loss="ranking")
    basis = word_basis(np.stack([lm.embed_tokens(w)[0] for w in WORDS]), extra=2)
    assert basis.shape == (5, lm.embed_dim) and np.allclose(basis @ basis.T, np.eye(5), atol=1e-8)
    p = Projector.fit(feats, k=1, embed_dim=lm.embed_dim, dims=6, scale=lm.embedding_scale(),
                      init=lm.embed_tokens(" picture")[0], init_std=0.3, out_basis=basis, seed=1)
    assert p.weight.shape == (5, 7) and p.out_dim == 5
    u = np.random.default_rng(0).normal(size=(3, 5))
    g = np.random.default_rng(1).normal(size=(3, 1, lm.embed_dim))
    linear = p.lift(u) - p.lift(np.zeros_like(u))                               # lift is affine (offset)
    assert np.isclose(np.sum(linear * g), np.sum(u * p.pull(g)))                 # pull is its adjoint
    h = p.reduce(feats)
    items = np.arange(4)
    text, kw = task.lm_args()
    ids = [lm.single_token(w) for w in WORDS]
    values, g = lm.label_loss_and_grad(p.soft_tokens(reduced=h[items]), [text] * 4, ids, labels[items], **kw)
    # the ranking loss is the cross-entropy of the zero-shot scores (one query per row)
    assert np.allclose(values, caption_loss(lm, p.soft_tokens(reduced=h[items]), task, labels[items]), atol=1e-4)
    exact = p.pull(g).T @ h[items] / 4
    est = output_gradient(lm, p, h[items], labels[items], task, [40] * 4, sigma=0.05,
                          rng=np.random.default_rng(3))
    cos = est.grad @ exact.reshape(-1) / (np.linalg.norm(est.grad) * np.linalg.norm(exact))
    assert cos > 0.9, cos
    p.save(tmp_path / "b.npz")
    assert np.array_equal(Projector.load(tmp_path / "b.npz").soft_tokens(feats), p.soft_tokens(feats))
    with pytest.raises(InputError):
        Projector.fit(feats, k=1, embed_dim=lm.embed_dim, dims=6, out_basis=basis * 2)
    with pytest.raises(InputError):
        CaptionTask("", WORDS, loss="hinge")


@pytest.mark.slow
def test_training_lowers_loss_and_never_overspends(lm, digits, tmp_path):
    feats, labels, _ = digits
    task = CaptionTask("", WORDS)
    p = _projector(lm, feats, seed=2)
    before = caption_nll(lm, p.soft_tokens(feats), task, labels).mean()
    budget = Budget(max_queries=500)
    ckpt = tmp_path / "align.npz"
    res = train_projector(lm, p, feats, labels, task, steps=100, batch_size=8, queries_per_step=48,
                          sigma=0.3, lr=0.2, allocator="neyman", seed=0, budget=budget, checkpoint=ckpt)
    assert budget.queries <= 500 and res.queries == budget.queries == 480   # 10 steps fit
    assert res.train.stopped and "budget" in res.train.stopped
    after = caption_nll(lm, res.projector.soft_tokens(feats), task, labels).mean()
    assert after < before - 0.5, (before, after)
    # resume: the checkpoint holds the 10 steps; asking for 10 steps again sends nothing new
    again = train_projector(lm, p, feats, labels, task, steps=10, batch_size=8, queries_per_step=48,
                            sigma=0.3, lr=0.2, allocator="neyman", seed=0, checkpoint=ckpt)
    assert again.train.resumed_from == 10 and again.queries == 480
    assert np.array_equal(again.projector.theta, res.projector.theta)
    with pytest.raises(BudgetExceeded):
        evaluate(lm, res.projector, feats, labels, task, budget=Budget(max_queries=3))


def test_zero_shot_ranking_single_query_matches_full_captions(lm, digits):
    feats, labels, _ = digits
    task = CaptionTask(" the digit", WORDS)
    p = _projector(lm, feats)
    fast = evaluate(lm, p, feats[:4], labels[:4], task)
    assert fast["queries"] == 4 and fast["scores"].shape == (4, 3) and fast["chance"] == pytest.approx(1 / 3)
    soft = np.repeat(p.soft_tokens(feats[:4]), 3, axis=0)
    full = -caption_nll(lm, soft, task, np.tile(np.arange(3), 4)).reshape(4, 3)
    assert np.allclose(fast["scores"], full, atol=1e-3)
    # text before the soft token ([context][soft][word]) ranks the same way
    ctx = CaptionTask("", WORDS, context="Handwritten digit:")
    fast = evaluate(lm, p, feats[:4], labels[:4], ctx)
    full = -caption_nll(lm, soft, ctx, np.tile(np.arange(3), 4)).reshape(4, 3)
    assert fast["queries"] == 4 and np.allclose(fast["scores"], full, atol=1e-3)
    with pytest.raises(InputError):
        CaptionTask(" the digit", WORDS, context="Handwritten digit:")


def test_cli_align_bad_input_is_one_line(capsys, tmp_path):
    from blackbox.cli.main import main

    assert main(["align", "--classes", "7"]) == 2
    assert main(["align", "--queries-per-step", "7"]) == 2
    assert main(["align", "--save", str(tmp_path / "missing" / "p.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("blackbox: error: ") for line in err)
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_cli_align_end_to_end_small(capsys, tmp_path):
    import json

    from blackbox.cli.main import main

    proj, plot = tmp_path / "p.npz", tmp_path / "curve.png"
    code = main(["align", "--classes", "012", "--per-class", "8", "--queries", "130", "--queries-per-step", "32",
                 "--batch-size", "8", "--save", str(proj), "--plot", str(plot), "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries_used"] == 128 and "130" in report["stopped"]      # 4 steps fit, never overspent
    assert report["loss"] == "ranking" and report["chance"] == pytest.approx(1 / 3)
    assert 0 <= report["accuracy_after"] <= 1 and report["eval_queries"] == 24
    assert Projector.load(proj).weight.shape == (576, 12) and plot.stat().st_size > 1000
