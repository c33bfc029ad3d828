"""Any JSON HTTP endpoint as an image query function (httpx2; cache, budget, retries from the engine).

Describe the endpoint in a JSON spec file and use ``--model http:SPEC.json``::

    {
      "url": "http://127.0.0.1:8000/v1/score",
      "request": {"image": "{image_data_url}", "label": "{target}"},
      "score_path": "result.log_prob",
      "headers": {"Authorization": "Bearer {api_key}"},
      "resolution": 224,
      "transform": "none"
    }

Placeholders in the request template (any string value): ``{image_data_url}`` (PNG data URL),
``{image_base64}`` (bare base64 PNG), ``{target}``. ``{api_key}`` is allowed in ``headers`` only
and is read from the environment variable named by ``api_key_env`` (spec key or
``--api-key-env``); headers are never part of the cache key. ``score_path`` is a dotted path into
the answer (list indices as numbers: ``choices.0.score``). ``transform``: ``none`` (the value is
already a log-probability or any score) or ``log`` (the value is a probability; its log is used).
``usage_path`` (optional) points at ``{prompt_tokens, completion_tokens}``.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from blackbox.errors import InputError, ModelError
from blackbox.images import ImageView
from blackbox.models import Target

from .engine import QueryEngine, RetryableError, classify_status, retry_after_seconds
from .openai_vision import STAND_IN, image_digest, png_data_url, quantise
from .openai_transport import strip_credentials


_STAND_IN_RE = re.compile(re.escape(STAND_IN) + r"(b64:)?([0-9a-f]{64})")


def lookup(body, path: str):
    node = body
    for part in path.split("."):
        if isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(part)
    return node


def fill(template, values: dict):
    """Replace ``{name}`` placeholders in every string of a JSON template."""
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    if isinstance(template, str):
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        return template
    return template


class HTTPTransport:
    """POST a JSON request to one URL with httpx2; no retries here (the engine owns them)."""

    def __init__(self, url: str, headers: dict | None = None, max_connections: int = 64,
                 usage_path: str | None = None, secret: str | None = None):
        import httpx2

        if not url.startswith(("http://", "https://")):
            raise InputError(f"endpoint url must start with http:// or https://, got {url!r}")
        self.url = url
        self.endpoint = strip_credentials(url)
        self.usage_path = usage_path
        self._secret = secret
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx2.Client(headers=headers or {}, limits=limits)
        self._httpx = httpx2

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def send(self, request: dict, timeout: float) -> dict:
        httpx2 = self._httpx
        try:
            r = self._client.post(self.url, json=request, timeout=timeout)
        except httpx2.TimeoutException:
            raise RetryableError(f"no answer within {timeout:g} s (timeout)", maybe_billed=True) from None
        except httpx2.TransportError as exc:
            raise RetryableError(f"connection error: {self._redact(type(exc).__name__)}") from None
        if r.status_code >= 400:
            try:
                err = r.json().get("error", r.text)
                message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            except ValueError:
                message = r.text
            raise classify_status(r.status_code, self._redact(message[:300]),
                                  retry_after_seconds(r.headers.get("retry-after")))
        try:
            body = r.json()
        except ValueError:
            raise RetryableError(f"the endpoint answered malformed JSON ({len(r.content)} bytes)") from None
        if not isinstance(body, dict):
            raise RetryableError("the endpoint answered JSON that is not an object")
        return body

    def usage(self, body: dict):
        if not self.usage_path:
            return None
        try:
            u = lookup(body, self.usage_path)
            return int(u["prompt_tokens"]), int(u.get("completion_tokens") or 0)
        except (KeyError, TypeError, ValueError):
            return None

    def close(self):
        self._client.close()


class HTTPImageModel:
    """An image model behind a JSON endpoint: template in, score at ``score_path`` out."""

    def __init__(self, spec: dict, engine: QueryEngine, name: str = "http"):
        self.spec = spec
        self.engine = engine
        self.name = name
        self.template = spec["request"]
        self.score_path = spec["score_path"]
        self.transform = spec.get("transform", "none")
        if self.transform not in ("none", "log"):
            raise InputError(f"spec transform must be 'none' or 'log', got {self.transform!r}")
        self.resolution = int(spec.get("resolution", 512))
        self.query_batch_size = max(64, 2 * engine.concurrency)
        engine.validate = self._validate

    def view(self, height: int, width: int) -> ImageView:
        return ImageView.full(height, width, self.resolution)

    def resolve_target(self, target, image=None) -> Target:
        if target is None or not str(target).strip():
            raise InputError(f"model {self.name} needs a target, e.g. --target \"espresso\"")
        return Target(None, str(target).strip())

    def request(self, image: np.ndarray, label: str) -> dict:
        url = png_data_url(image)
        return fill(self.template, {"image_data_url": url, "image_base64": url.split(",", 1)[1], "target": label})

    def _requests(self, images: np.ndarray, label: str):
        """Requests keyed by image content hashes; ``prepare`` encodes only what is sent."""
        images8 = quantise(images)
        digests = [image_digest(im) for im in images8]
        by_digest = dict(zip(digests, images8))
        reqs = [fill(self.template, {"image_data_url": STAND_IN + d, "image_base64": STAND_IN + "b64:" + d,
                                     "target": label}) for d in digests]

        def swap(node):
            if isinstance(node, dict):
                return {k: swap(v) for k, v in node.items()}
            if isinstance(node, list):
                return [swap(v) for v in node]
            if isinstance(node, str) and STAND_IN in node:
                def encode(m):
                    url = png_data_url(by_digest[m.group(2)])
                    return url.split(",", 1)[1] if m.group(1) else url
                return _STAND_IN_RE.sub(encode, node)
            return node
        return reqs, swap

    def _value(self, body: dict) -> float:
        try:
            value = float(lookup(body, self.score_path))
        except KeyError as exc:
            keys = ", ".join(list(body)[:8]) if isinstance(body, dict) else type(body).__name__
            raise ModelError(f"score path {self.score_path!r} not found in the answer (missing {exc}; "
                             f"top-level keys: {keys})") from None
        except (TypeError, ValueError):
            raise RetryableError(f"the value at {self.score_path!r} is not a number") from None
        if self.transform == "log":
            value = float(np.log(max(value, 1e-12)))
        if not np.isfinite(value):
            raise RetryableError(f"the value at {self.score_path!r} is not finite")
        return value

    def _validate(self, request: dict, body: dict) -> None:
        self._value(body)

    def score_fn(self, target: Target, kind: str = "logprob"):
        def fn(images):
            reqs, prepare = self._requests(np.asarray(images), target.label)
            responses = self.engine.map(reqs, prepare=prepare)
            if self.engine.dry_run:
                return np.zeros(len(images))
            values = np.asarray([self._value(r.body) for r in responses])
            return values if kind == "logprob" else np.exp(values)
        return fn

    def usage(self) -> dict:
        u = self.engine.stats.as_dict()
        u["budget"] = self.engine.budget.summary()
        return u

    def provenance(self) -> dict:
        from blackbox import __version__

        return {"model": self.name, "endpoint": self.engine.transport.endpoint, "scoring": f"score_path {self.score_path}",
                "transform": self.transform, "resolution": self.resolution, "blackbox_version": __version__}

    def close(self):
        self.engine.close()


def load_spec(path: str) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"HTTP endpoint spec not found: {path} (use --model http:SPEC.json)")
    try:
        with open(path, encoding="utf-8") as fh:
            spec = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read endpoint spec {path}: {exc}") from None
    missing = [k for k in ("url", "request", "score_path") if k not in (spec if isinstance(spec, dict) else {})]
    if missing:
        raise InputError(f"endpoint spec {path} lacks {', '.join(missing)}")
    return spec


def http_image_model(spec_path: str, *, budget=None, cache: bool = True, concurrency: int = 16,
                     rpm=None, tpm=None, timeout: float = 60.0, max_attempts: int = 6, prices=None,
                     dry_run: bool = False, api_key_env: str | None = None, **engine_options) -> HTTPImageModel:
    spec = load_spec(spec_path)
    headers = dict(spec.get("headers") or {})
    key_env = api_key_env or spec.get("api_key_env")
    secret = os.environ.get(key_env) if key_env else None
    if any("{api_key}" in str(v) for v in headers.values()):
        if not secret:
            raise InputError(f"the endpoint spec needs an API key: set the environment variable "
                             f"{key_env or '(name it with --api-key-env)'}")
        headers = {k: str(v).replace("{api_key}", secret) for k, v in headers.items()}
    if any("{api_key}" in json.dumps(spec["request"]) for _ in [0]):
        raise InputError("put {api_key} in 'headers', not in the request template (requests are cached)")
    transport = HTTPTransport(spec["url"], headers, max_connections=max(concurrency, 8),
                              usage_path=spec.get("usage_path"), secret=secret)
    engine = QueryEngine(transport, budget=budget, cache=cache, concurrency=concurrency,
                         rpm=rpm, tpm=tpm, timeout=timeout, max_attempts=max_attempts, prices=prices,
                         model=spec.get("model"), dry_run=dry_run, **engine_options)
    return HTTPImageModel(spec, engine, name=f"http:{os.path.basename(spec_path)}")
