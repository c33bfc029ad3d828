"""Soft prompt tuning of a language model that is only queried (forward learning, section 5).

``k`` trainable prompt vectors are prepended to the input embeddings of a frozen LM. They live in
a low-dimensional random subspace (as in Black-Box Tuning): ``soft = init + (theta @ P)`` with
``theta`` in ``R^rank`` and a fixed random ``P`` (``rank x k*d``), so a likelihood-ratio gradient
from a few hundred queries per step is informative. The loss of an example is the cross-entropy of the
example's label word among the label words (next-token log-probabilities after the text and the
soft tokens); the prediction is the label word with the highest log-probability.

The model is reached only through query functions (numpy in, numpy out):

* ``label_logprobs_fn(soft (m, k, d) or (k, d), prompts) -> (m, C)``: log-probabilities of the C
  label words after each prompt (one query per row, like an API's ``top_logprobs``); training
  minimises the cross-entropy over the label words, evaluation takes their argmax;
* ``loss_grad_fn(soft (k, d), prompts, labels) -> (losses (n,), d sum / d soft (k, d))``: only for
  the white-box backpropagation reference (:func:`backprop_soft_prompt`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .forward_learning import TrainResult, _Adam, batch_items, forward_train


@dataclass
class TextClassificationTask:
    """Texts with integer labels, a train/test split, and one label word per class."""

    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    label_words: list[str]
    name: str = "task"
    template: str = "{text}\nIt is a"

    def __post_init__(self):
        self.train_labels = np.asarray(self.train_labels, dtype=np.int64)
        self.test_labels = np.asarray(self.test_labels, dtype=np.int64)
        if len(self.train_texts) != len(self.train_labels) or len(self.test_texts) != len(self.test_labels):
            raise InputError("every text needs one label")
        for labels in (self.train_labels, self.test_labels):
            if labels.size and (labels.min() < 0 or labels.max() >= len(self.label_words)):
                raise InputError("labels must index label_words")

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [self.template.format(text=t) for t in texts]

    def summary(self) -> dict:
        return {"name": self.name, "classes": [w.strip() for w in self.label_words],
                "train": len(self.train_texts), "test": len(self.test_texts)}


class SoftPromptSpace:
    """``soft(theta) = init + (theta @ P).reshape(k, d)`` with a fixed random ``P`` (seeded).

    ``P`` has i.i.d. ``N(0, (scale)^2 / rank)`` entries, so ``theta`` of norm ~sqrt(rank) moves
    each soft coordinate by about ``scale`` (pass the token-embedding RMS). ``rank=None`` trains
    the ``k*d`` coordinates directly.
    """

    def __init__(self, init: np.ndarray, rank: int | None = 64, scale: float = 0.1, seed: int = 0):
        self.init = np.asarray(init, dtype=np.float64)
        if self.init.ndim != 2:
            raise InputError(f"init must be (k, d), got {self.init.shape}")
        self.k, self.d = self.init.shape
        self.rank = rank
        if rank is None:
            self.projection = None
            self.dim = self.k * self.d
        else:
            if rank < 1:
                raise InputError("rank must be >= 1")
            rng = np.random.default_rng([seed, 77])
            self.projection = rng.standard_normal((rank, self.k * self.d)) * (scale / np.sqrt(rank))
            self.dim = rank

    def soft_batch(self, thetas: np.ndarray) -> np.ndarray:
        thetas = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
        delta = thetas if self.projection is None else thetas @ self.projection
        return self.init[None] + delta.reshape(len(thetas), self.k, self.d)

    def soft(self, theta: np.ndarray) -> np.ndarray:
        return self.soft_batch(theta)[0]

    def pullback(self, grad_soft: np.ndarray) -> np.ndarray:
        """Chain rule: d loss / d theta from d loss / d soft."""
        g = np.asarray(grad_soft, dtype=np.float64).reshape(-1)
        return g if self.projection is None else self.projection @ g


def soft_prompt_loss(label_logprobs_fn: Callable, space: SoftPromptSpace, task: TextClassificationTask):
    """The per-item loss for :func:`forward_train`: the cross-entropy over the label words of
    training example ``item`` under the soft prompt of each theta row (one query per row)."""
    prompts = task.prompts(task.train_texts)

    def loss(thetas: np.ndarray, items: np.ndarray) -> np.ndarray:
        soft = space.soft_batch(thetas)
        lp = np.asarray(label_logprobs_fn(soft, [prompts[i] for i in items]), dtype=np.float64)
        return label_cross_entropy(lp, task.train_labels[items])

    return loss


def label_cross_entropy(lp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``-log softmax(lp)[label]`` over the label words (renormalised among them)."""
    norm = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return -norm[np.arange(len(labels)), np.asarray(labels)]


