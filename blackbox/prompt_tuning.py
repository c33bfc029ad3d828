"""Soft prompt tuning of a language model that is only queried (forward learning, section 5).

``k`` trainable prompt vectors are put next to the input embeddings of a frozen LM. They live in
a low-dimensional random subspace (as in Black-Box Tuning): ``soft = init + (theta @ P)`` with
``theta`` in ``R^rank`` and a fixed random ``P`` (``rank x k*d``), so a likelihood-ratio gradient
from a few hundred queries per step is informative. The loss of an example is the cross-entropy of
the example's label word among the label words (next-token log-probabilities after the text and the
soft tokens); the prediction is the label word with the highest log-probability.

Training is :func:`blackbox.forward_learning.train` with :class:`~blackbox.forward_learning.ParameterNoise`
on ``theta`` (:func:`tune_soft_prompt`); the white-box reference (:func:`backprop_soft_prompt`) is the
same loop with an exact gradient source. The model is reached only through query functions:

* ``label_logprobs_fn(soft (m, k, d) or (k, d), prompts) -> (m, C)``: log-probabilities of the C
  label words after each prompt (one query per row, like an API's ``top_logprobs``);
* ``loss_grad_fn(soft (k, d), prompts, labels) -> (losses (n,), d sum / d soft (k, d))``: only for
  the backpropagation reference.

:class:`LMLabelQueries` binds a language model object (the embedded SmolLM2 of
:mod:`blackbox.adapters.causal_lm`, or anything with the same methods) to both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .forward_learning import Estimate, ParameterNoise, TrainResult, train


@dataclass
class TextClassificationTask:
    """Texts with integer labels, a train/test split, and one label word per class.

    ``template`` puts a text in front of the label word (``"{text}\\nAnswer:"``)."""

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
        if "{text}" not in self.template:
            raise InputError(f"the template must contain {{text}}, got {self.template!r}")
        try:
            self.template.format(text="")
        except (KeyError, IndexError, ValueError) as exc:
            raise InputError(f"the template may hold no other {{field}} than {{text}}: {exc}") from None

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [self.template.format(text=t) for t in texts]

    def split(self, name: str) -> tuple[list[str], np.ndarray]:
        """``(texts, labels)`` of ``"train"`` or ``"test"``."""
        if name == "test":
            return self.test_texts, self.test_labels
        return self.train_texts, self.train_labels

    def summary(self) -> dict:
        return {"name": self.name, "classes": [w.strip() for w in self.label_words],
                "train": len(self.train_texts), "test": len(self.test_texts)}


def label_cross_entropy(lp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``-log softmax(lp)[label]`` over the label words (renormalised among them)."""
    norm = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return -norm[np.arange(len(labels)), np.asarray(labels)]


