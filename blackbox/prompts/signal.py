"""Check the signal before spending: a few paid probes say whether a reward can teach anything.

A label that is never among the answer's listed log-probabilities gets the floor score; when every
label is floored for every prompt, the reward is constant and every gradient estimate is zero:
a run would pay its whole budget to learn nothing. :func:`probe_signal` scores a few training
examples (``rows``, spread over the labels) under prompts drawn from the starting policy, with
each candidate reward in turn (``auto``: label log-probabilities, then sampled answers), and
returns the first reward whose scores vary. If none does it raises :class:`~blackbox.errors.NoSignal`
with one line: why, what the probe cost and what to do. The probe's answers are cached like
any other, so a rerun pays nothing for them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from blackbox.errors import ModelError, NoSignal
from blackbox.prompt_tuning import TextClassificationTask

from .prompt import Prompt
from .rewards import ProbeResult
from .space import PromptSpace

PROBE_ROWS = 8


def probe_rows(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """``rows`` training rows taken in turn from each label (shuffled, seeded)."""
    rng = np.random.default_rng([seed, 3])
    by_label = [list(rng.permutation(np.flatnonzero(labels == y))) for y in np.unique(labels)]
    out = []
    while len(out) < min(rows, len(labels)):
        for rows_of_label in by_label:
            if rows_of_label and len(out) < rows:
                out.append(rows_of_label.pop())
    return np.array(out, dtype=np.int64)


def probe_signal(rewards: Sequence, task: TextClassificationTask, space: PromptSpace, theta0: np.ndarray, *,
                 rows: int = PROBE_ROWS, seed: int = 0, prompt: Prompt | None = None,
                 spent: Callable[[], str] | None = None, advice: str = "") -> tuple[object, list[ProbeResult]]:
    """``(reward, findings)``: the first of ``rewards`` whose probe finds signal, and what each
    probe found. The probe asks ``rows`` training examples, each under a prompt drawn from the
    policy at ``theta0`` (or under ``prompt``, when one prompt is evaluated). No signal:
    :class:`NoSignal` whose message ends with ``spent()`` (what the probe cost) and ``advice``."""
    items = probe_rows(task.train_labels, rows, seed)
    if prompt is None:
        exclude = [int(i) if len(space.pool) == len(task.train_texts) else None for i in items]
        choices = space.sample(theta0, exclude, np.random.default_rng([seed, 4]))
        prompts = [space.prompt(c) for c in choices]
    else:
        prompts = [prompt] * len(items)
    texts, labels = [task.train_texts[i] for i in items], task.train_labels[items]
    findings = []
    for reward in rewards:
        try:
            found = reward.probe(prompts, texts, labels)
        except ModelError as exc:  # e.g. an endpoint that gives no logprobs at all
            if len(rewards) == 1 or reward is rewards[-1]:
                raise
            found = ProbeResult(reward.mode, False, f"{reward.mode} failed ({exc})")
        findings.append(found)
        if found.signal:
            return reward, findings
    cost = f"; the probe paid {spent()}" if spent is not None else ""
    why = "; ".join(f.why for f in findings)
    raise NoSignal(f"no signal in the answers: {why}, so every prompt would score alike{cost}. "
                   f"{advice}".rstrip())
