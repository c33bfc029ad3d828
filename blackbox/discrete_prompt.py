"""Discrete prompt tuning for text-only APIs (BDPL-style policy gradient, section 5 of the notes).

A prompt is ``n_slots`` words, each drawn from its own categorical distribution over a list of
candidate words; the prompt is put in front of each example's text. Training samples prompts,
scores each (prompt, example) pair through a query function (typically an OpenAI-compatible
endpoint's logprobs), and moves the logits along the score-function gradient

    g = (1/B) sum_i (1/n_i) sum_j (L_ij - b_ij) grad log p(prompt_ij)

with a leave-one-out baseline ``b_ij`` (the mean of the item's other samples, so ``g`` stays
unbiased) and ``n_i`` samples per example from an allocator (uniform / Neyman / FLOPS, floor 2).
The model is reached only through ``label_logprobs_fn(prompts) -> (n, C)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .allocators import combine, make_allocator
from .errors import BudgetExceeded, InputError
from .forward_learning import _Adam, batch_items
from .prompt_tuning import TextClassificationTask


class PromptPolicy:
    """Independent categorical distributions, one per slot, over ``candidates`` (softmax of logits)."""

    def __init__(self, candidates: Sequence[str], n_slots: int, seed: int | None = 0):
        if n_slots < 1 or len(candidates) < 2:
            raise InputError("need at least one slot and two candidate words")
        self.candidates = list(candidates)
        self.n_slots = n_slots
        self.logits = np.zeros((n_slots, len(self.candidates)))
        self.rng = np.random.default_rng(seed)

    def probs(self) -> np.ndarray:
        e = np.exp(self.logits - self.logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def sample(self, m: int) -> np.ndarray:
        p = self.probs()
        cum = p.cumsum(1)
        u = self.rng.random((m, self.n_slots, 1))
        return np.minimum((u > cum[None]).sum(2), len(self.candidates) - 1)

    def score(self, choices: np.ndarray) -> np.ndarray:
        """``grad_logits log p(choices)`` per sample: ``onehot - probs``, shape ``(m, slots, V)``."""
        p = self.probs()
        g = -np.broadcast_to(p, (len(choices),) + p.shape).copy()
        rows = np.arange(len(choices))[:, None]
        g[rows, np.arange(self.n_slots)[None, :], choices] += 1.0
        return g

    def text(self, choice: Sequence[int]) -> str:
        return " ".join(self.candidates[c] for c in choice)

    def best(self) -> np.ndarray:
        return self.logits.argmax(1)


def classification_loss(lp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy over the label words (renormalised log-probs)."""
    norm = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return -norm[np.arange(len(labels)), labels]


def evaluate_prompt(label_logprobs_fn: Callable, prefix: str, task: TextClassificationTask,
                    split: str = "test") -> dict:
    texts = task.test_texts if split == "test" else task.train_texts
    labels = task.test_labels if split == "test" else task.train_labels
    lp = np.asarray(label_logprobs_fn([_join(prefix, p) for p in task.prompts(texts)]), dtype=np.float64)
    return {"accuracy": float(np.mean(lp.argmax(1) == labels)),
            "label_nll": float(np.mean(classification_loss(lp, labels)))}


def _join(prefix: str, prompt: str) -> str:
    return f"{prefix}\n{prompt}" if prefix else prompt


@dataclass
class DiscretePromptResult:
    prompt: str
    logits: np.ndarray
    before: dict
    after: dict
    queries: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None

    def summary(self) -> dict:
        return {"prompt": self.prompt, "accuracy_before": self.before["accuracy"],
                "accuracy_after": self.after["accuracy"], "train_queries": self.queries,
                "seconds": round(self.seconds, 2), "stopped": self.stopped}


