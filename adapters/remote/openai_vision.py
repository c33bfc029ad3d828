"""Vision chat models (GPT-vision, any OpenAI-compatible server) as image query functions.

The scalar per image is log P("Yes") for the closed question "Is there a {target} in this image?
Answer Yes or No.", read from the first answer token's ``top_logprobs`` and summed over the case
and whitespace variants of "yes" (" Yes", "YES", "yes." ...). If "yes" is not among the top-k
alternatives, P(yes) is bounded by the smallest listed probability and by the mass left over, and
that bound is used.

Capability probe: before spending, one request (the first image, with ``logprobs`` and
``top_logprobs``) shows whether the endpoint returns logprobs for image inputs. If it does not,
a fallback is used, with a warning:

* ``confidence`` (default fallback): ask for a 0-100 confidence, ``samples`` times (replicas at
  temperature 1), score = log((mean + 0.5) / 101); coarse, so use a larger sigma;
* ``frequency``: ask the Yes/No question ``samples`` times at temperature 1, score =
  log((yes + 0.5) / (samples + 1)).

Images are sent as PNG data URLs at a fixed resolution (``ImageView.full``: the whole image, longer
side ``resolution``). The saliency spaces already clip and 8-bit-quantise what they render, and PNG
is lossless, so what is sent is exactly what the estimator weighted.
"""
from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import sys
from typing import Callable

import numpy as np

from blackbox.errors import InputError, ModelError
from blackbox.images import ImageView
from blackbox.models import Target

from .engine import QueryEngine, RetryableError
from .pricing import PriceTable, default_token_estimate

PRESETS = {"gpt-vision": "gpt-4o-mini"}
NATIVE_RESOLUTION = {"efficientnet-lite0": 224}  # our own server (blackbox serve) looks at 224 x 224
DEFAULT_RESOLUTION = 512
QUESTION = "Is there a {label} in this image? Answer Yes or No."
CONFIDENCE_QUESTION = ("Is there a {label} in this image? Give your confidence that there is, as a number "
                       "from 0 to 100. Answer with the number only.")
SCORINGS = ("auto", "logprob", "confidence", "frequency")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _is_yes(token: str) -> bool:
    return token.strip().strip(".!,:;\"'").lower() == "yes"


def yes_logprob(top: list[dict]) -> float:
    """log P(yes) from a first-token ``top_logprobs`` list, summed over case/whitespace variants."""
    if not top:
        raise ValueError("empty top_logprobs")
    probs = [(t.get("token", ""), math.exp(float(t["logprob"]))) for t in top]
    yes = sum(p for tok, p in probs if _is_yes(tok))
    if yes > 0:
        return math.log(min(yes, 1.0))
    rest = max(1.0 - sum(p for _, p in probs), 0.0)
    bound = min(min(p for _, p in probs), rest) if rest > 0 else min(p for _, p in probs)
    return math.log(max(bound, 1e-12))


def quantise(images: np.ndarray) -> np.ndarray:
    """[0, 1] float images -> uint8 (what is sent; the saliency spaces already render on this grid)."""
    x = np.multiply(images, np.float32(255.0), dtype=np.float32)
    x += np.float32(0.5)  # round half up; values rendered on the 8-bit grid are never at .5
    np.clip(x, 0.0, 255.0, out=x)
    return x.astype(np.uint8)


def image_digest(image8: np.ndarray) -> str:
    """A content hash of an 8-bit image (the cache key holds this, not the encoded image)."""
    h = hashlib.sha256(str(image8.shape).encode())
    h.update(np.ascontiguousarray(image8).tobytes())
    return h.hexdigest()


STAND_IN = "blackbox-image-sha256:"


def png_data_url(image: np.ndarray) -> str:
    """An ``(H, W, 3)`` image ([0, 1] float or uint8) as a PNG data URL (8 bits, lossless)."""
    from PIL import Image

    arr = image if image.dtype == np.uint8 else quantise(image)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _warn(message: str) -> None:
    print(f"blackbox: warning: {message}", file=sys.stderr, flush=True)


