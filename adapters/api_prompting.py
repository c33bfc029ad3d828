"""Label log-probabilities from an OpenAI-compatible text endpoint, for discrete prompt tuning.

Each prompt is one request (``max_tokens=1``, ``temperature=0``) through the remote
:class:`~blackbox.adapters.remote.engine.QueryEngine`, which brings the budget's tokens and money,
the response cache (a resumed or repeated run pays nothing twice) and retries. Two request kinds:

* ``/v1/completions`` (:class:`CompletionLabelScorer`): the prompt as raw text, ``logprobs=top_k``;
  the first token's ``top_logprobs`` (a dict);
* ``/v1/chat/completions`` (:class:`ChatLabelScorer`): the prompt as the user's message,
  ``logprobs=true, top_logprobs=top_k``; the first answer token's ``top_logprobs`` (a list).
  Hosted chat models (gpt-4o-mini, gpt-4.1-*) only serve this one.

:func:`openai_label_scorer` picks one by a flag, or by a probe (``api="auto"``: one one-token
completions request; an endpoint that refuses it is spoken to through chat).

The label words' log-probabilities are read from the listed alternatives (variants differing in
case or leading space are merged by log-sum-exp). A label absent from the top-k gets the smallest
listed log-probability minus ``log 2`` (it is less likely than anything listed): state it when
you report results.

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

from blackbox.errors import EndpointRefused, InputError, ModelError

APIS = ("auto", "completions", "chat")
_NOTHING_LISTED = "the endpoint listed no log-probabilities even with min_tokens=1"


def _norm(token: str) -> str:
    return token.strip().lower()


class _EndOfText(Exception):
    """The endpoint generated nothing and listed no log-probabilities."""


class LabelScorer:
    """``scorer(prompts) -> (n, C)`` label log-probabilities through a QueryEngine (one request per
    prompt). Subclasses say how a request is written and where its first token's alternatives are."""

    kind = ""

    def __init__(self, engine, model: str, label_words: Sequence[str], top_k: int = 20, min_tokens: bool = False):
        self.engine = engine
        self.model = model
        self.labels = [_norm(w) for w in label_words]
        self.top_k = int(top_k)
        self.min_tokens = bool(min_tokens)  # switched on by the first end-of-text answer

    @property
    def budget(self):
        """The budget the engine counts billable requests on (this scorer is *metered*)."""
        return self.engine.budget

    def request(self, prompt: str) -> dict:
        req = {"model": self.model, **self.body(prompt), "max_tokens": 1, "temperature": 0}
        if self.min_tokens:
            req["min_tokens"] = 1
        return req

    def body(self, prompt: str) -> dict:
        raise NotImplementedError

    def alternatives(self, body: dict | None) -> dict[str, float]:
        """The first answer token's listed alternatives ``{token: logprob}``; raises
        :class:`_EndOfText` for an answer that generated nothing and listed nothing."""
        try:
            choice = body["choices"][0]
            listed = self.listed(choice)
        except (TypeError, KeyError, IndexError):
            raise ModelError(f"the endpoint returned no {self.where} (does it support logprobs?)") from None
        if not listed and not self.text(choice) and choice.get("finish_reason") == "stop":
            raise _EndOfText()
        return self.first(listed) if listed else {}

    where = ""  # where the alternatives are in an answer (for the error message)

    def listed(self, choice: dict) -> list:
        """Per generated token, its alternatives."""
        raise NotImplementedError

    def first(self, listed: list) -> dict[str, float]:
        raise NotImplementedError

    def text(self, choice: dict) -> str:
        raise NotImplementedError

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
        top = self.alternatives(body)
        if not top:
            raise ModelError(f"the endpoint returned empty {self.where}")
        merged: dict[str, float] = {}
        for token, lp in top.items():
            key = _norm(token)
            merged[key] = float(np.logaddexp(merged[key], lp)) if key in merged else float(lp)
        floor = min(top.values()) - math.log(2)
        return [merged.get(label, floor) for label in self.labels]


def _as_dict(top) -> dict[str, float]:
    if isinstance(top, list):  # [{"token": ..., "logprob": ...}, ...]
        return {t["token"]: float(t["logprob"]) for t in top}
    return {k: float(v) for k, v in (top or {}).items()}


class CompletionLabelScorer(LabelScorer):
    """Over ``/v1/completions``: the first token's ``logprobs.top_logprobs[0]``."""

    kind, where = "completions", "top_logprobs"

    def body(self, prompt: str) -> dict:
        return {"prompt": prompt, "logprobs": self.top_k}

    def listed(self, choice):
        return choice["logprobs"]["top_logprobs"]

    def first(self, listed):
        return _as_dict(listed[0])

    def text(self, choice):
        return choice.get("text")


class ChatLabelScorer(LabelScorer):
    """Over ``/v1/chat/completions``: the prompt is the user's message; the first answer token's
    ``logprobs.content[0].top_logprobs``."""

    kind, where = "chat", "logprobs.content"

    def body(self, prompt: str) -> dict:
        return {"messages": [{"role": "user", "content": prompt}], "logprobs": True, "top_logprobs": self.top_k}

    def listed(self, choice):
        return choice["logprobs"]["content"]

    def first(self, listed):
        return _as_dict(listed[0].get("top_logprobs"))

    def text(self, choice):
        return (choice.get("message") or {}).get("content")


SCORERS = {"completions": CompletionLabelScorer, "chat": ChatLabelScorer}


def openai_label_scorer(model: str, label_words: Sequence[str], *, api: str = "auto", base_url: str | None = None,
                        api_key_env: str = "OPENAI_API_KEY", budget=None, cache: bool = True, concurrency: int = 4,
                        rpm: float | None = None, tpm: float | None = None, timeout: float = 60.0,
                        max_attempts: int = 6, prices=None, top_k: int = 20) -> LabelScorer:
    """A scorer with its own engine (the budget's tokens and money, cache, retries) over
    ``<base_url>/completions`` or ``<base_url>/chat/completions`` (``api``; ``"auto"`` probes
    completions with one one-token request and falls back to chat when the endpoint refuses it).
    Close it with ``scorer.engine.close()``."""
    from .remote.engine import QueryEngine
    from .remote.openai_transport import OpenAITransport

    if api not in APIS:
        raise InputError(f"api must be one of {', '.join(APIS)}, got {api!r}")

    def scorer(kind: str) -> LabelScorer:
        transport = OpenAITransport(base_url=base_url, api_key_env=api_key_env, kind=kind,
                                    max_connections=max(concurrency, 8))
        engine = QueryEngine(transport, budget=budget, cache=cache, concurrency=concurrency, rpm=rpm, tpm=tpm,
                             timeout=timeout, max_attempts=max_attempts, prices=prices, model=model)
        return SCORERS[kind](engine, model, label_words, top_k=top_k)

    if api != "auto":
        return scorer(api)
    probe = scorer("completions")
    try:
        probe.engine.submit({"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0, "logprobs": 1})
        return probe
    except EndpointRefused:
        probe.engine.close()
        return scorer("chat")
