"""The text side of ``blackbox serve``: the embedded SmolLM2-135M-Instruct behind ``/v1/completions``
and ``/v1/chat/completions``, with ``logprobs`` / ``top_logprobs`` as OpenAI's API returns them.

Offline, real and fast enough to test text clients against (discrete prompt tuning over either
endpoint). ``temperature`` 0 answers greedily, above 0 samples (seeded by ``seed`` or the request);
``max_tokens`` (default 16, at most 256), ``min_tokens``, up to 20 ``top_logprobs`` and ``n``
(up to 16 answers to one prompt, answer ``j`` sampled with seed ``seed + j``; the prompt's tokens
are billed once) are honoured. The end-of-text token ends an answer and is listed in the
log-probabilities (never silently dropped), so a client always sees the first position's
distribution. Usage reports the real token counts. The model loads on the first text request.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time

COMPLETIONS = ("/v1/completions", "/completions")
CHAT = ("/v1/chat/completions", "/chat/completions")
MAX_TOKENS = 256
MAX_TOP = 20
MAX_N = 16


class BadRequest(ValueError):
    pass


class ServedLM:
    """Answers OpenAI-style text requests with an embedded causal LM (``lm``: a
    :class:`~blackbox.adapters.causal_lm.CausalLM`; the embedded SmolLM2 when None, loaded lazily)."""

    def __init__(self, lm=None, fingerprint: str = "blackbox-serve"):
        from blackbox.adapters.causal_lm import NAME

        self._lm = lm
        self.name = NAME
        self.fingerprint = fingerprint
        self._lock = threading.Lock()

    @property
    def lm(self):
        with self._lock:
            if self._lm is None:
                from blackbox.adapters.causal_lm import load_causal_lm

                self._lm = load_causal_lm()
            return self._lm

    def card(self) -> dict:
        """The ``/v1/models`` entry."""
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "blackbox",
                "pricing": {"input": 0.0, "output": 0.0, "unit": "USD per 1M tokens"}}

    def handles(self, route: str, raw: bytes) -> bool:
        """Completions requests, and chat requests that name this model."""
        if route in COMPLETIONS:
            return True
        if route not in CHAT:
            return False
        try:
            return json.loads(raw or b"{}").get("model") == self.name
        except (ValueError, AttributeError):
            return False

    def answer(self, route: str, raw: bytes) -> tuple[int, dict]:
        """``(HTTP status, JSON body)`` for one request."""
        from blackbox.errors import InputError

        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            if body.get("model") != self.name:
                return 404, _error(f"The model '{body.get('model')}' does not exist", "model_not_found")
            chat = route in CHAT
            text = self._chat_text(body) if chat else _prompt(body)
            options, n = _options(body, chat)
            outs = [self.lm.generate(text, **{**options, "seed": options["seed"] + j}) for j in range(n)]
        except (BadRequest, InputError) as exc:
            return 400, _error(f"bad request: {exc}")
        except (ValueError, TypeError) as exc:
            return 400, _error(f"bad request: {exc}")
        completion = sum(len(out.tokens) for out in outs)
        usage = {"prompt_tokens": outs[0].prompt_tokens, "completion_tokens": completion,
                 "total_tokens": outs[0].prompt_tokens + completion}
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{hashlib.sha1(raw).hexdigest()[:16]}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.name, "system_fingerprint": self.fingerprint, "usage": usage}
        return 200, {**head, "choices": [_choice(j, out, body, chat) for j, out in enumerate(outs)]}

    def _chat_text(self, body: dict) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        plain = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # text parts only
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict)
                                   and p.get("type") == "text")
            if not isinstance(content, str) or m.get("role") not in ("system", "user", "assistant"):
                raise BadRequest("each message needs a role (system, user, assistant) and text content")
            plain.append({"role": m["role"], "content": content})
        return self.lm.chat_text(plain)


def _choice(index: int, out, body: dict, chat: bool) -> dict:
    """One answer as an OpenAI choice (chat message or completion text, with its logprobs if asked)."""
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": out.text},
                "finish_reason": out.finish_reason, "logprobs": _chat_logprobs(out) if body.get("logprobs") else None}
    return {"index": index, "text": out.text, "finish_reason": out.finish_reason,
            "logprobs": _completion_logprobs(out) if body.get("logprobs") is not None else None}


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": None}}


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be one non-empty string")
    if body.get("echo"):
        raise BadRequest("echo is not supported")
    return prompt


def _count(body: dict, key: str, default: int, top: int) -> int:
    value = body.get(key)
    if value is None or value is False:
        return default
    if value is True or not isinstance(value, int) or not 0 <= value <= top:
        raise BadRequest(f"'{key}' must be a whole number from 0 to {top}")
    return value


def _options(body: dict, chat: bool) -> tuple[dict, int]:
    """The generation options of a request, and ``n`` (answers asked for)."""
    n = body.get("n")
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise BadRequest(f"'n' must be a whole number from 1 to {MAX_N}")
    limit = body.get("max_completion_tokens") if chat and body.get("max_completion_tokens") is not None \
        else body.get("max_tokens")
    max_tokens = _count({"max_tokens": limit}, "max_tokens", 16, MAX_TOKENS)
    if max_tokens < 1:
        raise BadRequest("'max_tokens' must be at least 1")
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else float(temperature)
    if not 0 <= temperature <= 2:
        raise BadRequest("'temperature' must be between 0 and 2")
    top_k = _count(body, "top_logprobs", 0, MAX_TOP) if chat else _count(body, "logprobs", 0, MAX_TOP)
    seed = body.get("seed")
    if not isinstance(seed, int):
        seed = int(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:15], 16)
    return {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k,
            "min_tokens": _count(body, "min_tokens", 0, MAX_TOKENS), "seed": seed}, n


def _chat_logprobs(out) -> dict:
    return {"content": [{"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top]}
                        for tok, lp, top in zip(out.tokens, out.logprobs, out.top)]}


def _completion_logprobs(out) -> dict:
    offsets, at = [], 0
    for tok in out.tokens:
        offsets.append(at)
        at += len(tok)
    tops = []
    for top in out.top:
        listed: dict[str, float] = {}
        for t, v in top:  # two ids can print alike: keep the likelier (listed first)
            listed.setdefault(t, v)
        tops.append(listed)
    return {"tokens": out.tokens, "token_logprobs": out.logprobs, "top_logprobs": tops, "text_offset": offsets}