class OpenAIVisionModel:
    """An OpenAI-compatible vision chat model as an :class:`~blackbox.models.ImageModel`.

    ``engine`` carries cache, budget, retries and concurrency (see ``engine.py``). The model
    exposes ``query_batch_size`` so a QueryRunner hands it enough images to keep
    ``concurrency`` requests in flight."""

    def __init__(self, model: str, engine: QueryEngine, *, resolution: int | None = None,
                 scoring: str = "auto", top_logprobs: int = 5, samples: int = 5, detail: str = "auto",
                 seed: int | None = 0, name: str | None = None, warn: Callable[[str], None] = _warn):
        if scoring not in SCORINGS:
            raise InputError(f"unknown scoring {scoring!r} ({', '.join(SCORINGS)})")
        self.model = model
        self.name = name or f"openai:{model}"
        self.engine = engine
        self.resolution = int(resolution or NATIVE_RESOLUTION.get(model, DEFAULT_RESOLUTION))
        self.requested_scoring = scoring
        self.scoring = None if scoring == "auto" else scoring
        self.top_logprobs = int(top_logprobs)
        self.samples = int(samples)
        self.detail = detail
        self.seed = seed
        self.warn = warn
        self.capabilities: dict = {}
        self.fingerprints: set[str] = set()
        self.served_models: set[str] = set()
        self.query_batch_size = max(64, 2 * engine.concurrency)
        engine.validate = self._validate
        engine.model = engine.model or model
        self._sent_sizes: dict[str, tuple[int, int]] = {}  # stand-in URL -> (width, height) sent
        if engine.token_estimate is default_token_estimate:  # count images at the size sent
            engine.token_estimate = lambda request: default_token_estimate(request, self._sent_sizes.get)

    # -- ImageModel ---------------------------------------------------------------------------
    def view(self, height: int, width: int) -> ImageView:
        return ImageView.full(height, width, self.resolution)

    def resolve_target(self, target, image=None) -> Target:
        if target is None or not str(target).strip():
            raise InputError(f"model {self.name} needs a free-text target, e.g. --target \"espresso\"")
        return Target(None, str(target).strip())

    def score_fn(self, target: Target, kind: str = "logprob"):
        if kind not in ("logprob", "prob"):
            raise ValueError(f"unknown score kind {kind!r} (logprob or prob)")
        label = target.label

        def fn(images: np.ndarray) -> np.ndarray:
            images = np.asarray(images)
            if self.scoring is None:
                self.probe(images[0], label)
            values = self.scores(images, label)
            return values if kind == "logprob" else np.exp(values)
        return fn

    # -- requests -----------------------------------------------------------------------------
    def request(self, url: str, label: str, scoring: str) -> dict:
        question = (CONFIDENCE_QUESTION if scoring == "confidence" else QUESTION).format(label=label)
        req = {"model": self.model,
               "messages": [{"role": "user", "content": [
                   {"type": "text", "text": question},
                   {"type": "image_url", "image_url": {"url": url, "detail": self.detail}}]}],
               "max_tokens": 1 if scoring != "confidence" else 4}
        if scoring == "logprob":
            req.update(temperature=0, logprobs=True, top_logprobs=self.top_logprobs)
        else:
            req.update(temperature=1.0)
        if self.seed is not None:
            req["seed"] = int(self.seed)
        return req

    def probe(self, image: np.ndarray, label: str) -> str:
        """One call: does the endpoint give first-token logprobs for image inputs? Choose scoring."""
        if self.scoring is not None and self.capabilities:
            return self.scoring
        reqs, prepare = self._requests(np.asarray(image)[None], label, "logprob")
        validate, self.engine.validate = self.engine.validate, None  # a probe may lack logprobs
        try:
            body = self.engine.map(reqs, prepare=prepare)[0].body
        finally:
            self.engine.validate = validate
        if body is None:  # dry run and not cached: counted as a request that would be sent
            self.scoring = self.scoring or "logprob"
            self.capabilities = {"probed": False, "note": "dry run: assumed logprobs are available"}
            return self.scoring
        self._note(body)
        top = _top_logprobs(body)
        caps = {"probed": True, "logprobs": top is not None, "top_logprobs": len(top) if top else 0}
        self.capabilities = caps
        if self.scoring is None:
            if top:
                self.scoring = "logprob"
            else:
                self.scoring = "confidence"
                self.warn(f"{self.name} returned no logprobs for image inputs; falling back to a verbalised "
                          f"0-100 confidence averaged over {self.samples} samples (coarse: consider a larger --sigma)")
        elif self.scoring == "logprob" and not top:
            raise ModelError(f"{self.name} returned no logprobs for image inputs; use scoring 'confidence' or 'frequency'")
        return self.scoring

    def _requests(self, images: np.ndarray, label: str, scoring: str, repeats: int = 1):
        """Requests that carry each image's content hash; ``prepare`` swaps in the PNG data URL
        (in the engine's worker threads, only for requests that are really sent)."""
        images8 = quantise(images)
        digests = [image_digest(im) for im in images8]
        by_digest = dict(zip(digests, images8))
        self._sent_sizes = {STAND_IN + d: (im.shape[1], im.shape[0]) for d, im in by_digest.items()}
        reqs = [self.request(STAND_IN + d, label, scoring) for d in digests for _ in range(repeats)]

        def prepare(req: dict) -> dict:
            text, image_part = req["messages"][0]["content"]
            url = image_part["image_url"]["url"]
            if not url.startswith(STAND_IN):
                return req
            sent = dict(req)
            sent["messages"] = [{"role": "user", "content": [text, {"type": "image_url", "image_url": {
                **image_part["image_url"], "url": png_data_url(by_digest[url[len(STAND_IN):]])}}]}]
            return sent
        return reqs, prepare

    def scores(self, images: np.ndarray, label: str) -> np.ndarray:
        scoring = self.scoring or "logprob"
        if scoring == "logprob":
            reqs, prepare = self._requests(images, label, scoring)
            responses = self.engine.map(reqs, prepare=prepare)
            if self.engine.dry_run:
                return np.zeros(len(images))
            out = []
            for r in responses:
                self._note(r.body)
                out.append(yes_logprob(_top_logprobs(r.body)))
            return np.asarray(out)
        k = self.samples
        reqs, prepare = self._requests(images, label, scoring, repeats=k)
        responses = self.engine.map(reqs, [i % k for i in range(len(reqs))], prepare=prepare)
        if self.engine.dry_run:
            return np.zeros(len(images))
        out = []
        for i in range(len(images)):
            texts = [_content(r.body) for r in responses[i * k:(i + 1) * k]]
            if scoring == "confidence":
                mean = float(np.mean([_confidence(t) for t in texts]))
                out.append(math.log((mean + 0.5) / 101.0))
            else:
                yes = sum(_is_yes(t.split()[0]) if t.split() else False for t in texts)
                out.append(math.log((yes + 0.5) / (k + 1.0)))
        for r in responses:
            self._note(r.body)
        return np.asarray(out)

    def _validate(self, request: dict, body: dict) -> None:
        """Reject (and so retry) answers that cannot be scored."""
        if request.get("logprobs"):
            if _top_logprobs(body) is None:
                raise RetryableError("the answer has no first-token top_logprobs")
        elif "0 to 100" in str(request["messages"][0]["content"][0].get("text", "")):
            if _NUMBER.search(_content(body)) is None:
                raise RetryableError("the answer has no number")

    def _note(self, body: dict | None) -> None:
        if body:
            if body.get("system_fingerprint"):
                self.fingerprints.add(str(body["system_fingerprint"]))
            if body.get("model"):
                self.served_models.add(str(body["model"]))

    # -- reporting ----------------------------------------------------------------------------
    def usage(self) -> dict:
        u = self.engine.stats.as_dict()
        u["budget"] = self.engine.budget.summary()
        return u

    def provenance(self) -> dict:
        from blackbox import __version__

        return {"model": self.model, "served_models": sorted(self.served_models),
                "system_fingerprint": sorted(self.fingerprints), "endpoint": self.engine.transport.endpoint,
                "scoring": self.scoring or self.requested_scoring, "capabilities": self.capabilities,
                "question": (CONFIDENCE_QUESTION if self.scoring == "confidence" else QUESTION),
                "resolution": self.resolution, "request_seed": self.seed, "blackbox_version": __version__}

    def close(self):
        self.engine.close()


