"""Discrete prompt tuning for text-only APIs (BDPL-style policy gradient, section 5 of the notes).

A prompt is ``n_slots`` words, each drawn from its own categorical distribution over a list of
candidate words; the prompt is put in front of each example's text. :class:`PolicyGradient` is a
gradient source for :func:`blackbox.forward_learning.train`: it samples prompts, has each
(prompt, example) pair scored (one query: typically an OpenAI-compatible endpoint's logprobs), and
turns the losses into the score-function gradient of the logits

    g = (1/B) sum_i (1/n_i) sum_j (L_ij - b_ij) grad log p(prompt_ij)

with a leave-one-out baseline ``b_ij`` (the mean of the item's other samples, so ``g`` stays
unbiased); the loop's allocator gives each example ``n_i >= 2`` samples. The model is reached only
through ``label_logprobs_fn(prompts) -> (n, C)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .allocators import combine
from .errors import InputError
from .forward_learning import Asked, Estimate, TrainResult, train
from .prompt_tuning import TextClassificationTask, label_cross_entropy, label_metrics


class PromptPolicy:
    """Independent categorical distributions, one per slot, over ``candidates`` (softmax of logits
    ``(n_slots, V)``; the loop's flat ``theta`` reshaped)."""

    def __init__(self, candidates: Sequence[str], n_slots: int):
        if n_slots < 1 or len(candidates) < 2:
            raise InputError("need at least one slot and two candidate words")
        if len(set(candidates)) != len(candidates) or any(not str(w).strip() for w in candidates):
            raise InputError("candidate words must be distinct and non-empty")
        self.candidates = list(candidates)
        self.n_slots = n_slots

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_slots, len(self.candidates)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64).reshape(self.shape)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def sample(self, logits: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
        """``(m, n_slots)`` candidate indices."""
        cum = self.probs(logits).cumsum(1)
        u = rng.random((m, self.n_slots, 1))
        return np.minimum((u > cum[None]).sum(2), len(self.candidates) - 1)

    def score(self, logits: np.ndarray, choices: np.ndarray) -> np.ndarray:
        """``grad_logits log p(choices)`` per sample: ``onehot - probs``, shape ``(m, slots, V)``."""
        p = self.probs(logits)
        g = -np.broadcast_to(p, (len(choices),) + p.shape).copy()
        rows = np.arange(len(choices))[:, None]
        g[rows, np.arange(self.n_slots)[None, :], choices] += 1.0
        return g

    def text(self, choice: Sequence[int]) -> str:
        """The words of a choice (a slot at ``-1`` contributes none)."""
        return " ".join(self.candidates[c] for c in choice if c >= 0)

    def best(self, logits: np.ndarray) -> np.ndarray:
        """The most likely word of each slot; ``-1`` for a slot with no preference yet (all its
        logits equal), so an untrained policy stands for the empty prompt."""
        logits = np.asarray(logits, dtype=np.float64).reshape(self.shape)
        flat = np.ptp(logits, axis=1) == 0
        return np.where(flat, -1, logits.argmax(1))


def join_prompt(prefix: str, prompt: str) -> str:
    """The discrete prompt on its own line before the task's prompt (nothing when empty)."""
    return f"{prefix}\n{prompt}" if prefix else prompt


def evaluate_prompt(label_logprobs_fn: Callable, prefix: str, task: TextClassificationTask,
                    split: str = "test") -> dict:
    """Accuracy, label NLL and queries of the word prompt ``prefix`` on a split."""
    texts, labels = task.split(split)
    lp = label_logprobs_fn([join_prompt(prefix, p) for p in task.prompts(texts)])
    return label_metrics(lp, labels)


class PolicyGradient:
    """The gradient source of discrete prompt tuning (see the module docstring)."""

    unit = 1

    def __init__(self, label_logprobs_fn: Callable, task: TextClassificationTask, candidates: Sequence[str],
                 n_slots: int):
        self.label_logprobs_fn = label_logprobs_fn
        self.policy = PromptPolicy(candidates, n_slots)
        self.prompts = task.prompts(task.train_texts)
        self.labels = task.train_labels
        self.n_items = len(self.prompts)

    def ask(self, theta, items, counts, rng) -> Asked:
        owner = np.repeat(np.arange(len(items)), counts)
        choices = self.policy.sample(theta, len(owner), rng)
        return Asked(choices, items[owner], owner)

    def loss(self, points: np.ndarray, items: np.ndarray) -> np.ndarray:
        texts = [join_prompt(self.policy.text(c), self.prompts[i]) for c, i in zip(points, items)]
        lp = np.asarray(self.label_logprobs_fn(texts), dtype=np.float64)
        return label_cross_entropy(lp, self.labels[items])

    def tell(self, theta, items, asked, values) -> Estimate:
        owner = asked.context
        scores = self.policy.score(theta, asked.points).reshape(len(owner), -1)
        per_item, loss = [], np.empty(len(items))
        for i in range(len(items)):
            li = values[owner == i]
            loo = (li.sum() - li) / (len(li) - 1)  # leave-one-out baseline: unbiased
            per_item.append((li - loo)[:, None] * scores[owner == i])
            loss[i] = li.mean()
        second = np.array([np.mean(np.sum(t ** 2, 1)) for t in per_item])
        return Estimate(combine(per_item).grad, second, loss)

    def learned(self, theta: np.ndarray) -> str:
        """The prompt: the most likely word of every slot that has a preference."""
        return self.policy.text(self.policy.best(theta))

    def describe(self, theta: np.ndarray) -> dict:
        return {"prompt": self.learned(theta)}

    def config(self) -> dict:
        return {"source": "policy-gradient", "candidates": self.policy.candidates, "slots": self.policy.n_slots}


def tune_discrete_prompt(label_logprobs_fn: Callable, task: TextClassificationTask, candidates: Sequence[str], *,
                         n_slots: int = 3, steps: int | None = 20, batch_size: int = 4, queries_per_step: int = 16,
                         lr: float = 0.5, eval_every: int | None = None, theta0: np.ndarray | None = None,
                         **options) -> TrainResult:
    """Learn a ``n_slots``-word prompt prefix from label log-probabilities only.

    ``label_logprobs_fn(prompts) -> (n, C)`` is one query per prompt. ``queries_per_step`` is
    split over the batch by the allocator (each example gets >= 2 sampled prompts for the
    leave-one-out baseline); ``options`` go to :func:`~blackbox.forward_learning.train` (allocator,
    seed, budget, total_queries, checkpoint, progress...). Held-out accuracy is measured with the
    policy's prompt at the start (none for the default uniform start; ``theta0`` from
    :func:`warm_start` starts from a saved prompt) and with the learned prompt at the end;
    ``result.learned`` is the prompt text. A budget that runs out (also during the final
    evaluation) ends the run cleanly and keeps the prompt learned so far.
    """
    source = PolicyGradient(label_logprobs_fn, task, candidates, n_slots)
    theta0 = np.zeros(n_slots * len(candidates)) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    return train(source, theta0, steps=steps, batch_size=batch_size,
                 queries_per_step=queries_per_step, lr=lr, eval_every=eval_every,
                 eval_fn=lambda theta: evaluate_prompt(label_logprobs_fn, source.learned(theta), task),
                 description="discrete prompt", **options)


def warm_start(words: Sequence[str], candidates: Sequence[str], strength: float = 2.0):
    """Start a policy from a saved prompt: one slot per word, each word added to the candidates
    if missing and given a logit ``strength`` above the rest (so the untrained policy's prompt is
    the saved one, and sampling still explores). Returns ``(candidates, n_slots, theta0)``."""
    words = [w for w in words if w.strip()]
    if not words:
        raise InputError("the saved prompt has no words")
    candidates = list(candidates) + [w for w in dict.fromkeys(words) if w not in candidates]
    theta0 = np.zeros((len(words), len(candidates)))
    theta0[np.arange(len(words)), [candidates.index(w) for w in words]] = strength
    return candidates, len(words), theta0.reshape(-1)
