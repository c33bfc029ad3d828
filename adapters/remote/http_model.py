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
``usage_path`` (optional) points at ``{prompt_tokens, completion_tokens}``. ``view``
(``full``, default, or ``center_crop``) and ``crop_fraction`` say how the endpoint looks at an
image (see :class:`~blackbox.adapters.remote.image_model.ViewRule`); ``model`` names the price.
"""
from __future__ import annotations

import json
import os

import httpx2
import numpy as np

from blackbox.errors import InputError, ModelError
from blackbox.paths import read_json_object

from .engine import QueryEngine
from .http_limits import limited_client, parse_json, request_limits
from .image_model import RemoteImageModel, ViewRule, stand_in
from .openai_transport import strip_credentials
from .outcomes import no_answer, parse_answer, status_error, unusable


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
    """POST a JSON request to one URL with httpx2; no retries here (the engine owns them).
    ``timeout`` is a wall-clock deadline per attempt; answers are limited in size."""

    def __init__(self, url: str, headers: dict | None = None, max_connections: int = 64,
                 usage_path: str | None = None, secret: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise InputError(f"endpoint url must start with http:// or https://, got {url!r}")
        self.url = url
        self.endpoint = strip_credentials(url)
        self.usage_path = usage_path
        self._secret = secret
        self._client = limited_client(max_connections, headers)

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def send(self, request: dict, timeout: float) -> dict:
        with request_limits(timeout) as limits:
            try:
                r = self._client.post(self.url, json=request, timeout=timeout)
            except httpx2.HTTPError as exc:
                raise no_answer(exc, limits, timeout) from None
        if r.status_code >= 400:
            try:
                err = parse_json(r.content)
                err = err.get("error", r.text) if isinstance(err, dict) else r.text
                message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            except ValueError:
                message = r.text
            raise status_error(r.status_code, self._redact(message[:300]), r.headers)
        body = parse_answer(r.content)
        if not isinstance(body, dict):
            raise unusable("the endpoint answered JSON that is not an object")
        return body

    def usage(self, body: dict):
        if not self.usage_path:
            return None
        try:
            u = lookup(body, self.usage_path)
            prompt, completion = int(u["prompt_tokens"]), int(u.get("completion_tokens") or 0)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        return (prompt, completion) if prompt >= 0 and completion >= 0 else None

    def close(self):
        self._client.close()


class HTTPImageModel(RemoteImageModel):
    """An image model behind a JSON endpoint: template in, score at ``score_path`` out."""

    def __init__(self, spec: dict, engine: QueryEngine, name: str = "http", view_rule: ViewRule | None = None):
        super().__init__(engine, name, view_rule or spec_view(spec, name))
        self.spec = spec
        self.template = spec["request"]
        self.score_path = spec["score_path"]
        self.transform = spec.get("transform", "none")
        if self.transform not in ("none", "log"):
            raise InputError(f"spec transform must be 'none' or 'log', got {self.transform!r}")

    def _value(self, body: dict) -> float:
        try:
            value = float(lookup(body, self.score_path))
        except KeyError as exc:
            keys = ", ".join(map(str, list(body)[:8])) if isinstance(body, dict) else type(body).__name__
            raise ModelError(f"score path {self.score_path!r} not found in the answer (missing {exc}; "
                             f"top-level keys: {keys})") from None
        except (TypeError, ValueError, OverflowError):
            raise unusable(f"the value at {self.score_path!r} is not a number") from None
        if self.transform == "log":
            if not 0 <= value <= 1:
                raise unusable(f"the value at {self.score_path!r} is not a probability: {value!r}")
            value = float(np.log(max(value, 1e-12)))
        if not np.isfinite(value):
            raise unusable(f"the value at {self.score_path!r} is not finite")
        return value

    def _validate(self, request: dict, body: dict) -> None:
        self._value(body)

    def scores(self, images, label: str) -> np.ndarray:
        def build(digest: str) -> dict:
            return fill(self.template, {"image_data_url": stand_in(digest),
                                        "image_base64": stand_in(digest, bare_base64=True), "target": label})
        responses = self.query(images, build, self._validate)
        if self.engine.dry_run:
            return np.zeros(len(images))
        for r in responses:
            self.note(r.body)
        return np.asarray([self._value(r.body) for r in responses])

    def _provenance_extra(self) -> dict:
        return {"scoring": f"score_path {self.score_path}", "transform": self.transform}


def spec_view(spec: dict, where: str, resolution: int | None = None) -> ViewRule:
    """The view a spec describes: ``resolution`` (default 512; the user's wins), ``view`` (full or
    center_crop) and ``crop_fraction``."""
    return ViewRule.parse({"kind": spec.get("view", "full"), "size": spec.get("resolution", 512),
                           "crop_fraction": spec.get("crop_fraction", 224 / 256)}, f"endpoint spec {where}",
                          resolution)


def load_spec(path: str) -> dict:
    spec = read_json_object(path, "endpoint spec", "a JSON object with url, request and score_path",
                            hint="use --model http:SPEC.json")
    missing = [k for k in ("url", "request", "score_path") if k not in spec]
    if missing:
        raise InputError(f"endpoint spec {path} lacks {', '.join(missing)}")
    for key in ("url", "score_path"):
        if not isinstance(spec[key], str) or not spec[key].strip():
            raise InputError(f"endpoint spec {path}: {key!r} must be a non-empty string")
    if not isinstance(spec["request"], (dict, list)):
        raise InputError(f"endpoint spec {path}: 'request' must be a JSON object (the request template)")
    if not isinstance(spec.get("headers") or {}, dict):
        raise InputError(f"endpoint spec {path}: 'headers' must be an object of strings")
    spec_view(spec, path)  # a bad resolution/view is reported now, before anything is sent
    return spec


def http_image_model(spec_path: str, *, budget=None, cache: bool = True, concurrency: int = 16,
                     rpm=None, tpm=None, timeout: float = 60.0, max_attempts: int = 6, prices=None,
                     dry_run: bool = False, api_key_env: str | None = None, resolution: int | None = None,
                     **engine_options) -> HTTPImageModel:
    spec = load_spec(spec_path)
    headers = dict(spec.get("headers") or {})
    key_env = api_key_env or spec.get("api_key_env")
    secret = os.environ.get(key_env) if key_env else None
    if any("{api_key}" in str(v) for v in headers.values()):
        if not secret:
            raise InputError(f"the endpoint spec needs an API key: set the environment variable "
                             f"{key_env or '(name it with --api-key-env)'}")
        headers = {k: str(v).replace("{api_key}", secret) for k, v in headers.items()}
    if "{api_key}" in json.dumps(spec["request"]):
        raise InputError("put {api_key} in 'headers', not in the request template (requests are cached)")
    transport = HTTPTransport(spec["url"], headers, max_connections=max(concurrency, 8),
                              usage_path=spec.get("usage_path"), secret=secret)
    engine = QueryEngine(transport, budget=budget, cache=cache, concurrency=concurrency,
                         rpm=rpm, tpm=tpm, timeout=timeout, max_attempts=max_attempts, prices=prices,
                         model=spec.get("model"), dry_run=dry_run, **engine_options)
    return HTTPImageModel(spec, engine, name=f"http:{os.path.basename(spec_path)}",
                          view_rule=spec_view(spec, spec_path, resolution))