def _top_logprobs(body: dict | None):
    try:
        top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(top, list) or not top:
        return None
    try:
        return [{"token": str(t["token"]), "logprob": float(t["logprob"])} for t in top]
    except (KeyError, TypeError, ValueError):
        return None


def _content(body: dict | None) -> str:
    try:
        return str(body["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


def _confidence(text: str) -> float:
    m = _NUMBER.search(text)
    return float(np.clip(float(m.group()), 0.0, 100.0)) if m else 50.0


def openai_vision_model(name: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                        budget=None, cache: bool = True, concurrency: int = 16, rpm: float | None = None,
                        tpm: float | None = None, timeout: float = 60.0, max_attempts: int = 6,
                        prices: str | PriceTable | None = None, dry_run: bool = False,
                        max_wait: float = 60.0, backoff: float = 0.5, **options) -> OpenAIVisionModel:
    """Build the model for ``gpt-vision`` or ``openai:<model>`` with its engine."""
    from .openai_transport import OpenAITransport

    if name in PRESETS:
        model = PRESETS[name]
    elif name.startswith("openai:") and name[len("openai:"):].strip():
        model = name[len("openai:"):].strip()
    else:
        raise InputError(f"expected gpt-vision or openai:<model>, got {name!r}")
    transport = OpenAITransport(base_url=base_url, api_key_env=api_key_env, kind="chat",
                                max_connections=max(concurrency, 8))
    engine = QueryEngine(transport, budget=budget, cache=cache,
                         concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout, max_attempts=max_attempts,
                         prices=prices, model=model, dry_run=dry_run, max_wait=max_wait, backoff=backoff)
    return OpenAIVisionModel(model, engine, name=name if name in PRESETS else None, **options)
