"""Discrete word prompts for text-only APIs (BDPL-style policy gradient, section 5 of the notes).

A prompt is ``n_slots`` words, each drawn from its own categorical distribution over a list of
candidate words (:class:`PromptPolicy`); the words go on a line before each example's text.
:class:`PolicyGradient` and :func:`tune_discrete_prompt` are the prompt search of
:mod:`blackbox.prompts` restricted to word slots and scored through
``label_logprobs_fn(prompts) -> (n, C)``: sampled prompts, the score-function gradient of the
logits with a leave-one-out baseline per example

    g = (1/B) sum_i (1/n_i) sum_j (L_ij - b_ij) grad log p(prompt_ij)

and the loop's allocator giving each example ``n_i >= 2`` samples. :class:`PromptPolicy` (from
:mod:`blackbox.prompts.words`) is also the word slots of the general
:class:`~blackbox.prompts.space.PromptSpace`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .forward_learning import TrainResult, train
from .prompt_tuning import TextClassificationTask, label_metrics
from .prompts.rewards import LabelLogprobs, LabelScores
from .prompts.search import PromptSearch
from .prompts.space import PromptSpace
from .prompts.words import PromptPolicy

__all__ = ["PromptPolicy", "PolicyGradient", "tune_discrete_prompt", "evaluate_prompt", "warm_start", "join_prompt",
           "TextLabels"]


def join_prompt(prefix: str, prompt: str) -> str:
    """The discrete prompt on its own line before the task's prompt (nothing when empty)."""
    return f"{prefix}\n{prompt}" if prefix else prompt


class TextLabels:
    """``label_logprobs_fn(prompts: list[str]) -> (n, C)`` as a prompt endpoint: each (prompt,
    text) pair is sent as its completion text (for word prompts: the words on a line before the
    templated text). Every label counts as listed (the function gives no floor to tell)."""

    def __init__(self, label_logprobs_fn: Callable):
        self.fn = label_logprobs_fn
        self.budget = getattr(label_logprobs_fn, "budget", None)

    def label_scores(self, pairs, *, evaluation: bool = False) -> LabelScores:
        lp = np.asarray(self.fn([p.fill_completion(t) for p, t in pairs]), dtype=np.float64)
        return LabelScores(lp, np.ones(lp.shape, bool))


def evaluate_prompt(label_logprobs_fn: Callable, prefix: str, task: TextClassificationTask,
                    split: str = "test") -> dict:
    """Accuracy, label NLL and queries of the word prompt ``prefix`` on a split."""
    texts, labels = task.split(split)
    lp = label_logprobs_fn([join_prompt(prefix, p) for p in task.prompts(texts)])
    return label_metrics(lp, labels)


class PolicyGradient(PromptSearch):
    """Word prompts scored by ``label_logprobs_fn(prompts) -> (n, C)``: the prompt search over
    word slots only (:class:`~blackbox.prompts.search.PromptSearch`); ``learned`` is the text."""

    def __init__(self, label_logprobs_fn: Callable, task: TextClassificationTask, candidates: Sequence[str],
                 n_slots: int):
        space = PromptSpace(words=candidates, n_slots=n_slots, template=task.template)
        super().__init__(space, LabelLogprobs(TextLabels(label_logprobs_fn), task.label_words), task)
        self.policy = space.words

    def learned(self, theta: np.ndarray) -> str:
        """The prompt: the most likely word of every slot that has a preference."""
        return self.prompt(theta).words


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
    evaluation) ends the run cleanly and keeps the prompt learned so far. (The general search,
    with instructions and demonstrations too, is :func:`blackbox.prompts.tune_prompt`.)
    """
    source = PolicyGradient(label_logprobs_fn, task, candidates, n_slots)
    theta0 = np.zeros(source.space.dim) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    return train(source, theta0, steps=steps, batch_size=batch_size,
                 queries_per_step=queries_per_step, lr=lr, eval_every=eval_every,
                 eval_fn=lambda theta: source.reward.evaluate(source.prompt(theta), task.test_texts, task.test_labels),
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
