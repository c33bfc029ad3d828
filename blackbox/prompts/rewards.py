"""What a prompt earns on an example: label log-probabilities, or sampled answers scored by a metric.

Both rewards reach the model through an *endpoint* (an object with the methods of
:class:`PromptEndpoint`; :mod:`blackbox.adapters.api_prompting` makes one for any
OpenAI-compatible server) and give the training loop a **loss** per query (lower is better):

* :class:`LabelLogprobs` -- minus the true label's log-probability as the answer, read from the
  answer's first-token ``top_logprobs`` (one request per query, ``max_tokens=1``). Needs the
  labels to be *reachable*: a label that is never listed gets a floor (below everything listed),
  and when every label is floored every prompt scores alike. The loss is not renormalised among
  the labels: among them, a prompt that lists no label at all (every label at the floor) would
  score ln C, better than a weak model's honest answers, and the search would learn to hide them.
* :class:`SampledAnswers` -- the answer is sampled (temperature > 0) and scored by
  ``metric(answer, example) -> float`` (:func:`exact_match` after normalisation by default: the
  reward DSPy's optimisers use); the loss is ``1 - metric``. Needs no logprobs. One query is one
  sampled answer; a prompt may be answered ``s`` times (``n=s`` in one request where the API
  bills one prompt for several answers), each answer counted as a query.

Held-out evaluation (:meth:`evaluate`): label accuracy (argmax over the label words) and label
NLL for log-probabilities; for sampled answers the greedy answer (temperature 0) per example,
its exact-match accuracy and mean metric. :meth:`probe` says whether the scores of a few queries
carry signal (see :mod:`blackbox.prompts.signal`).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from blackbox.errors import InputError
from blackbox.prompt_tuning import label_metrics

from .prompt import Prompt

Pair = tuple[Prompt, str]  # a prompt and the example's text it is filled with
MIN_REACHABLE = 0.25  # share of probed examples that must list some label for logprobs to carry signal


@dataclass(frozen=True)
class Example:
    """What a metric sees besides the answer: the example's text and its label word."""

    text: str
    label: str


@dataclass
class LabelScores:
    """Label log-probabilities ``lp (n, C)`` and which were really listed (``listed``; the rest
    are the floor: below everything listed)."""

    lp: np.ndarray
    listed: np.ndarray


class PromptEndpoint(Protocol):
    """A model that answers prompts (see :mod:`blackbox.adapters.api_prompting`). ``evaluation``
    marks a held-out pass: a fixed set of requests the endpoint may send as one batch."""

    def label_scores(self, pairs: Sequence[Pair], *, evaluation: bool = False) -> LabelScores: ...

    def answers(self, pairs: Sequence[Pair], samples: Sequence[int], *, temperature: float, seed: int,
                evaluation: bool = False) -> list[list[str]]: ...


@dataclass
class ProbeResult:
    """What a probe found: ``signal`` or not, and one clause saying why (for the stop line)."""

    mode: str
    signal: bool
    why: str


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def exact_match(answer: str, example: Example) -> float:
    """1.0 when the normalised answer is the normalised label, else 0.0."""
    return float(normalise_answer(answer) == normalise_answer(example.label))


def _pairs(prompts: Sequence[Prompt], texts: Sequence[str]) -> list[Pair]:
    return list(zip(prompts, texts))


class LabelLogprobs:
    """Minus the true label's first-token log-probability (see the module docstring); held-out
    accuracy and label NLL are among the labels."""

    mode = "logprobs"

    def __init__(self, endpoint, label_words: Sequence[str]):
        self.endpoint, self.label_words = endpoint, [str(w).strip() for w in label_words]

    def losses(self, prompts: Sequence[Prompt], texts: Sequence[str], labels: np.ndarray,
               sizes: Sequence[int]) -> list[np.ndarray]:
        """One loss per query: every group here has one query (log-probabilities do not vary
        between identical requests)."""
        if any(s != 1 for s in sizes):
            raise InputError("label log-probabilities take one query per prompt (samples=1)")
        scores = self.endpoint.label_scores(_pairs(prompts, texts))
        return list(-scores.lp[np.arange(len(texts)), np.asarray(labels)][:, None])

    def evaluate(self, prompt: Prompt, texts: Sequence[str], labels: np.ndarray) -> dict:
        scores = self.endpoint.label_scores(_pairs([prompt] * len(texts), texts), evaluation=True)
        return {**label_metrics(scores.lp, labels), "labels_listed": float(scores.listed.any(1).mean())}

    def probe(self, prompts: Sequence[Prompt], texts: Sequence[str], labels: np.ndarray) -> ProbeResult:
        """Signal when some label is listed on at least a quarter of the examples (otherwise
        their scores sit at the floor, alike for every prompt)."""
        scores = self.endpoint.label_scores(_pairs(prompts, texts))
        reachable = int(scores.listed.any(1).sum())
        found = f"a label was among the listed logprobs on {reachable} of {len(texts)} probed examples"
        return ProbeResult(self.mode, reachable >= MIN_REACHABLE * len(texts), found)


