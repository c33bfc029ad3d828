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

from blackbox.alignment import (CaptionTask, OutputNoise, Projector, caption_loss, caption_nll,  # noqa: E402
                                evaluate, train_projector, word_basis)
from blackbox.errors import InputError  # noqa: E402
from blackbox.forward_learning import estimate  # noqa: E402
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
    from blackbox.adapters.image_features import image_features
    from blackbox.tasks import load_digits

    data = load_digits(classes=(0, 1, 2), per_class=8, seed=0)
    return image_features(data.images), data.labels, data.names


def _projector(lm, feats, seed=0):
    return Projector.fit(feats, k=1, embed_dim=lm.embed_dim, dims=6, scale=lm.embedding_scale(),
                         init=lm.embed_tokens(" picture")[0], init_std=0.3, seed=seed)


def test_digit_features_are_real_and_cached(digits):
    from blackbox.adapters.image_features import image_features
    from blackbox.tasks import load_digits

    feats, labels, names = digits
    assert feats.shape == (24, 1280) and names == ["zero", "one", "two"]
    assert np.all(feats >= 0) and np.all(feats <= 6)          # ReLU6 then average pooling
    # same-class images are closer than different-class ones (the encoder sees the digits)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = f @ f.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(f), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean()
    assert np.array_equal(image_features(load_digits(classes=(0, 1, 2), per_class=8, seed=0).images), feats)      # from the content-keyed cache
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
    source = OutputNoise(lm, p, h, labels, task, sigma=0.05)
    asked = source.ask(p.theta, items, np.array([80] * 4), np.random.default_rng(3))
    assert len(asked.items) == 320 and np.array_equal(np.bincount(asked.items), [80] * 4)
    est = source.tell(p.theta, items, asked, source.loss(asked.points, asked.items))
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
    est = estimate(OutputNoise(lm, p, h, labels, task, sigma=0.05), p.theta, items, [40] * 4,
                   np.random.default_rng(3))
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
    assert res.stopped and "budget" in res.stopped
    after = caption_nll(lm, res.learned.soft_tokens(feats), task, labels).mean()
    assert after < before - 0.5, (before, after)
    # resume: the checkpoint holds the 10 steps; asking for 10 steps again sends nothing new
    again = train_projector(lm, p, feats, labels, task, steps=10, batch_size=8, queries_per_step=48,
                            sigma=0.3, lr=0.2, allocator="neyman", seed=0, checkpoint=ckpt)
    assert again.resumed_from == 10 and again.queries == 480
    assert np.array_equal(again.learned.theta, res.learned.theta)


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
    assert report["classes"] == ["zero", "one", "two"] and report["train_images"] == 12
    assert 0 <= report["accuracy_after"] <= 1 and report["eval_queries"] == 24
    assert Projector.load(proj).weight.shape == (576, 12) and plot.stat().st_size > 1000


def _captioned_folder(tmp_path, per_class=4):
    """Real pictures the tests draw: red and blue squares with a little noise, and their captions."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "pictures"
    folder.mkdir()
    rows = ["file,caption"]
    for colour, rgb in (("red", (220, 30, 30)), ("blue", (30, 40, 220))):
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (60, 80, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{colour}{i}.png")
            rows.append(f"{colour}{i}.png,{colour}")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder, tmp_path / "captions.csv"


@pytest.mark.slow
def test_cli_align_on_user_images_and_captions(capsys, tmp_path):
    import json

    from blackbox.cli.main import main

    folder, captions = _captioned_folder(tmp_path)
    code = main(["align", "--images", str(folder), "--captions", str(captions), "--queries", "64",
                 "--queries-per-step", "16", "--batch-size", "4", "--eval-every", "2", "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["blue", "red"] and report["train_images"] == 4 and report["heldout_images"] == 4
    assert report["queries_used"] == 64 and report["chance"] == 0.5
    assert report["accuracy_before"] in (0.0, 0.25, 0.5, 0.75, 1.0) and report["eval_queries"] == 3 * 4   # at steps 0, 2 and 4


def test_cli_align_user_data_errors_are_one_line(capsys, tmp_path):
    from blackbox.cli.main import main

    folder, captions = _captioned_folder(tmp_path, per_class=2)
    one = tmp_path / "one.csv"
    one.write_text("file,caption\nred0.png,red\nblue0.png,blue\nblue1.png,blue\n")
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"file": "green0.png", "caption": "green"}\n{"file": "red0.png", "caption": "red"}\n')
    cases = [(["--images", str(folder)], "both --images and --captions"),
             (["--images", str(folder), "--captions", str(captions), "--caption-column", "label"], "no column 'label'"),
             (["--images", str(folder), "--captions", str(one)], "has only one image"),
             (["--images", str(folder), "--captions", str(missing)], "has only one image"),
             (["--images", str(tmp_path / "nowhere"), "--captions", str(captions)], "not a folder"),
             (["--images", str(folder), "--captions", str(captions), "--classes", "012"], "apply to the digits"),
             (["--file-column", "name"], "apply to your own images")]
    for bad, why in cases:
        assert main(["align", *bad, "--no-progress"]) == 2, bad
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, (bad, err)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("file,caption\nred0.png,red\nred1.png,red\ngreen0.png,green\ngreen1.png,green\n")
    assert main(["align", "--images", str(folder), "--captions", str(doubled), "--no-progress"]) == 2
    assert "'green0.png' is not in" in capsys.readouterr().err