def evaluate(label_logprobs_fn: Callable, soft: np.ndarray, task: TextClassificationTask,
             split: str = "test") -> dict:
    """Accuracy and mean label NLL (over the label words) of a soft prompt on a split."""
    texts = task.test_texts if split == "test" else task.train_texts
    labels = task.test_labels if split == "test" else task.train_labels
    lp = np.asarray(label_logprobs_fn(soft, task.prompts(texts)), dtype=np.float64)
    if lp.shape != (len(texts), len(task.label_words)):
        raise InputError(f"label_logprobs_fn returned {lp.shape}, expected {(len(texts), len(task.label_words))}")
    pred = lp.argmax(1)
    norm = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return {"accuracy": float(np.mean(pred == labels)),
            "label_nll": float(-np.mean(norm[np.arange(len(labels)), labels]))}


@dataclass
class PromptTuningResult:
    """Before/after accuracy of a tuned soft prompt, the queries it cost, and its history."""

    soft: np.ndarray
    theta: np.ndarray
    before: dict
    after: dict
    train_queries: int
    eval_queries: int
    seconds: float
    method: str
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    stopped: str | None = None

    @property
    def gain(self) -> float:
        return self.after["accuracy"] - self.before["accuracy"]

    def summary(self) -> dict:
        return {"method": self.method, "accuracy_before": self.before["accuracy"],
                "accuracy_after": self.after["accuracy"], "gain": round(self.gain, 4),
                "train_queries": self.train_queries, "eval_queries": self.eval_queries,
                "seconds": round(self.seconds, 2), "stopped": self.stopped}


def tune_soft_prompt(label_logprobs_fn: Callable, task: TextClassificationTask,
                     space: SoftPromptSpace, *, steps: int | None = 60, total_queries: int | None = None,
                     batch_size: int = 8, queries_per_step: int = 64, sigma: float = 1.0,
                     lr: float = 0.2, allocator="uniform", seed: int = 0, budget=None,
                     checkpoint=None, eval_every: int | None = None, progress: bool = False,
                     theta0: np.ndarray | None = None) -> PromptTuningResult:
    """Train ``space``'s parameters from loss queries only (LR gradients + allocator + Adam)."""
    t0 = time.perf_counter()
    n_test = len(task.test_texts)
    eval_calls = [0]

    def eval_theta(theta):
        eval_calls[0] += 1
        return evaluate(label_logprobs_fn, space.soft(theta), task)

    theta0 = np.zeros(space.dim) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    run: TrainResult = forward_train(
        soft_prompt_loss(label_logprobs_fn, space, task), theta0, len(task.train_texts), batch_size=batch_size,
        queries_per_step=queries_per_step, steps=steps, total_queries=total_queries, sigma=sigma,
        lr=lr, allocator=allocator, seed=seed, budget=budget, checkpoint=checkpoint,
        progress=progress, eval_fn=eval_theta, eval_every=eval_every or 10 ** 9)
    before = {k: v for k, v in run.evals[0].items() if k not in ("step", "queries")}
    after = {k: v for k, v in run.evals[-1].items() if k not in ("step", "queries")}
    return PromptTuningResult(space.soft(run.theta), run.theta, before, after, run.queries,
                              eval_calls[0] * n_test, time.perf_counter() - t0,
                              f"queries ({getattr(allocator, 'name', allocator)})", run.history,
                              run.evals, run.stopped)


def backprop_soft_prompt(loss_grad_fn: Callable, label_logprobs_fn: Callable,
                         task: TextClassificationTask, space: SoftPromptSpace, *, steps: int = 60,
                         batch_size: int = 8, lr: float = 0.2, seed: int = 0,
                         eval_every: int | None = None) -> PromptTuningResult:
    """The white-box reference: the same prompt, loss, batches and Adam, with exact gradients."""
    t0 = time.perf_counter()
    prompts = task.prompts(task.train_texts)
    n = len(prompts)
    batch_size = min(batch_size, n)
    theta = np.zeros(space.dim)
    adam = _Adam(lr)
    before = evaluate(label_logprobs_fn, space.soft(theta), task)
    evals = [{"step": 0, "queries": 0, **before}]
    history = []
    for step in range(steps):
        items = batch_items(seed, step, n, batch_size)
        values, grad_soft = loss_grad_fn(space.soft(theta), [prompts[i] for i in items],
                                         task.train_labels[items])
        grad = space.pullback(grad_soft) / batch_size
        theta = adam.step(theta, grad)
        history.append({"step": step + 1, "loss": float(np.mean(values)), "queries": 0})
        if eval_every and (step + 1) % eval_every == 0:
            evals.append({"step": step + 1, "queries": 0,
                          **evaluate(label_logprobs_fn, space.soft(theta), task)})
    after = evaluate(label_logprobs_fn, space.soft(theta), task)
    if evals[-1]["step"] != steps:
        evals.append({"step": steps, "queries": 0, **after})
    return PromptTuningResult(space.soft(theta), theta, before, after, 0, len(evals) * len(task.test_texts),
                              time.perf_counter() - t0, "backprop", history, evals)
