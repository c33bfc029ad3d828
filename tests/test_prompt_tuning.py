"""Soft prompt tuning on the real embedded SmolLM2, and the discrete prompt policy gradient."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from blackbox.discrete_prompt import PromptPolicy, tune_discrete_prompt, warm_start  # noqa: E402
from blackbox.errors import InputError  # noqa: E402
from blackbox.estimators import lr_gradient  # noqa: E402
from blackbox.prompt_tuning import (LMLabelQueries, SoftPromptSpace, TextClassificationTask,  # noqa: E402
                                    soft_prompt_loss)


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("transformers")
    from blackbox.adapters.causal_lm import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="module")
def task():
    from blackbox.tasks import imagenet_description_task

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
    q = LMLabelQueries(lm, task.label_words)
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
    assert res.learned.split()[0] == "yes" and res.history[-1]["prompt"] == res.learned
    # before: no prompt at all, every label tied at -3 (a tie is no correct answer)
    assert res.after["accuracy"] == 1.0 and res.before["accuracy"] == 0.0
    assert res.queries == 30 * 8 and all(min(h["allocation"]) >= 2 for h in res.history)
    assert res.eval_queries == 4
    # a saved prompt is where a new run starts: with no steps it is only evaluated
    candidates, slots, theta0 = warm_start(res.learned.split(), ["no", "maybe"])
    again = tune_discrete_prompt(label_logprobs, task, candidates, n_slots=slots, steps=0, theta0=theta0)
    assert again.learned == res.learned and again.before == again.after == res.after and again.queries == 0


def test_policy_score_is_the_gradient_of_the_log_probability():
    pol = PromptPolicy(["a", "b", "c"], 2)
    logits = np.array([[0.1, -0.3, 0.5], [1.0, 0.0, -1.0]])
    choice = np.array([[2, 0]])
    g = pol.score(logits, choice)[0]

    def logp(logits):
        lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        return lp[0, 2] + lp[1, 0]

    eps = 1e-6
    num = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        e = np.zeros_like(logits)
        e[idx] = eps
        num[idx] = (logp(logits + e) - logp(logits - e)) / (2 * eps)
    assert np.allclose(g, num, atol=1e-6)
    samples = pol.sample(logits, 4000, np.random.default_rng(0))
    assert np.allclose(np.bincount(samples[:, 1], minlength=3) / 4000, pol.probs(logits)[1], atol=0.03)


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


POSITIVE = ["I loved this film, it was wonderful", "A great, warm and funny story", "Brilliant acting and a happy end",
            "What a delightful and moving movie", "Superb music and a lovely cast", "The best film I saw this year"]
NEGATIVE = ["I hated this film, it was awful", "A dull, boring and stupid story", "Terrible acting and a bad end",
            "What a tedious and painful movie", "Awful music and a weak cast", "The worst film I saw this year"]


@pytest.fixture()
def review_files(tmp_path):
    """A small sentiment data set the tests write (not the built-in task): JSONL train and test."""
    rows = [{"review": t, "sentiment": "positive"} for t in POSITIVE] + \
           [{"review": t, "sentiment": "negative"} for t in NEGATIVE]
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    return write_jsonl(tmp_path / "train.jsonl", rows[:8]), write_jsonl(tmp_path / "test.jsonl", rows[8:])


@pytest.mark.slow
def test_cli_tunes_a_soft_prompt_on_user_data_and_re_evaluates_the_saved_prompt(capsys, tmp_path, review_files, lm):
    import json

    from blackbox.cli.main import main

    train, test = review_files
    soft, report = tmp_path / "soft.npy", tmp_path / "results.json"
    data = ["--train", str(train), "--test", str(test), "--text-column", "review", "--label-column", "sentiment",
            "--template", "Review: {text}\nSentiment:"]
    assert main(["tune-prompt", *data, "--steps", "3", "--queries-per-step", "16", "--batch-size", "4",
                 "--save", str(soft), "--report", str(report), "--plot", str(tmp_path / "c.png"), "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(report.read_text())
    assert out["task"] == {"name": "train", "classes": ["negative", "positive"], "train": 8, "test": 4}
    assert out["train_queries"] == 48 and out["eval_queries"] == 8 and out["steps"] == 3
    for key in ("accuracy_before", "accuracy_after"):
        assert out[key] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert out["label_nll_before"] > 0 and out["label_nll_after"] > 0 and out["cost"] == 0.0
    assert np.load(soft).shape == (4, 576) and (tmp_path / "c.png").stat().st_size > 1000
    # the saved prompt, evaluated again: exactly the accuracy and NLL the run ended with
    assert main(["tune-prompt", *data, "--prompt", str(soft), "--steps", "0", "--json", "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["train_queries"] == 0 and again["accuracy_before"] == again["accuracy_after"] == out["accuracy_after"]
    assert again["label_nll_after"] == pytest.approx(out["label_nll_after"], abs=1e-6)


@pytest.mark.slow
def test_cli_tune_prompt_runs_the_built_in_task(capsys, tmp_path, lm):
    import json

    from blackbox.cli.main import main

    assert main(["tune-prompt", "--steps", "2", "--queries-per-step", "16", "--batch-size", "4", "--per-class", "2",
                 "--sentences", "1", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_queries"] == 32 and report["task"]["test"] == 5 and report["task"]["train"] == 5
    assert 0 <= report["accuracy_before"] <= 1 and 0 <= report["accuracy_after"] <= 1


def test_cli_tune_prompt_bad_input_is_one_line(capsys, tmp_path, review_files):
    import json

    from blackbox.cli.main import main

    train, test = review_files
    bad_label = write_jsonl(tmp_path / "bad.jsonl", [{"text": "good", "label": "very good"}, {"text": "x", "label": "b"}])
    one_label = write_jsonl(tmp_path / "one.jsonl", [{"text": "good", "label": "a"}, {"text": "x", "label": "a"}])
    unseen = write_jsonl(tmp_path / "unseen.jsonl", [{"review": "good", "sentiment": "neutral"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": "b"}\n{oops\n')
    not_a_prompt = tmp_path / "p.json"
    not_a_prompt.write_text('{"model": "m"}')
    other_labels = tmp_path / "q.json"
    other_labels.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "{text}"}],
                                        "labels": ["cat", "dog"]}))
    cols = ["--text-column", "review", "--label-column", "sentiment"]
    cases = [(["--train", str(train)], "both --train and --test"),
             (["--train", str(train), "--test", str(test)], "no column 'text'"),
             (["--train", str(tmp_path / "none.jsonl"), "--test", str(test), *cols], "file not found"),
             (["--train", str(empty), "--test", str(test), *cols], "holds no rows"),
             (["--train", str(tmp_path / "broken.jsonl"), "--test", str(test)], "line 2 is not valid JSON"),
             (["--train", str(bad_label), "--test", str(bad_label)], "not a single answer word"),
             (["--train", str(one_label), "--test", str(one_label)], "only one label"),
             (["--train", str(train), "--test", str(unseen), "--label-column", "sentiment", "--text-column", "review"],
              "never occurs in the training split"),
             (["--train", str(train), "--test", str(test), *cols, "--template", "no text here"], "{text}"),
             (["--train", str(train), "--test", str(test.with_suffix(".txt")), *cols], "unknown table format"),
             (["--train", str(train), "--test", str(test), *cols, "--per-class", "3"], "built-in task"),
             (["--text-column", "review"], "your own data"),
             (["--queries-per-step", "15"], "even"), (["--save", str(tmp_path / "no" / "x.npy")], "does not exist"),
             (["--init", " "], "--init"), (["--model", "gpt-2"], "unknown model"),
             (["--base-url", "http://127.0.0.1:9/v1"], "apply to --model openai"),
             (["--api", "chat"], "apply to --model openai"),
             (["--model", "openai:m", "--sigma", "1"], "apply to the embedded model"),
             (["--model", "openai:m", "--candidates", "one"], "two comma-separated"),
             (["--steps", "-1"], "must be >= 0"),
             (["--batch"], "apply to --model openai"), (["--shots", "2"], "apply to --model openai"),
             (["--model", "openai:m", "--instructions", str(tmp_path / "none.txt")], "file not found"),
             (["--model", "openai:m", "--shots", "500"], "use at most"),
             (["--model", "openai:m", "--batch", "--no-cache"], "drop --no-cache"),
             (["--model", "openai:m", "--service-tier", "flex"], "no flex rate"),
             (["--model", "openai:m", "--prompt", str(not_a_prompt)], "not a prompt file"),
             (["--model", "openai:m", "--prompt", str(other_labels), "--train", str(train), "--test", str(test), *cols],
              "was tuned for the labels"),
             (["--model", "openai:m", "--temperature", "0"], "must be > 0"),
             (["--label-tokens", "all"], "apply to --model openai"),
             (["--model", "openai:m", "--api", "chat", "--label-tokens", "all"], "needs /v1/completions"),
             (["--model", "openai:m", "--label-tokens", "some"], "invalid choice"),
             (["--model", "openai:m", "--base-url", "http://127.0.0.1:9", "--select", "5", "--eval-every", "2"],
              "--eval-every with --select")]
    for bad, why in cases:
        try:
            code = main(["tune-prompt", *bad, "--no-progress"])
        except SystemExit as exc:  # argparse rejects a malformed number itself
            code = exc.code
        assert code == 2, bad
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, (bad, err)


def test_cli_search_dry_run_prices_both_ways_and_names_what_label_tokens_all_adds(capsys, tmp_path, review_files):
    """The dry run sends nothing (the port is closed), prices the run one by one and batched, and
    with --label-tokens all runs over completions and says its further requests are not counted."""
    from blackbox.cli.main import main

    train, test = review_files
    base = ["tune-prompt", "--model", "openai:gpt-4o-mini", "--base-url", "http://127.0.0.1:9", "--train", str(train),
            "--test", str(test), "--text-column", "review", "--label-column", "sentiment", "--steps", "2",
            "--dry-run", "--no-progress"]
    assert main(base + ["--json"]) == 0
    sends = json.loads(capsys.readouterr().out)["would_send"]
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert plain.startswith("dry run over chat") and "sent one by one" in plain and "through the Batch API" in plain
    assert "--label-tokens" not in plain and "0 selection requests" in plain
    assert main(base + ["--select", "5", "--json"]) == 0  # three candidates, each on 5 training rows
    report = json.loads(capsys.readouterr().out)
    assert report["selection_requests"] == 15 and report["would_send"] == sends + 15
    assert main(base + ["--label-tokens", "all"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run over completions") and "not counted above: --label-tokens all" in out
