"""Label log-probabilities from an OpenAI-compatible text endpoint, for discrete prompt tuning.

Each prompt is one ``/v1/completions`` request (``max_tokens=1``, ``temperature=0``,
``logprobs=top_k``) sent through the remote :class:`~blackbox.adapters.remote.engine.QueryEngine`,
which brings the budget (queries, tokens, money), the response cache (a resumed or repeated run
pays nothing twice) and retries. The label words' log-probabilities are read from the first
token's ``top_logprobs`` (variants differing in case or leading space are merged by log-sum-exp).
A label absent from the top-k gets the smallest returned log-probability minus ``log 2`` (it is
less likely than anything listed): state it when you report results.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from blackbox.errors import ModelError


def _norm(token: str) -> str:
    return token.strip().lower()


class CompletionLabelScorer:
    """``scorer(prompts) -> (n, C)`` label log-probabilities through a QueryEngine."""

    def __init__(self, engine, model: str, label_words: Sequence[str], top_k: int = 20):
        self.engine = engine
        self.model = model
        self.labels = [_norm(w) for w in label_words]
        self.top_k = int(top_k)

    def request(self, prompt: str) -> dict:
        return {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                "logprobs": self.top_k}

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        responses = self.engine.map([self.request(p) for p in prompts])
        return np.array([self.read(r.body) for r in responses])

    def read(self, body: dict | None) -> list[float]:
        try:
            top = body["choices"][0]["logprobs"]["top_logprobs"][0]
        except (TypeError, KeyError, IndexError):
            raise ModelError("the endpoint returned no top_logprobs (does it support logprobs?)") from None
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
