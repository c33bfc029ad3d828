"""Soft prompt tuning on the real embedded SmolLM2, and the discrete prompt policy gradient."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from blackbox.discrete_prompt import PromptPolicy, tune_discrete_prompt  # noqa: E402
from blackbox.errors import InputError  # noqa: E402
from blackbox.estimators import lr_gradient  # noqa: E402
from blackbox.prompt_tuning import SoftPromptSpace, TextClassificationTask, soft_prompt_loss  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("transformers")
    from blackbox.adapters.causal_lm import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="module")
def task():
    from blackbox.adapters.text_tasks import imagenet_description_task

    return imagenet_description_task(("bird", "dog", "fish"), per_class=4, max_words=10)


def test_task_is_real_balanced_and_masks_giveaways(task):
    assert task.summary()["train"] == 6 and task.summary()["test"] == 6
    assert sorted(np.bincount(task.train_labels).tolist()) == [2, 2, 2]
    assert not any(w in t.lower().split() for t in task.train_texts + task.test_texts for w in ("dog", "fish", "bird"))


@pytest.mark.slow
def test_cached_suffix_forward_matches_the_full_forward_and_autograd(lm):
    rng = np.random.default_rng(0)
    soft = rng.normal(size=(2, 3, lm.embed_dim)) * 0.1
    prompts, targets = ["A small animal with long ears. It is", "The capital of France is"], [" a dog", " Paris"]
    cached = lm.nll(soft, prompts, targets, soft_position="suffix")
    values, grad = lm.nll_and_grad(soft, prompts, targets, soft_position="suffix")  # uncached path
    assert np.allclose(cached, values, atol=1e-3)
    one = lm.nll(soft, prompts, [" a", " a"], soft_position="suffix")
    nxt = lm.next_token_logprobs(soft, prompts, [lm.single_token(" a")], soft_position="suffix")
    assert np.allclose(one, -nxt[:, 0], atol=1e-4)
    d = rng.normal(size=soft.shape)
    d /= np.linalg.norm(d)
    h = 1e-2
    fd = (lm.nll(soft + h * d, prompts, targets, soft_position="suffix")
          - lm.nll(soft - h * d, prompts, targets, soft_position="suffix")) / (2 * h)
    assert np.allclose(fd, (grad * d).sum(axis=(1, 2)), rtol=0.05, atol=1e-3)
    with pytest.raises(InputError):
        lm.nll(np.zeros((2, 3, 7)), prompts, targets)


@pytest.mark.slow
def test_lr_gradient_from_queries_matches_backprop_in_the_prompt_subspace(lm, task):
    from blackbox.adapters.lm_prompting import LMPromptQueries

    q = LMPromptQueries(lm, task.label_words)
    space = SoftPromptSpace(q.init_soft(4, " The animal is a"), rank=8, scale=lm.embedding_scale(), seed=0)
    loss = soft_prompt_loss(q.label_logprobs, space, task)
    items = np.arange(3)
    theta = np.zeros(space.dim)

    def mean_loss(thetas):
        rows = np.repeat(thetas, len(items), axis=0)
        return loss(rows, np.tile(items, len(thetas))).reshape(len(thetas), -1).mean(1)

    est = lr_gradient(mean_loss, theta, queries=48, sigma=0.05, seed=0)
    prompts = task.prompts(task.train_texts)
    _, grad_soft = q.label_loss_grad(space.soft(theta), [prompts[i] for i in items], task.train_labels[items])
    exact = space.pullback(grad_soft) / len(items)
    cosine = est.grad @ exact / (np.linalg.norm(est.grad) * np.linalg.norm(exact))
    assert cosine > 0.7


def test_policy_gradient_learns_the_rewarded_word():
    # a toy black box: the label's log-prob is high only when slot 0 says "yes"
    task = TextClassificationTask(["a", "b", "c", "d"], [0, 1, 0, 1], ["e", "f"], [0, 1], [" x", " y"])

    def label_logprobs(prompts):
        out = []
        for p in prompts:
            good = p.startswith("yes")
            label = 0 if p.endswith(("a\nIt is a", "c\nIt is a", "e\nIt is a")) else 1
            lp = np.full(2, -3.0)
            lp[label] = 0.0 if good else -3.0
            out.append(lp)
        return np.array(out)

    res = tune_discrete_prompt(label_logprobs, task, ["no", "yes", "maybe"], n_slots=2, steps=30,
                               batch_size=2, queries_per_step=8, lr=0.3, allocator="neyman", seed=0)
    assert res.prompt.split()[0] == "yes"
    assert res.after["accuracy"] == 1.0 and res.before["accuracy"] == 0.5
    assert res.queries == 30 * 8 and all(min(h["allocation"]) >= 2 for h in res.history)


def test_policy_score_is_the_gradient_of_the_log_probability():
    pol = PromptPolicy(["a", "b", "c"], 2, seed=0)
    pol.logits = np.array([[0.1, -0.3, 0.5], [1.0, 0.0, -1.0]])
    choice = np.array([[2, 0]])
    g = pol.score(choice)[0]

    def logp(logits):
        lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        return lp[0, 2] + lp[1, 0]

    eps = 1e-6
    num = np.zeros_like(pol.logits)
    for idx in np.ndindex(*pol.logits.shape):
        e = np.zeros_like(pol.logits)
        e[idx] = eps
        num[idx] = (logp(pol.logits + e) - logp(pol.logits - e)) / (2 * eps)
    assert np.allclose(g, num, atol=1e-6)


@pytest.mark.slow
def test_cli_tune_prompt_runs_on_the_embedded_lm_and_saves(tmp_path):
    import json
    import subprocess
    import sys

    pytest.importorskip("transformers")
    out = tmp_path / "soft.npy"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "blackbox.cli.main", "tune-prompt", "--steps", "2",
                           "--queries-per-step", "16", "--batch-size", "4", "--per-class", "2", "--sentences", "1",
                           "--save", str(out), "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["train_queries"] == 32 and report["task"]["test"] == 5 and report["task"]["train"] == 5
    assert 0 <= report["accuracy_before"] <= 1 and 0 <= report["accuracy_after"] <= 1
    assert np.load(out).shape == (4, 576)
    for bad, why in ((["--queries-per-step", "15"], "even"), (["--save", str(tmp_path / "no" / "x.npy")], "folder"),
                     (["--init", " "], "--init"), (["--model", "gpt-2"], "unknown model"),
                     (["--base-url", "http://127.0.0.1:9/v1"], "apply to --model openai"),
                     (["--model", "openai:m", "--save", "x.npy"], "apply to the embedded model"),
                     (["--model", "openai:m", "--candidates", "one"], "two comma-separated")):
        proc = subprocess.run([sys.executable, "-m", "blackbox.cli.main", "tune-prompt", *bad],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and why in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