def tune_discrete_prompt(label_logprobs_fn: Callable, task: TextClassificationTask,
                         candidates: Sequence[str], *, n_slots: int = 3, steps: int = 20,
                         batch_size: int = 4, queries_per_step: int = 16, lr: float = 0.5,
                         allocator="uniform", seed: int = 0, max_queries: int | None = None,
                         evaluate_before: bool = True, progress: bool = False) -> DiscretePromptResult:
    """Learn a ``n_slots``-word prompt prefix from label log-probabilities only.

    ``label_logprobs_fn(prompts) -> (n, C)`` is one query per prompt. ``queries_per_step`` is
    split over the batch by ``allocator`` (each example gets >= 2 sampled prompts for the
    leave-one-out baseline). ``max_queries`` caps training queries (a step that does not fit is
    not started); a ``BudgetExceeded`` from the query function also ends training cleanly.
    ``progress`` shows a tqdm bar with the running loss and the current most likely prompt.
    """
    t0 = time.perf_counter()
    policy = PromptPolicy(candidates, n_slots, seed)
    alloc = make_allocator(allocator, floor=2, seed=seed)
    adam = _Adam(lr)
    n = len(task.train_texts)
    batch_size = min(batch_size, n)
    if queries_per_step < 2 * batch_size:
        raise InputError(f"queries_per_step must be >= 2 x batch_size ({2 * batch_size})")
    prompts = task.prompts(task.train_texts)
    mem_var, mem_loss = np.full(n, np.nan), np.full(n, np.nan)
    before = evaluate_prompt(label_logprobs_fn, "", task) if evaluate_before else {"accuracy": float("nan")}
    history, spent, stopped = [], 0, None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="discrete prompt", unit="step", leave=False, dynamic_ncols=True)
    for step in range(steps):
        if max_queries is not None and spent + queries_per_step > max_queries:
            stopped = f"max_queries {max_queries} reached"
            break
        items = batch_items(seed, step, n, batch_size)
        counts = alloc.allocate(queries_per_step, batch_size, variances=mem_var[items], losses=mem_loss[items])
        owner = np.repeat(np.arange(batch_size), counts)
        choices = policy.sample(len(owner))
        texts = [_join(policy.text(c), prompts[items[o]]) for c, o in zip(choices, owner)]
        try:
            lp = np.asarray(label_logprobs_fn(texts), dtype=np.float64)
        except BudgetExceeded as exc:
            stopped = str(exc)
            break
        spent += len(texts)
        losses = classification_loss(lp, task.train_labels[items[owner]])
        scores = policy.score(choices).reshape(len(owner), -1)
        per_item = []
        for i in range(batch_size):
            sel = owner == i
            li = losses[sel]
            loo = (li.sum() - li) / (len(li) - 1)  # leave-one-out baseline: unbiased
            per_item.append((li - loo)[:, None] * scores[sel])
        est = combine(per_item)
        second = np.array([np.mean(np.sum(t ** 2, 1)) for t in per_item])
        if alloc.name == "flops":
            alloc.update(variances=second, counts=counts)
        mem_var[items] = second
        mem_loss[items] = [losses[owner == i].mean() for i in range(batch_size)]
        policy.logits = adam.step(policy.logits.reshape(-1), est.grad).reshape(policy.logits.shape)
        history.append({"step": step + 1, "queries": spent, "loss": float(losses.mean()),
                        "allocation": counts.tolist(), "best": policy.text(policy.best())})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", prompt=history[-1]["best"][:30])
    if bar is not None:
        bar.close()
    prompt = policy.text(policy.best())
    try:
        after = evaluate_prompt(label_logprobs_fn, prompt, task)
    except BudgetExceeded as exc:  # keep the learned prompt; the answers paid so far stay cached
        after = {"accuracy": float("nan"), "label_nll": float("nan")}
        stopped = f"{stopped + '; ' if stopped else ''}held-out evaluation not finished: {exc}"
    return DiscretePromptResult(prompt, policy.logits, before, after, spent, time.perf_counter() - t0,
                                history, stopped)
