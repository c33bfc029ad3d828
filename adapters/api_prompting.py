"""An OpenAI-compatible endpoint as a prompt endpoint: label log-probabilities and sampled answers.

Every request goes through the remote :class:`~blackbox.adapters.remote.engine.QueryEngine`, which
brings the budget's tokens and money, the response cache (a resumed or repeated run pays nothing
twice), retries and the Batch API. Two request kinds:

* ``/v1/completions``: the prompt as raw text (:meth:`Prompt.fill_completion`), ``logprobs=top_k``;
  the first token's ``top_logprobs`` (a dict);
* ``/v1/chat/completions``: the prompt as messages (system instruction, demonstrations as
  user/assistant pairs, the example last), ``logprobs=true, top_logprobs=top_k``; the first
  answer token's ``top_logprobs`` (a list). Hosted chat models only serve this one.

:class:`PromptEndpoint` answers the two rewards of :mod:`blackbox.prompts.rewards`:

* **label log-probabilities** (:class:`LabelScorer`, one request per prompt, ``max_tokens=1``,
  temperature 0): read from the listed alternatives of the first answer token. A listed token
  counts for a label when, lower-cased and stripped, it *is* the label, or is a prefix of it of at
  least two characters that starts no other label (so a multi-token label such as
  "entertainment" is scored by its first token "entert"; variants of case and leading space are
  merged by log-sum-exp). A label with nothing listed gets the smallest listed log-probability
  minus ``log 2`` (less likely than anything listed): the *floor*. By default a label is scored
  by its first token. ``label_tokens="all"`` (completions only) scores it by all its tokens: the
  prompt is sent again ending with the label's first part, and so on (:class:`LabelPaths`; up to
  one more request per label token). Chat cannot: it has no way to continue a given answer.
* **sampled answers** (:class:`AnswerSampler`): ``max_tokens`` (default 8) tokens at the given
  temperature, with a ``seed`` per answer. ``s`` answers to one prompt are one request with
  ``n=s`` where the endpoint honours ``n`` (OpenAI bills the prompt once), found out on first use;
  otherwise ``s`` requests with seeds ``seed .. seed+s-1``. The answer is its first non-empty line.

Some servers (llama.cpp's among them) return *no* log-probabilities when the most likely first
token is the end of text, since nothing was generated. When an answer comes back like that, the
scorer re-sends those prompts once with ``min_tokens=1`` (an extension llama.cpp and vLLM accept;
the listed log-probabilities are still the model's own) and keeps doing so for later calls. An
endpoint that refuses that field gets a clear error instead of a silently wrong score.

:func:`openai_prompt_endpoint` builds one (``api="auto"`` probes completions with one one-token
request and falls back to chat when the endpoint refuses it).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from blackbox.errors import EndpointRefused, InputError, ModelError

APIS = ("auto", "completions", "chat")
LABEL_TOKENS = ("first", "all")
ANSWER_TOKENS = 8
MAX_LABEL_TOKENS = 8  # continuation rounds of --label-tokens all
_NOTHING_LISTED = "the endpoint listed no log-probabilities even with min_tokens=1"
_FIRST_TOKEN_ONLY = ("--label-tokens all needs /v1/completions (a prompt can end inside the answer there); "
                     "chat scores a label by its first token only")


def _norm(token: str) -> str:
    return token.strip().lower()


def label_matcher(labels: Sequence[str]):
    """``match(token) -> label index or None``: the label a listed token stands for (the label
    itself, or a prefix of at least two characters that starts no other label)."""
    labels = [_norm(w) for w in labels]

    def match(token: str) -> int | None:
        t = _norm(token)
        if not t:
            return None
        if t in labels:
            return labels.index(t)
        starts = [i for i, w in enumerate(labels) if len(t) >= 2 and w.startswith(t)]
        return starts[0] if len(starts) == 1 else None
    return match


class _EndOfText(Exception):
    """The endpoint generated nothing and listed no log-probabilities."""


class LabelScorer:
    """``scorer(prompts) -> (n, C)`` label log-probabilities through a QueryEngine (one request per
    prompt; a prompt is what the API takes: text, or for chat also a list of messages).
    Subclasses say how a request is written and where its first token's alternatives are."""

    kind = ""

    all_tokens = False  # whether this API can score a label beyond its first token

    def __init__(self, engine, model: str, label_words: Sequence[str], top_k: int = 20, min_tokens: bool = False,
                 label_tokens: str = "first"):
        if label_tokens not in LABEL_TOKENS:
            raise InputError(f"label_tokens must be one of {', '.join(LABEL_TOKENS)}, got {label_tokens!r}")
        if label_tokens == "all" and not self.all_tokens:
            raise InputError(_FIRST_TOKEN_ONLY)
        self.engine = engine
        self.model = model
        self.labels = [_norm(w) for w in label_words]
        self.match = label_matcher(self.labels)
        self.top_k = int(top_k)
        self.label_tokens = label_tokens
        self.min_tokens = bool(min_tokens)  # switched on by the first end-of-text answer

    @property
    def budget(self):
        """The budget the engine counts billable requests on (this scorer is *metered*)."""
        return self.engine.budget

    def request(self, prompt) -> dict:
        req = {"model": self.model, **self.body(prompt), "max_tokens": 1, "temperature": 0}
        if self.min_tokens:
            req["min_tokens"] = 1
        return req

    def body(self, prompt) -> dict:
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

    def __call__(self, prompts: Sequence) -> np.ndarray:
        return self.scores(prompts)[0]

    def scores(self, prompts: Sequence, batch: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(lp (n, C), listed (n, C))``; ``batch``: send the uncached requests as one batch."""
        prompts = list(prompts)
        bodies = [r.body for r in self.engine.map([self.request(p) for p in prompts], batch=batch)]
        rows: list = []
        for body in bodies:
            try:
                rows.append(self._read(body))
            except _EndOfText:
                rows.append(None)
        empty = [i for i, row in enumerate(rows) if row is None]
        if empty:
            for i, row in zip(empty, self._again([prompts[i] for i in empty], batch)):
                rows[i] = row
        lp, listed = np.array([r[0] for r in rows], dtype=np.float64), np.array([r[1] for r in rows], dtype=bool)
        if self.label_tokens == "all":
            lp = LabelPaths(self, prompts, [r[2] for r in rows]).run(lp, batch)
        return lp, listed

    def _again(self, prompts: list, batch: bool) -> list:
        """Prompts whose answer was the end of text, sent again with ``min_tokens=1`` (and every
        later prompt too)."""
        if self.min_tokens:
            raise ModelError(_NOTHING_LISTED)
        self.min_tokens = True
        try:
            again = self.engine.map([self.request(p) for p in prompts], batch=batch)
        except ModelError as exc:
            raise ModelError("the endpoint generated nothing (end of text) and so listed no log-probabilities, "
                             f"and it refused the min_tokens=1 retry: {exc}") from None
        try:
            return [self._read(resp.body) for resp in again]
        except _EndOfText:
            raise ModelError(_NOTHING_LISTED) from None

    def read(self, body: dict | None) -> list[float]:
        return self._read(body)[0]

    def read_listed(self, body: dict | None) -> tuple[list[float], list[bool]]:
        """The labels' log-probabilities in one answer, and which were listed (the rest: the floor)."""
        return self._read(body)[:2]

    def _read(self, body: dict | None) -> tuple[list[float], list[bool], dict]:
        top = self.alternatives(body)
        if not top:
            raise ModelError(f"the endpoint returned empty {self.where}")
        found: dict[int, dict[str, float]] = {}
        for token, lp in top.items():
            label = self.match(token)
            if label is not None:  # variants of one token merged, distinct tokens of a label summed
                seen = found.setdefault(label, {})
                key = _norm(token)
                seen[key] = float(np.logaddexp(seen[key], lp)) if key in seen else float(lp)
        floor = min(top.values()) - math.log(2)
        lps = [float(np.logaddexp.reduce(list(found[i].values()))) if i in found else floor
               for i in range(len(self.labels))]
        return lps, [i in found for i in range(len(self.labels))], top


def _as_dict(top) -> dict[str, float]:
    if isinstance(top, list):  # [{"token": ..., "logprob": ...}, ...]
        return {t["token"]: float(t["logprob"]) for t in top}
    return {k: float(v) for k, v in (top or {}).items()}


class LabelPaths:
    """``--label-tokens all`` over ``/v1/completions``: each label's log-probability summed over
    all its tokens. The first token is read from the prompt's own answer (``tops``); for a label
    it does not cover, the prompt is sent again ending with the part covered so far, and the
    next token is read there, until the label is spelled out (at most MAX_LABEL_TOKENS rounds).
    A label whose next part is not listed gets that position's floor and stops. Each round is one
    engine call (cached, budgeted): up to C x (tokens per label - 1) more requests per example."""

    def __init__(self, scorer: LabelScorer, prompts: list[str], tops: list[dict]):
        self.scorer, self.prompts, self.tops = scorer, prompts, tops

    @staticmethod
    def _best(top: dict, rest: str, first: bool):
        """``(logprob, token)``: the longest listed token that spells the start of ``rest`` (the
        tokenizer's own spelling of a word is its longest pieces; a short piece such as " a" may
        be likely for another reason, as an article). A first token may carry a leading space and
        any case and is two characters at least; a later one continues the word (no leading space)."""
        def spells(t: str) -> bool:
            if first:  # as for the first-token score: two characters at least, or the whole label
                return len(_norm(t)) >= min(2, len(rest)) and rest.startswith(_norm(t))
            return bool(t) and not t[:1].isspace() and rest.startswith(t.lower())
        fits = [(len(_norm(t)), lp, t) for t, lp in top.items() if spells(t)]
        return max(fits)[1:] if fits else None

    def run(self, lp: np.ndarray, batch: bool) -> np.ndarray:
        paths = {}  # (row, label) -> [text covered so far, its log-probability, what is left of the label]
        for r, top in enumerate(self.tops):
            for c, label in enumerate(self.scorer.labels):
                best = self._best(top, label, first=True)
                if best is not None and len(_norm(best[1])) < len(label):
                    paths[(r, c)] = [best[1], best[0], label[len(_norm(best[1])):]]
        for _ in range(MAX_LABEL_TOKENS):
            if not paths:
                break
            keys = list(paths)
            asked = [self.scorer.request(self.prompts[k[0]] + paths[k][0]) for k in keys]
            for key, resp in zip(keys, self.scorer.engine.map(asked, batch=batch)):
                lp[key] = self._extend(paths, key, resp.body)
        for key, (_, value, _) in paths.items():  # still unfinished after the last round
            lp[key] = value
        return lp

    def _extend(self, paths: dict, key, body) -> float:
        """One more token of a label's path; the label's log-probability so far (final when done)."""
        covered, value, rest = paths[key]
        try:
            top = self.scorer.alternatives(body)
        except _EndOfText:
            top = {}
        best = self._best(top, rest, first=False) if top else None
        if best is None:  # the rest is not listed: less likely than anything that is
            del paths[key]
            return value + (min(top.values()) - math.log(2) if top else min(self.tops[key[0]].values()) - math.log(2))
        value, rest = value + best[0], rest[len(best[1]):]
        if rest:
            paths[key] = [covered + best[1], value, rest]
        else:
            del paths[key]
        return value


class CompletionLabelScorer(LabelScorer):
    """Over ``/v1/completions``: the first token's ``logprobs.top_logprobs[0]`` (and with
    ``label_tokens="all"``, the following tokens: :class:`LabelPaths`)."""

    kind, where, all_tokens = "completions", "top_logprobs", True

    def body(self, prompt: str) -> dict:
        return {"prompt": prompt, "logprobs": self.top_k}

    def listed(self, choice):
        return choice["logprobs"]["top_logprobs"]

    def first(self, listed):
        return _as_dict(listed[0])

    def text(self, choice):
        return choice.get("text")


class ChatLabelScorer(LabelScorer):
    """Over ``/v1/chat/completions``: a text prompt is the user's message (a list is the
    messages); the first answer token's ``logprobs.content[0].top_logprobs``."""

    kind, where = "chat", "logprobs.content"

    def body(self, prompt) -> dict:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return {"messages": messages, "logprobs": True, "top_logprobs": self.top_k}

    def listed(self, choice):
        return choice["logprobs"]["content"]

    def first(self, listed):
        return _as_dict(listed[0].get("top_logprobs"))

    def text(self, choice):
        return (choice.get("message") or {}).get("content")


SCORERS = {"completions": CompletionLabelScorer, "chat": ChatLabelScorer}


def first_line(text) -> str:
    """An answer's first non-empty line (a completion goes on past its answer)."""
    return next((line.strip() for line in str(text or "").splitlines() if line.strip()), "")


class AnswerSampler:
    """Sampled answers to prompts (see the module docstring); ``n_per_request`` is None until
    the endpoint shows whether it honours ``n``."""

    def __init__(self, engine, model: str, kind: str, max_tokens: int = ANSWER_TOKENS):
        self.engine, self.model, self.kind, self.max_tokens = engine, model, kind, int(max_tokens)
        self.n_per_request: bool | None = None

    def request(self, prompt, temperature: float, seed: int, n: int = 1, max_tokens: int | None = None) -> dict:
        req = {"model": self.model, **({"messages": prompt} if self.kind == "chat" else {"prompt": prompt}),
               "max_tokens": int(max_tokens or self.max_tokens), "temperature": float(temperature), "seed": int(seed)}
        return {**req, "n": int(n)} if n > 1 else req

    def texts(self, body: dict) -> list[str]:
        key = (lambda c: (c.get("message") or {}).get("content")) if self.kind == "chat" else (lambda c: c.get("text"))
        return [first_line(key(c)) for c in body.get("choices") or [] if isinstance(c, dict)]

    def __call__(self, prompts: Sequence, samples: Sequence[int], *, temperature: float, seed: int,
                 batch: bool = False, max_tokens: int | None = None) -> list[list[str]]:
        """``samples[i]`` answers to ``prompts[i]`` (temperature 0: the one greedy answer, repeated)."""
        if temperature == 0:
            once = self._separate(prompts, [1] * len(prompts), 0.0, seed, batch, max_tokens)
            return [a * int(s) for a, s in zip(once, samples)]
        if self.n_per_request is None and any(s > 1 for s in samples):
            self._find_n(prompts[int(np.argmax(samples))], temperature, seed, max_tokens)
        if self.n_per_request:
            reqs = [self.request(p, temperature, seed, int(s), max_tokens) for p, s in zip(prompts, samples)]
            return [self.texts(r.body)[: int(s)] for r, s in zip(self.engine.map(reqs, batch=batch), samples)]
        return self._separate(prompts, samples, temperature, seed, batch, max_tokens)

    def _separate(self, prompts, samples, temperature, seed, batch, max_tokens) -> list[list[str]]:
        """One request per answer, answer ``j`` with seed ``seed + j``."""
        owner = np.repeat(np.arange(len(prompts)), samples)
        index = np.concatenate([np.arange(int(s)) for s in samples]) if len(samples) else np.zeros(0, int)
        reqs = [self.request(prompts[o], temperature, seed + int(j), 1, max_tokens) for o, j in zip(owner, index)]
        out: list[list[str]] = [[] for _ in prompts]
        for o, r in zip(owner, self.engine.map(reqs, batch=batch)):
            out[o].append((self.texts(r.body) or [""])[0])
        return out

    def _find_n(self, prompt, temperature: float, seed: int, max_tokens) -> None:
        """Ask for two answers in one request: does the endpoint give two (``n`` honoured)?"""
        try:
            body = self.engine.submit(self.request(prompt, temperature, seed, 2, max_tokens)).body
            self.n_per_request = body is not None and len(self.texts(body)) == 2
        except EndpointRefused:
            self.n_per_request = False


class PromptEndpoint:
    """The two rewards' model (:class:`blackbox.prompts.rewards.PromptEndpoint`) over one engine:
    (prompt, text) pairs rendered for the API (``kind``), label log-probabilities and sampled
    answers. ``batch_evaluations``: held-out passes go through the Batch API as one batch each."""

    def __init__(self, engine, model: str, kind: str, label_words: Sequence[str], *, top_k: int = 20,
                 answer_tokens: int = ANSWER_TOKENS, batch_evaluations: bool = False, label_tokens: str = "first"):
        if kind not in SCORERS:
            raise InputError(f"api must be one of {', '.join(SCORERS)}, got {kind!r}")
        self.engine, self.model, self.kind = engine, model, kind
        self.scorer = SCORERS[kind](engine, model, label_words, top_k=top_k, label_tokens=label_tokens)
        self.sampler = AnswerSampler(engine, model, kind, answer_tokens)
        self.batch_evaluations = bool(batch_evaluations)

    @property
    def budget(self):
        return self.engine.budget

    def render(self, pair) -> str | list:
        prompt, text = pair
        return prompt.fill_messages(text) if self.kind == "chat" else prompt.fill_completion(text)

    def label_scores(self, pairs, *, evaluation: bool = False):
        from blackbox.prompts.rewards import LabelScores

        lp, listed = self.scorer.scores([self.render(p) for p in pairs], batch=evaluation and self.batch_evaluations)
        return LabelScores(lp, listed)

    def answers(self, pairs, samples, *, temperature: float, seed: int, evaluation: bool = False,
                max_tokens: int | None = None) -> list[list[str]]:
        return self.sampler([self.render(p) for p in pairs], list(samples), temperature=temperature, seed=seed,
                            batch=evaluation and self.batch_evaluations, max_tokens=max_tokens)

    def label_requests(self, pairs) -> list[dict]:
        """The requests :meth:`label_scores` sends (for a dry run's estimate)."""
        return [self.scorer.request(self.render(p)) for p in pairs]

    def answer_requests(self, pairs, temperature: float, seed: int) -> list[dict]:
        """The requests of one answer per pair (for a dry run's estimate)."""
        return [self.sampler.request(self.render(p), temperature, seed) for p in pairs]

    def spent(self, since: dict | None = None) -> str:
        """What the engine paid (since the ``since`` snapshot of ``engine.stats.as_dict()``), in words."""
        now, before = self.engine.stats.as_dict(), since or {}
        sent = now["sent"] - before.get("sent", 0)
        tokens = (now["prompt_tokens"] + now["completion_tokens"]
                  - before.get("prompt_tokens", 0) - before.get("completion_tokens", 0))
        cost = ("unknown cost (no price)" if now["cost"] is None
                else f"${now['cost'] - (before.get('cost') or 0.0):.4f}")
        return f"{sent} request{'s' if sent != 1 else ''} ({tokens} tokens, {cost})"

    def close(self) -> None:
        self.engine.close()


def _engine(kind: str, model: str, base_url, api_key_env: str, service_tier, concurrency: int, **settings):
    from .remote.engine import QueryEngine
    from .remote.openai_transport import OpenAITransport

    transport = OpenAITransport(base_url=base_url, api_key_env=api_key_env, kind=kind,
                                max_connections=max(concurrency, 8), service_tier=service_tier,
                                require_key=not settings.get("dry_run"))
    return QueryEngine(transport, concurrency=concurrency, model=model, **settings)


def _pick_api(api: str, make):
    """The engine for ``api``; ``auto`` probes completions with one one-token request and takes
    chat when the endpoint refuses it. Returns ``(kind, engine)``."""
    if api not in APIS:
        raise InputError(f"api must be one of {', '.join(APIS)}, got {api!r}")
    if api != "auto":
        return api, make(api)
    probe = make("completions")
    try:
        probe.submit({"model": probe.model, "prompt": "Hello", "max_tokens": 1, "temperature": 0, "logprobs": 1})
        return "completions", probe
    except EndpointRefused:
        probe.close()
        return "chat", make("chat")


def openai_prompt_endpoint(model: str, label_words: Sequence[str], *, api: str = "auto", base_url: str | None = None,
                           api_key_env: str = "OPENAI_API_KEY", budget=None, cache: bool = True,
                           concurrency: int = 4, rpm: float | None = None, tpm: float | None = None,
                           timeout: float = 60.0, max_attempts: int = 6, prices=None, top_k: int = 20,
                           service_tier: str | None = None, batch_evaluations: bool = False,
                           dry_run: bool = False, answer_tokens: int = ANSWER_TOKENS,
                           label_tokens: str = "first") -> PromptEndpoint:
    """A :class:`PromptEndpoint` with its own engine (the budget's tokens and money, cache,
    retries) over ``<base_url>/completions`` or ``<base_url>/chat/completions`` (``api``).
    ``service_tier`` ("flex"; "default" is none) is checked against the price table first;
    ``label_tokens="all"`` scores labels by all their tokens (completions only: :class:`LabelPaths`).
    Close it with ``endpoint.close()``."""
    from .remote.pricing import PriceTable

    tier = None if service_tier in (None, "default") else service_tier
    table = prices if isinstance(prices, PriceTable) else PriceTable.load(prices)
    table.check_tier(model, tier)

    def make(kind: str):
        return _engine(kind, model, base_url, api_key_env, tier, concurrency, budget=budget, cache=cache, rpm=rpm,
                       tpm=tpm, timeout=timeout, max_attempts=max_attempts, prices=table, dry_run=dry_run)

    if label_tokens == "all" and api == "chat":
        raise InputError(_FIRST_TOKEN_ONLY)
    if dry_run and api == "auto":  # a dry run sends nothing, so it cannot ask which API answers
        api = "completions" if label_tokens == "all" else "chat"
    kind, engine = _pick_api(api, make)
    try:
        return PromptEndpoint(engine, model, kind, label_words, top_k=top_k, answer_tokens=answer_tokens,
                              batch_evaluations=batch_evaluations, label_tokens=label_tokens)
    except InputError:
        engine.close()
        raise


def openai_label_scorer(model: str, label_words: Sequence[str], *, api: str = "auto", base_url: str | None = None,
                        api_key_env: str = "OPENAI_API_KEY", budget=None, cache: bool = True, concurrency: int = 4,
                        rpm: float | None = None, tpm: float | None = None, timeout: float = 60.0,
                        max_attempts: int = 6, prices=None, top_k: int = 20) -> LabelScorer:
    """A label scorer (``scorer(prompts) -> (n, C)``, prompts as text) with its own engine over
    ``api`` (see :func:`openai_prompt_endpoint`). Close it with ``scorer.engine.close()``."""
    return openai_prompt_endpoint(model, label_words, api=api, base_url=base_url, api_key_env=api_key_env,
                                  budget=budget, cache=cache, concurrency=concurrency, rpm=rpm, tpm=tpm,
                                  timeout=timeout, max_attempts=max_attempts, prices=prices, top_k=top_k).scorer
