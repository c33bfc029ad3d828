"""Send requests to an OpenAI-compatible endpoint with the official ``openai`` SDK (no SDK retries).

The SDK runs with ``max_retries=0``: the :class:`~blackbox.adapters.remote.engine.QueryEngine`
(tenacity) is the only retry layer, so every attempt is counted. Answers are read raw and parsed
here, so a malformed body is a clear, retryable error rather than a half-parsed object. The API
key is held by the client only: it never enters a request dict, a cache key, a log line or an
error message (messages are scrubbed of it).
"""
from __future__ import annotations

import contextlib
import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

import httpx2
import openai

from blackbox.errors import InputError

from .http_limits import limited_client, parse_json, request_limits
from .outcomes import client_failed, no_answer, parse_answer, refused, status_error, unusable

DEFAULT_BASE_URL = "https://api.openai.com/v1"
KINDS = ("chat", "completions")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,})")


def strip_credentials(url: str) -> str:
    """A URL without user:password and without a query string (which may carry a key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


class OpenAITransport:
    """``send(request) -> dict`` over ``chat.completions`` (``kind='chat'``) or ``completions``.

    ``service_tier`` (e.g. ``"flex"``) is added to every request as it is sent, not to the
    request dict: the cache key stays the same whichever tier answers, and the engine prices
    answers at that tier (:attr:`tier`). :meth:`batch_api` reaches the same endpoint's Batch API."""

    def __init__(self, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 kind: str = "chat", max_connections: int = 64, api_key: str | None = None,
                 require_key: bool = True, service_tier: str | None = None):
        if kind not in KINDS:
            raise InputError(f"unknown request kind {kind!r} ({', '.join(KINDS)})")
        self.tier = service_tier
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"--base-url must start with http:// or https://, got {base_url!r}")
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        if not key:
            if require_key and not is_loopback(base_url):
                raise InputError(f"no API key: set the environment variable {api_key_env} "
                                 "(or name another one with --api-key-env)")
            key = "no-key"  # local servers (and dry runs) need none; the SDK insists on a value
        self._secret = key
        self.kind = kind
        self.base_url = base_url
        self.endpoint = f"{strip_credentials(base_url)}/{'chat/completions' if kind == 'chat' else 'completions'}"
        self._http = limited_client(max_connections)
        self.client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, http_client=self._http)
        self._path = "/chat/completions" if kind == "chat" else "/completions"

    @property
    def has_key(self) -> bool:
        """False when running without a key (a loopback server, or a dry run that sends nothing)."""
        return self._secret != "no-key"

    def redact(self, text: str) -> str:
        text = str(text)
        if self._secret and self._secret != "no-key":
            text = text.replace(self._secret, "***")
        return _KEYLIKE.sub("sk-***", text)

    def model_card(self, model: str, timeout: float = 10.0) -> dict | None:
        """``GET /models/{model}``: what the endpoint says about the model (free, not a query).
        ``blackbox serve`` adds ``input_view`` and ``pricing``; anything that fails is None."""
        with request_limits(timeout, 1 << 20):
            try:
                raw = self.client.get(f"/models/{quote(model, safe='')}", cast_to=httpx2.Response,
                                      options={"timeout": timeout})
                card = parse_json(raw.text)
            except (openai.OpenAIError, httpx2.HTTPError, ValueError):
                return None
        return card if isinstance(card, dict) else None

    @contextlib.contextmanager
    def judged(self, timeout: float, max_bytes: int | None = None):
        """One SDK call within ``timeout`` seconds (and ``max_bytes`` received): what goes wrong
        leaves as the error :mod:`.outcomes` makes of it, with the key scrubbed from messages."""
        with request_limits(timeout, *(() if max_bytes is None else (max_bytes,))) as limits:
            try:
                yield limits
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                raise no_answer(exc.__cause__, limits, timeout) from None
            except openai.APIStatusError as exc:
                headers = exc.response.headers if exc.response is not None else None
                raise status_error(exc.status_code, self.redact(_error_message(exc)), headers) from None
            except httpx2.HTTPError as exc:  # raised while the SDK read the body
                raise no_answer(exc, limits, timeout) from None
            except openai.OpenAIError as exc:  # anything else the SDK raises before or after sending
                raise client_failed(self.redact(exc)) from None

    def send(self, request: dict, timeout: float) -> dict:
        """One attempt; ``timeout`` is a wall-clock deadline for connect + send + read."""
        body = {**request, "service_tier": self.tier} if self.tier else request
        with self.judged(timeout):
            # the SDK's generic POST: its client, auth, base URL and error classes, but the request
            # dict is sent as it is (no typed re-validation of every message: half the CPU per call)
            text = self.client.post(self._path, cast_to=httpx2.Response, body=body, options={"timeout": timeout}).text
        return self.check(parse_answer(text))

    def batch_api(self, **settings):
        """This endpoint's Batch API (files and batches, see :mod:`.openai_batch`)."""
        from .openai_batch import OpenAIBatchAPI

        return OpenAIBatchAPI(self, **settings)

    def check(self, body) -> dict:
        """A parsed answer, if it can be used: an object with choices whose log-probabilities
        are valid; raises the error :mod:`.outcomes` gives it otherwise."""
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
            if isinstance(body, dict) and "error" in body:
                raise refused(f"the endpoint answered with an error: {self.redact(str(body['error'])[:300])}")
            raise unusable("the endpoint answered JSON without 'choices'")
        if not _logprobs_valid(body):
            raise unusable("the endpoint answered log-probabilities that are not finite and <= 0")
        return body

    @staticmethod
    def usage(body: dict):
        u = body.get("usage") or {}
        try:
            prompt, completion = int(u["prompt_tokens"]), int(u.get("completion_tokens") or 0)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            return None
        return (prompt, completion) if prompt >= 0 and completion >= 0 else None

    def close(self):
        self._http.close()


def _logprobs_valid(body: dict) -> bool:
    """Every log-probability listed in the choices (chat: ``logprobs.content``; completions:
    ``token_logprobs`` and ``top_logprobs``) is a finite number <= 0 (or null)."""
    def ok(value) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                 and value <= 1e-6 and value == value and value > -float("inf"))

    for choice in body["choices"]:
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if not isinstance(lp, dict):
            continue
        for entry in lp.get("content") or []:
            if isinstance(entry, dict):
                values = [entry.get("logprob")] + [t.get("logprob") for t in entry.get("top_logprobs") or []
                                                   if isinstance(t, dict)]
                if not all(ok(v) for v in values):
                    return False
        if not all(ok(v) for v in lp.get("token_logprobs") or []):
            return False
        for top in lp.get("top_logprobs") or []:
            if isinstance(top, dict) and not all(ok(v) for v in top.values()):
                return False
    return True


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]
