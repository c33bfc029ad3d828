"""Label log-probabilities from an OpenAI-compatible text endpoint, for discrete prompt tuning.

Each prompt is one ``/v1/completions`` request (``max_tokens=1``, ``temperature=0``,
``logprobs=top_k``) sent through the remote :class:`~blackbox.adapters.remote.engine.QueryEngine`,
which brings the budget (queries, tokens, money), the response cache (a resumed or repeated run
pays nothing twice) and retries. The label words' log-probabilities are read from the first
token's ``top_logprobs`` (variants differing in case or leading space are merged by log-sum-exp).
A label absent from the top-k gets the smallest returned log-probability minus ``log 2`` (it is
less likely than anything listed): state it when you report results.

Some servers (llama.cpp's among them) return *no* log-probabilities when the most likely first
token is the end of text, since nothing was generated. When an answer comes back like that, the
scorer re-sends those prompts once with ``min_tokens=1`` (an extension llama.cpp and vLLM accept;
the listed log-probabilities are still the model's own) and keeps doing so for later calls. An
endpoint that refuses that field gets a clear error instead of a silently wrong score.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from blackbox.errors import ModelError


def _norm(token: str) -> str:
    return token.strip().lower()


_NOTHING_LISTED = "the endpoint listed no log-probabilities even with min_tokens=1"


class _EndOfText(Exception):
    """The endpoint generated nothing and listed no log-probabilities."""


class CompletionLabelScorer:
    """``scorer(prompts) -> (n, C)`` label log-probabilities through a QueryEngine."""

    def __init__(self, engine, model: str, label_words: Sequence[str], top_k: int = 20,
                 min_tokens: bool = False):
        self.engine = engine
        self.model = model
        self.labels = [_norm(w) for w in label_words]
        self.top_k = int(top_k)
        self.min_tokens = bool(min_tokens)  # switched on by the first end-of-text answer

    def request(self, prompt: str) -> dict:
        req = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": self.top_k}
        if self.min_tokens:
            req["min_tokens"] = 1
        return req

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        bodies = [r.body for r in self.engine.map([self.request(p) for p in prompts])]
        rows: list[list[float] | None] = []
        for body in bodies:
            try:
                rows.append(self.read(body))
            except _EndOfText:
                rows.append(None)
        empty = [i for i, row in enumerate(rows) if row is None]
        if empty:
            if self.min_tokens:
                raise ModelError(_NOTHING_LISTED)
            self.min_tokens = True
            try:
                again = self.engine.map([self.request(prompts[i]) for i in empty])
            except ModelError as exc:
                raise ModelError("the endpoint generated nothing (end of text) and so listed no log-probabilities, "
                                 f"and it refused the min_tokens=1 retry: {exc}") from None
            for i, resp in zip(empty, again):
                try:
                    rows[i] = self.read(resp.body)
                except _EndOfText:
                    raise ModelError(_NOTHING_LISTED) from None
        return np.array(rows, dtype=np.float64)

    def read(self, body: dict | None) -> list[float]:
        try:
            choice = body["choices"][0]
            tops = choice["logprobs"]["top_logprobs"]
        except (TypeError, KeyError, IndexError):
            raise ModelError("the endpoint returned no top_logprobs (does it support logprobs?)") from None
        if not tops and not choice.get("text") and choice.get("finish_reason") == "stop":
            raise _EndOfText()
        top = tops[0] if tops else None
        if isinstance(top, list):  # some servers: [{"token": ..., "logprob": ...}, ...]
            top = {t["token"]: t["logprob"] for t in top}
        if not top:
            raise ModelError("the endpoint returned empty top_logprobs")
        merged: dict[str, float] = {}
        for token, lp in top.items():
            key = _norm(token)
            merged[key] = float(np.logaddexp(merged[key], lp)) if key in merged else float(lp)
        floor = min(top.values()) - math.log(2)
        return [merged.get(label, floor) for label in self.labels]


def openai_label_scorer(model: str, label_words: Sequence[str], *, base_url: str | None = None,
                        api_key_env: str = "OPENAI_API_KEY", budget=None, cache: bool = True,
                        concurrency: int = 4, rpm: float | None = None, tpm: float | None = None,
                        timeout: float = 60.0, max_attempts: int = 6, prices=None,
                        top_k: int = 20) -> CompletionLabelScorer:
    """A scorer over ``<base_url>/completions`` with its own engine (budget, cache, retries)."""
    from .remote.engine import QueryEngine
    from .remote.openai_transport import OpenAITransport

    transport = OpenAITransport(base_url=base_url, api_key_env=api_key_env, kind="completions",
                                max_connections=max(concurrency, 8))
    engine = QueryEngine(transport, budget=budget, cache=cache, concurrency=concurrency, rpm=rpm, tpm=tpm,
                         timeout=timeout, max_attempts=max_attempts, prices=prices, model=model, count_queries=True)
    return CompletionLabelScorer(engine, model, label_words, top_k=top_k)


# Candidate words for the prompt slots: some ask the question, most do not (the policy has to find out).
DEFAULT_CANDIDATES = ("Which", "animal", "group", "is", "this", "Question:", "Text:", "Describe", "the", "a",
                      "and", "so", "on", "Answer", "Category:", "species", "kind", "color", "number", "weather")
DISCRETE_TEMPLATE = "{text}\nThis is about a"


def animal_discrete_prompt_task(per_class: int = 16, sentences: int = 2, seed: int = 0):
    """The animal-group task of the soft-prompt work, worded for an API: ``"<prompt>\n<text>\nThis is
    about a"`` followed by the label word (a question the model can answer from its first token)."""
    from .text_tasks import animal_task

    return animal_task(DISCRETE_TEMPLATE, per_class=per_class, sentences=sentences, seed=seed)
