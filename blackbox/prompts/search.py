"""Prompt search as a gradient source of the one training loop (:func:`blackbox.forward_learning.train`).

Each step the loop's allocator gives every example of the batch ``n_i >= 2`` queries. The source
splits them into ``g_i >= 2`` *prompts*, each drawn from the policy of a
:class:`~blackbox.prompts.space.PromptSpace` and answered ``s`` times (``samples``; 1 for label
log-probabilities, which do not vary between identical requests): one query is one answer, so
``--total-queries`` and the allocator count answers. A prompt's reward is the mean of its
answers' losses, and the step's gradient is the score-function estimate with a leave-one-out
baseline per example

    g = (1/B) sum_i (1/g_i) sum_j (L_ij - b_ij) grad log p(prompt_ij),  b_ij = mean of the item's other prompts

which stays unbiased (the baseline does not depend on the prompt it is subtracted from) and
removes each example's own difficulty (an easy example that always scores 1 adds nothing).
Items' per-query variances differ, so Neyman and FLOPS allocation have something to ration.
"""
from __future__ import annotations

import numpy as np

from blackbox.allocators import combine
from blackbox.forward_learning import Asked, Estimate, TrainResult, train
from blackbox.prompt_tuning import TextClassificationTask

from .space import PromptSpace


def split_queries(count: int, samples: int) -> np.ndarray:
    """How ``count`` answers of one example are shared by its prompts: at least two prompts (the
    leave-one-out baseline needs two), about ``samples`` answers each, sizes differing by at most one."""
    groups = min(count, max(2, count // max(samples, 1)))
    sizes = np.full(groups, count // groups, dtype=np.int64)
    sizes[: count % groups] += 1
    return sizes


class PromptSearch:
    """The gradient source (see the module docstring). ``reward`` is a
    :class:`~blackbox.prompts.rewards.LabelLogprobs` or :class:`~blackbox.prompts.rewards.SampledAnswers`;
    the space's demonstration pool is the task's training rows (an example never shows itself)."""

    unit = 1

    def __init__(self, space: PromptSpace, reward, task: TextClassificationTask, samples: int = 1):
        self.space, self.reward, self.samples = space, reward, int(samples)
        self.texts, self.labels = list(task.train_texts), task.train_labels
        self.n_items = len(self.texts)
        self.budget = getattr(reward.endpoint, "budget", None)  # metered: its engine counts the requests

    def _exclude(self, items: np.ndarray) -> list[int | None]:
        """The pool row each example must not show: itself, when the pool is the training rows."""
        return [int(i) if len(self.space.pool) == self.n_items else None for i in items]

    def ask(self, theta, items, counts, rng) -> Asked:
        sizes = [split_queries(int(c), self.samples) for c in counts]
        owner = np.repeat(np.arange(len(items)), [len(s) for s in sizes])
        sizes = np.concatenate(sizes)
        choices = self.space.sample(theta, self._exclude(items[owner]), rng)
        group = np.repeat(np.arange(len(sizes)), sizes)
        answer = np.concatenate([np.arange(s) for s in sizes])  # the answer's index within its prompt
        points = np.concatenate([choices[group], answer[:, None]], axis=1)
        return Asked(points, items[owner][group], (group, owner, choices, sizes))

    def loss(self, points: np.ndarray, items: np.ndarray) -> np.ndarray:
        """One loss per answer; consecutive rows of one prompt (answer index 0, 1, ...) are asked
        together, so ``s`` answers of a prompt can come from one request."""
        starts = np.flatnonzero((points[:, -1] == 0) | (np.arange(len(points)) == 0))
        sizes = np.diff(np.append(starts, len(points)))
        prompts = [self.space.prompt(points[s, :-1]) for s in starts]
        first = items[starts]
        losses = self.reward.losses(prompts, [self.texts[i] for i in first], self.labels[first], sizes)
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in losses])

    def tell(self, theta, items, asked, values) -> Estimate:
        group, owner, choices, sizes = asked.context
        reward = np.bincount(group, weights=values, minlength=len(sizes)) / sizes
        scores = self.space.score(theta, choices, self._exclude(items[owner]))
        per_item, variance, loss = [], np.empty(len(items)), np.empty(len(items))
        for b in range(len(items)):
            mine = owner == b
            r = reward[mine]
            loo = (r.sum() - r) / (len(r) - 1)
            terms = (r - loo)[:, None] * scores[mine]
            per_item.append(terms)
            # per answer: a prompt's term averages sizes[j] answers
            variance[b] = np.mean(np.sum(terms ** 2, 1)) * sizes[mine].mean()
            loss[b] = r.mean()
        return Estimate(combine(per_item).grad, variance, loss)

    def prompt(self, theta: np.ndarray):
        """The prompt ``theta`` stands for: every slot's likeliest value (see :meth:`PromptSpace.best`)."""
        return self.space.prompt(self.space.best(theta))

    def learned(self, theta: np.ndarray):
        return self.prompt(theta)

    def describe(self, theta: np.ndarray) -> dict:
        return {"prompt": self.prompt(theta).describe()}

    def config(self) -> dict:
        return {"source": "prompt-search", **self.space.config(), "reward": self.reward.mode,
                "samples": self.samples, "temperature": getattr(self.reward, "temperature", None)}


def tune_prompt(space: PromptSpace, reward, task: TextClassificationTask, *, samples: int = 1,
                steps: int | None = 20, batch_size: int = 4, queries_per_step: int = 16, lr: float = 0.5,
                eval_every: int | None = None, theta0: np.ndarray | None = None, **options) -> TrainResult:
    """Learn a prompt (instruction, demonstrations, words) from ``reward`` alone.

    ``queries_per_step`` answers per step are split over the batch by the allocator (every
    example gets >= 2); ``options`` go to :func:`~blackbox.forward_learning.train` (allocator,
    seed, budget, total_queries, checkpoint, progress...). Held-out metrics are measured with the
    policy's likeliest prompt at the start (the bare template for the default uniform start;
    ``theta0`` from :meth:`PromptSpace.start` starts from a saved prompt) and at the end;
    ``result.learned`` is the :class:`~blackbox.prompts.prompt.Prompt`. A budget that runs out
    ends the run cleanly and keeps the prompt learned so far. Check the signal first
    (:func:`blackbox.prompts.signal.probe_signal`): a reward that never varies learns nothing.
    """
    source = PromptSearch(space, reward, task, samples)
    theta0 = space.start() if theta0 is None else np.asarray(theta0, dtype=np.float64)

    def evaluate(theta):
        return reward.evaluate(source.prompt(theta), task.test_texts, task.test_labels)

    return train(source, theta0, steps=steps, batch_size=batch_size, queries_per_step=queries_per_step, lr=lr,
                 eval_every=eval_every, eval_fn=evaluate, description="prompt search", **options)


def evaluate_only(reward, prompt, task: TextClassificationTask) -> TrainResult:
    """One held-out evaluation of ``prompt`` exactly as it is (a prompt file evaluated as
    written, hand edits included), as a run of no steps: ``before`` and ``after`` are that
    evaluation. A budget that runs out stops it like a run's (``stopped`` says so)."""
    from blackbox.errors import BudgetExceeded

    result = TrainResult(theta=np.zeros(0), learned=prompt)
    try:
        metrics = reward.evaluate(prompt, task.test_texts, task.test_labels)
    except BudgetExceeded as exc:
        result.stopped = f"evaluation not finished: {exc}"
        return result
    queries = metrics.pop("queries", 0)
    result.evals.append({"step": 0, "queries": 0, **metrics, "eval_queries": queries})
    return result