class SampledAnswers:
    """Sampled answers scored by ``metric`` (see the module docstring)."""

    mode = "sampled"

    def __init__(self, endpoint, label_words: Sequence[str], metric: Callable[[str, Example], float] = exact_match,
                 temperature: float = 1.0, seed: int = 0):
        if not temperature > 0:
            raise InputError("sampled answers need a temperature > 0")
        self.endpoint, self.metric = endpoint, metric
        self.label_words = [str(w).strip() for w in label_words]
        self.temperature, self.seed = float(temperature), int(seed)

    def _score(self, answers: Sequence[str], text: str, label: int) -> np.ndarray:
        example = Example(text, self.label_words[int(label)])
        try:
            values = np.array([float(self.metric(a, example)) for a in answers])
        except (TypeError, ValueError) as exc:
            raise InputError(f"the metric must return a number for (answer, example): {exc}") from None
        if not np.all(np.isfinite(values)):
            raise InputError("the metric returned a non-finite value")
        return values

    def losses(self, prompts: Sequence[Prompt], texts: Sequence[str], labels: np.ndarray,
               sizes: Sequence[int]) -> list[np.ndarray]:
        """``1 - metric`` of each sampled answer: ``sizes[g]`` answers for prompt ``g``."""
        answers = self.endpoint.answers(_pairs(prompts, texts), sizes, temperature=self.temperature,
                                        seed=self.seed)
        return [1.0 - self._score(a, t, y) for a, t, y in zip(answers, texts, labels)]

    def evaluate(self, prompt: Prompt, texts: Sequence[str], labels: np.ndarray) -> dict:
        """The greedy answer per example: exact-match accuracy, mean metric, and the share of
        answers that are one of the label words."""
        answers = [a[0] for a in self.endpoint.answers(_pairs([prompt] * len(texts), texts), [1] * len(texts),
                                                       temperature=0.0, seed=self.seed, evaluation=True)]
        exact = [exact_match(a, Example(t, self.label_words[int(y)])) for a, t, y in zip(answers, texts, labels)]
        metric = [self._score([a], t, y)[0] for a, t, y in zip(answers, texts, labels)]
        known = {normalise_answer(w) for w in self.label_words}
        return {"accuracy": float(np.mean(exact)), "metric": float(np.mean(metric)), "queries": len(texts),
                "answers_are_labels": float(np.mean([normalise_answer(a) in known for a in answers]))}

    def probe(self, prompts: Sequence[Prompt], texts: Sequence[str], labels: np.ndarray) -> ProbeResult:
        """Signal when the metric of the sampled answers varies, or when some answer is a label
        (answers that all score alike because all are right still show the labels are reached)."""
        answers = self.endpoint.answers(_pairs(prompts, texts), [1] * len(texts), temperature=self.temperature,
                                        seed=self.seed)
        values = np.array([self._score(a, t, y)[0] for a, t, y in zip(answers, texts, labels)])
        known = {normalise_answer(w) for w in self.label_words}
        named = sum(normalise_answer(a[0]) in known for a in answers)
        if np.ptp(values) > 1e-9:
            return ProbeResult(self.mode, True, f"the metric of {len(values)} sampled answers ranged "
                                                f"{values.min():g}..{values.max():g}")
        return ProbeResult(self.mode, named > 0, f"the metric scored all {len(values)} sampled answers "
                                                 f"{values[0]:g} and {named} named a label")