def label_metrics(lp: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy (the true label strictly above every other label word: a tie, e.g. every label at
    an API's floor, is no correct answer), mean label NLL and the queries (one per row)."""
    lp = np.asarray(lp, dtype=np.float64)
    labels = np.asarray(labels)
    if lp.shape[0] != len(labels):
        raise InputError(f"{lp.shape[0]} rows of label log-probabilities for {len(labels)} labels")
    rows = np.arange(len(labels))
    others = np.where(np.arange(lp.shape[1])[None, :] == labels[:, None], -np.inf, lp).max(1) if lp.shape[1] > 1 \
        else np.full(len(labels), -np.inf)
    return {"accuracy": float(np.mean(lp[rows, labels] > others)),
            "label_nll": float(np.mean(label_cross_entropy(lp, labels))), "queries": len(labels)}


class LMLabelQueries:
    """A language model bound to a task's label words: ``label_logprobs`` (the queries), the
    white-box ``label_loss_grad``, and ``init_soft``.

    ``lm`` has ``single_token(word)``, ``next_token_logprobs(soft, prompts, ids, soft_position=)``,
    ``label_loss_and_grad(...)``, ``embed_tokens(text)`` and ``embedding_scale()`` (the embedded
    :class:`~blackbox.adapters.causal_lm.CausalLM` does). The soft tokens sit after the text by
    default (``[text + template][soft][label]``): each text's keys/values are computed once."""

    def __init__(self, lm, label_words: Sequence[str], soft_position: str = "suffix"):
        self.lm = lm
        self.soft_position = soft_position
        self.label_words = list(label_words)
        self.label_ids = []
        for word in self.label_words:
            try:
                self.label_ids.append(lm.single_token(word))
            except InputError as exc:
                raise InputError(f"label {word.strip()!r} is not a single answer word for the model ({exc}); "
                                 "use labels that are one common word each") from None

    def label_logprobs(self, soft: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        return self.lm.next_token_logprobs(soft, list(prompts), self.label_ids, soft_position=self.soft_position)

    def label_loss_grad(self, soft: np.ndarray, prompts: Sequence[str], labels: Sequence[int]):
        """White box: label cross-entropy and its gradient for a shared soft prompt (k, d)."""
        return self.lm.label_loss_and_grad(np.asarray(soft), list(prompts), self.label_ids, list(labels),
                                           soft_position=self.soft_position)

    def init_soft(self, k: int, text: str) -> np.ndarray:
        """``k`` soft tokens initialised from the embeddings of ``text`` (repeated if short)."""
        if k < 1:
            raise InputError("k (the number of soft tokens) must be >= 1")
        emb = self.lm.embed_tokens(text)
        if len(emb) == 0:
            raise InputError("the init text has no tokens")
        return np.concatenate([emb] * (-(-k // len(emb))))[:k]


class SoftPromptSpace:
    """``soft(theta) = init + (theta @ P).reshape(k, d)`` with a fixed random ``P`` (seeded).

    ``P`` has i.i.d. ``N(0, (scale)^2 / rank)`` entries, so ``theta`` of norm ~sqrt(rank) moves
    each soft coordinate by about ``scale`` (pass the token-embedding RMS). ``rank=None`` trains
    the ``k*d`` coordinates directly.
    """

    def __init__(self, init: np.ndarray, rank: int | None = 64, scale: float = 0.1, seed: int = 0):
        self.init = np.asarray(init, dtype=np.float64)
        if self.init.ndim != 2 or not np.all(np.isfinite(self.init)):
            raise InputError(f"init must be a finite (k, d) array, got shape {self.init.shape}")
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
    """The per-item loss for :class:`~blackbox.forward_learning.ParameterNoise`: the cross-entropy
    over the label words of training example ``item`` under the soft prompt of each theta row (one
    query per row)."""
    prompts = task.prompts(task.train_texts)

    def loss(thetas: np.ndarray, items: np.ndarray) -> np.ndarray:
        soft = space.soft_batch(thetas)
        lp = np.asarray(label_logprobs_fn(soft, [prompts[i] for i in items]), dtype=np.float64)
        return label_cross_entropy(lp, task.train_labels[items])

    return loss


def evaluate(label_logprobs_fn: Callable, soft: np.ndarray, task: TextClassificationTask,
             split: str = "test") -> dict:
    """Accuracy, mean label NLL (over the label words) and queries of a soft prompt on a split."""
    texts, labels = task.split(split)
    lp = np.asarray(label_logprobs_fn(soft, task.prompts(texts)), dtype=np.float64)
    if lp.shape != (len(texts), len(task.label_words)):
        raise InputError(f"label_logprobs_fn returned {lp.shape}, expected {(len(texts), len(task.label_words))}")
    return label_metrics(lp, labels)


class SoftPromptBackprop:
    """The exact gradient source of the white-box reference (autograd through the LM)."""

    def __init__(self, loss_grad_fn: Callable, space: SoftPromptSpace, task: TextClassificationTask):
        self.loss_grad_fn, self.space, self.task = loss_grad_fn, space, task
        self.prompts = task.prompts(task.train_texts)
        self.n_items = len(self.prompts)

    def gradient(self, theta: np.ndarray, items: np.ndarray) -> Estimate:
        values, grad_soft = self.loss_grad_fn(self.space.soft(theta), [self.prompts[i] for i in items],
                                              self.task.train_labels[items])
        values = np.asarray(values, dtype=np.float64)
        return Estimate(self.space.pullback(grad_soft) / len(items), np.full(len(items), np.nan), values)

    def learned(self, theta: np.ndarray) -> np.ndarray:
        return self.space.soft(theta)

    def config(self) -> dict:
        return {"source": "soft-prompt-backprop"}


def tune_soft_prompt(label_logprobs_fn: Callable, task: TextClassificationTask, space: SoftPromptSpace, *,
                     sigma: float = 1.0, theta0: np.ndarray | None = None, eval_every: int | None = None,
                     steps: int | None = 60, batch_size: int = 8, queries_per_step: int = 64, lr: float = 0.2,
                     **options) -> TrainResult:
    """Train ``space``'s parameters from label log-prob queries only (LR gradients, an allocator,
    Adam: :func:`~blackbox.forward_learning.train`; ``options`` are its keyword arguments).
    Held-out accuracy and label NLL are measured at the start, every ``eval_every`` steps and at
    the end (``result.before`` / ``result.after``); ``result.learned`` is the soft prompt (k, d)."""
    theta0 = np.zeros(space.dim) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    source = ParameterNoise(soft_prompt_loss(label_logprobs_fn, space, task), len(task.train_texts), sigma,
                            learned=space.soft)
    return train(source, theta0, steps=steps, batch_size=batch_size, queries_per_step=queries_per_step, lr=lr,
                 eval_fn=lambda theta: evaluate(label_logprobs_fn, space.soft(theta), task),
                 eval_every=eval_every, **options)


def backprop_soft_prompt(loss_grad_fn: Callable, label_logprobs_fn: Callable, task: TextClassificationTask,
                         space: SoftPromptSpace, *, steps: int = 60, batch_size: int = 8, lr: float = 0.2,
                         seed: int = 0, eval_every: int | None = None) -> TrainResult:
    """The white-box reference: the same prompt, loss, batches and Adam, with exact gradients."""
    return train(SoftPromptBackprop(loss_grad_fn, space, task), np.zeros(space.dim), steps=steps,
                 batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
                 eval_fn=lambda theta: evaluate(label_logprobs_fn, space.soft(theta), task))
