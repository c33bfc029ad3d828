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


SELECT_FROM = 3  # candidates of the final selection: the last steps' distinct likeliest prompts


def _merit(metrics: dict) -> tuple[float, float]:
    """Held-out evaluation's metrics as a sort key: accuracy first, then the finer score (minus
    the label NLL for log-probabilities, the mean metric for sampled answers)."""
    finer = -metrics["label_nll"] if "label_nll" in metrics else metrics.get("metric", 0.0)
    return float(metrics["accuracy"]), float(finer)


def select_rows(prompts, task: TextClassificationTask, rows: int, seed: int) -> np.ndarray:
    """``rows`` training examples, drawn at random, that no prompt of ``prompts`` shows as a
    demonstration (a prompt showing a row its answer would win that row)."""
    shown = {d for p in prompts for d in p.demonstrations}
    words = task.label_words
    free = [i for i, (t, y) in enumerate(zip(task.train_texts, task.train_labels)) if (t, words[int(y)].strip()) not in shown]
    rng = np.random.default_rng([seed, 31])
    return np.sort(rng.choice(free, size=min(int(rows), len(free)), replace=False)).astype(np.int64)


def select_prompt(reward, prompts, texts, labels) -> tuple[object, list[dict]]:
    """The best of ``prompts`` on the same rows, scored as a held-out evaluation scores
    (:func:`_merit`; the first prompt wins a tie), and every prompt's metrics in order. A budget
    that runs out ends the selection: the best prompt scored so far is kept (the first prompt
    when none was scored), and the last row says what stopped it."""
    from blackbox.errors import BudgetExceeded

    scored, best, top = [], prompts[0], None
    for prompt in prompts:
        try:
            metrics = reward.evaluate(prompt, texts, labels)
        except BudgetExceeded as exc:
            scored.append({"prompt": prompt.describe(), "stopped": str(exc)})
            break
        scored.append({"prompt": prompt.describe(), **metrics})
        if top is None or _merit(metrics) > top:
            best, top = prompt, _merit(metrics)
    return best, scored


def final_selection(reward, task: TextClassificationTask, prompts, rows: int, seed: int) -> tuple[object, list[dict]]:
    """:func:`select_prompt` over ``rows`` training rows of ``task`` that no prompt shows
    (:func:`select_rows`); one prompt is kept as it is, unscored."""
    if len(prompts) < 2:
        return prompts[0], []
    picked = select_rows(prompts, task, rows, seed)
    return select_prompt(reward, prompts, [task.train_texts[i] for i in picked], task.train_labels[picked])


class Trajectory:
    """The policy's likeliest prompt after each step, each distinct prompt once, newest first:
    the candidates of the final selection (a short run's likeliest prompt can move between
    near-equal choices from one step to the next)."""

    def __init__(self, source: PromptSearch, keep: int):
        self.source, self.keep, self.prompts = source, int(keep), []

    def __call__(self, step: int, theta: np.ndarray, row: dict) -> None:
        prompt = self.source.prompt(theta)
        self.prompts = [prompt, *[p for p in self.prompts if p != prompt]][: self.keep]


def tune_prompt(space: PromptSpace, reward, task: TextClassificationTask, *, samples: int = 1,
                steps: int | None = 20, batch_size: int = 4, queries_per_step: int = 16, lr: float = 0.5,
                eval_every: int | None = None, theta0: np.ndarray | None = None, select: int = 0,
                candidates: int = SELECT_FROM, **options) -> TrainResult:
    """Learn a prompt (instruction, demonstrations, words) from ``reward`` alone.

    ``queries_per_step`` answers per step are split over the batch by the allocator (every
    example gets >= 2); ``options`` go to :func:`~blackbox.forward_learning.train` (allocator,
    seed, budget, total_queries, checkpoint, progress...). Held-out metrics are measured with the
    policy's likeliest prompt at the start (the bare template for the default uniform start;
    ``theta0`` from :meth:`PromptSpace.start` starts from a saved prompt) and at the end;
    ``result.learned`` is the :class:`~blackbox.prompts.prompt.Prompt`. A budget that runs out
    ends the run cleanly and keeps the prompt learned so far. Check the signal first
    (:func:`blackbox.prompts.signal.probe_signal`): a reward that never varies learns nothing.

    ``select`` > 0 ends the run with a selection: the distinct likeliest prompts of the last
    steps (up to ``candidates``, newest first) are scored on ``select`` training rows that none
    of them shows (``candidates x select`` more requests, each one evaluation answer) and the
    best becomes ``result.learned``, the held-out "after" its evaluation; ``result.selection``
    lists what each scored. Its held-out evaluations are the start and the chosen prompt only,
    so ``eval_every`` with ``select`` is a ValueError. A resumed run's candidates are the steps
    it ran itself.
    """
    if select > 0 and eval_every:
        raise ValueError("eval_every with select: a run with a selection scores the held-out rows at the start and "
                         "for the chosen prompt only")
    source = PromptSearch(space, reward, task, samples)
    theta0 = space.start() if theta0 is None else np.asarray(theta0, dtype=np.float64)

    def evaluate(theta):
        return reward.evaluate(source.prompt(theta), task.test_texts, task.test_labels)

    settings = dict(steps=steps, batch_size=batch_size, queries_per_step=queries_per_step, lr=lr,
                    description="prompt search")
    if select <= 0:
        return train(source, theta0, eval_every=eval_every, eval_fn=evaluate, **settings, **options)
    before = TrainResult(theta=theta0, learned=source.prompt(theta0))
    if not before.evaluate(lambda: evaluate(theta0), 0):
        return before
    trajectory, given = Trajectory(source, candidates), options.pop("callback", None)

    def after_step(step, theta, row):
        trajectory(step, theta, row)
        if given is not None:
            given(step, theta, row)

    result = train(source, theta0, eval_fn=None, eval_every=None, callback=after_step, **settings, **options)
    result.evals = before.evals
    if len(trajectory.prompts) > 1:
        result.learned, result.selection = final_selection(reward, task, trajectory.prompts, select,
                                                           options.get("seed", 0))
        if "stopped" in result.selection[-1]:
            result.stop("selection not finished")
    result.evaluate(lambda: reward.evaluate(result.learned, task.test_texts, task.test_labels), result.steps)
    return result


def evaluate_only(reward, prompt, task: TextClassificationTask) -> TrainResult:
    """One held-out evaluation of ``prompt`` exactly as it is (a prompt file evaluated as
    written, hand edits included), as a run of no steps: ``before`` and ``after`` are that
    evaluation. A budget that runs out stops it like a run's (``stopped`` says so)."""
    result = TrainResult(theta=np.zeros(0), learned=prompt)
    result.evaluate(lambda: reward.evaluate(prompt, task.test_texts, task.test_labels), 0)
    return result
