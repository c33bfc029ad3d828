"""Vision chat models (GPT-vision, any OpenAI-compatible server) as image query functions.

The question is closed: "Is there a {target} in this image? Answer Yes or No." The default score
(``logodds``) is log P(Yes) - log P(No), read from the first answer token's ``top_logprobs`` and
summed over the case and whitespace variants of each word (" Yes", "YES", "no." ...). Log-odds do
not saturate when the model is sure (log P(Yes) sits near 0 for every image that shows the
target). A side missing from the top-k is bounded by the smallest listed probability and by the
mass left over (the floor). ``logprob`` keeps log P(Yes) alone.

Capability probe: before spending on the map, one request (the first image, with ``logprobs`` and
``top_logprobs``) shows whether the endpoint returns logprobs for image inputs. It counts as one
billable request. Without logprobs a fallback is used, with a warning; it costs ``samples``
requests per image (``--queries`` caps them all):

* ``confidence`` (default fallback): ask for a 0-100 confidence, ``samples`` times (replicas at
  temperature 1), score = log((mean + 0.5) / 101); coarse, so use a larger sigma;
* ``frequency``: ask the Yes/No question ``samples`` times at temperature 1, score =
  log((yes + 0.5) / (samples + 1)).

What the endpoint looks at comes from its model card when it describes itself (``blackbox
serve`` does: a centre crop at 224, like the embedded classifier), else the whole image, longer
side 512 (``--resolution`` changes the size).
"""
from __future__ import annotations

import math
import re
import sys
from typing import Callable

import numpy as np

from blackbox.errors import InputError, ModelError
from blackbox.models import Target
from blackbox.queries import KeyedInputs

from .engine import QueryEngine
from .image_model import RemoteImageModel, ViewRule, stand_in
from .outcomes import unusable
from .pricing import PriceTable, price_entry

PRESETS = {"gpt-vision": "gpt-4o-mini"}
QUESTION = "Is there a {label} in this image? Answer Yes or No."
CONFIDENCE_QUESTION = ("Is there a {label} in this image? Give your confidence that there is, as a number "
                       "from 0 to 100. Answer with the number only.")
SCORINGS = ("auto", "logodds", "logprob", "confidence", "frequency")
LOGPROB_SCORINGS = ("logodds", "logprob")
FLOOR = 1e-12  # the smallest probability a missing answer word is given
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _word(token: str) -> str:
    return token.strip().strip(".!,:;\"'").lower()


def yes_no_logprobs(top: list[dict]) -> tuple[float, float]:
    """(log P(yes), log P(no)) from a first-token ``top_logprobs`` list, each summed over the
    case/whitespace variants; a word not listed is bounded by the smallest listed probability and
    by the mass left over (never below ``FLOOR``)."""
    if not top:
        raise ValueError("empty top_logprobs")
    probs = [(_word(t["token"]), math.exp(t["logprob"])) for t in top]
    smallest = min(p for _, p in probs)
    rest = max(1.0 - sum(p for _, p in probs), 0.0)
    bound = min(smallest, rest) if rest > 0 else smallest

    def log_p(word: str) -> float:
        p = sum(q for w, q in probs if w == word)
        return math.log(min(max(p if p > 0 else bound, FLOOR), 1.0))
    return log_p("yes"), log_p("no")


def yes_logprob(top: list[dict]) -> float:
    """log P(yes) alone (see :func:`yes_no_logprobs`)."""
    return yes_no_logprobs(top)[0]


def yes_no_logodds(top: list[dict]) -> float:
    """log P(yes) - log P(no) (see :func:`yes_no_logprobs`)."""
    log_yes, log_no = yes_no_logprobs(top)
    return log_yes - log_no


def _warn(message: str) -> None:
    print(f"blackbox: warning: {message}", file=sys.stderr, flush=True)


class OpenAIVisionModel(RemoteImageModel):
    """An OpenAI-compatible vision chat model as an :class:`~blackbox.models.ImageModel`.

    ``engine`` carries cache, budget, retries and concurrency (see ``engine.py``)."""

    def __init__(self, model: str, engine: QueryEngine, *, view_rule: ViewRule | None = None,
                 resolution: int | None = None, card: dict | None = None, scoring: str = "auto",
                 top_logprobs: int = 5, samples: int = 5, detail: str = "auto", seed: int | None = 0,
                 name: str | None = None, warn: Callable[[str], None] = _warn):
        if scoring not in SCORINGS:
            raise InputError(f"unknown scoring {scoring!r} ({', '.join(SCORINGS)})")
        if samples < 1:
            raise InputError(f"samples must be >= 1, got {samples}")
        if view_rule is None:
            view_rule = ViewRule.parse((card or {}).get("input_view"), f"the model card of {model}", resolution)
        super().__init__(engine, name or f"openai:{model}", view_rule, card)
        self.model = model
        self.requested_scoring = scoring
        self.scoring = None if scoring == "auto" else scoring
        self.top_logprobs = int(top_logprobs)
        self.samples = int(samples)
        self.detail = detail
        self.seed = seed
        self.warn = warn
        self.capabilities: dict = {}
        engine.model = engine.model or model

    @property
    def probe_requests(self) -> int:
        return 0 if self.requested_scoring in ("confidence", "frequency") else 1

    @property
    def requests_per_query(self) -> int:
        return self.samples if self.scoring in ("confidence", "frequency") else 1

    def as_probability(self, values: np.ndarray) -> np.ndarray:
        if (self.scoring or "logodds") == "logodds":
            return 1.0 / (1.0 + np.exp(-values))
        return np.exp(values)

    # -- requests -----------------------------------------------------------------------------
    def request(self, url: str, label: str, scoring: str) -> dict:
        question = (CONFIDENCE_QUESTION if scoring == "confidence" else QUESTION).format(label=label)
        req = {"model": self.model,
               "messages": [{"role": "user", "content": [
                   {"type": "text", "text": question},
                   {"type": "image_url", "image_url": {"url": url, "detail": self.detail}}]}],
               "max_tokens": 1 if scoring != "confidence" else 4}
        if scoring in LOGPROB_SCORINGS:
            req.update(temperature=0, logprobs=True, top_logprobs=self.top_logprobs)
        else:
            req.update(temperature=1.0)
        if self.seed is not None:
            req["seed"] = int(self.seed)
        return req

    def _requests(self, images: np.ndarray, label: str, scoring: str, repeats: int = 1):
        return self.encoded_requests(images, lambda d: self.request(stand_in(d), label, scoring), repeats)

    def probe(self, image: np.ndarray, target: Target) -> None:
        self.choose_scoring(image, target.label)

    def choose_scoring(self, image: np.ndarray, label: str) -> str:
        """One call: does the endpoint give first-token logprobs for image inputs? Choose scoring."""
        if self.capabilities or self.scoring in ("confidence", "frequency"):
            return self.scoring
        reqs, prepare = self._requests(np.asarray(image)[None], label, "logodds")
        # at once even in batch mode: the requests that follow are built from what it finds
        body = self.engine.map(reqs, prepare=prepare, validate=_validate_probe, sync=True)[0].body
        if body is None:  # dry run and not cached: counted as a request that would be sent
            self.scoring = self.scoring or "logodds"
            self.capabilities = {"probed": False, "note": "dry run: assumed logprobs are available"}
            return self.scoring
        self.note(body)
        top = _top_logprobs(body)
        self.capabilities = {"probed": True, "logprobs": top is not None, "top_logprobs": len(top) if top else 0}
        if self.scoring is None:
            if top:
                self.scoring = "logodds"
            else:
                self.scoring = "confidence"
                self.warn(f"{self.name} returned no logprobs for image inputs; falling back to a verbalised "
                          f"0-100 confidence averaged over {self.samples} samples per image (each a paid "
                          "request; coarse: consider a larger --sigma)")
        elif not top:
            raise ModelError(f"{self.name} returned no logprobs for image inputs; use scoring 'confidence' or 'frequency'")
        return self.scoring

    def scores(self, images, label: str) -> np.ndarray:
        if self.scoring is None:
            self.choose_scoring(images.build([0])[0] if isinstance(images, KeyedInputs) else images[0], label)
        scoring = self.scoring
        k = 1 if scoring in LOGPROB_SCORINGS else self.samples
        responses = self.query(images, lambda d: self.request(stand_in(d), label, scoring), self._validate, k)
        if any(r.body is None for r in responses):  # a dry run, or requests collected for a batch
            return np.zeros(len(images))
        for r in responses:
            self.note(r.body)
        if k == 1:
            return np.asarray([self._score(r.body, scoring) for r in responses])
        out = []
        for i in range(len(images)):
            texts = [_content(r.body) for r in responses[i * k:(i + 1) * k]]
            if scoring == "confidence":
                mean = float(np.mean([_confidence(t) for t in texts]))
                out.append(math.log((mean + 0.5) / 101.0))
            else:
                yes = sum(_word(t.split()[0]) == "yes" if t.split() else False for t in texts)
                out.append(math.log((yes + 0.5) / (k + 1.0)))
        return np.asarray(out)

    @staticmethod
    def _score(body: dict | None, scoring: str) -> float:
        top = _top_logprobs(body)
        if top is None:
            raise unusable("the answer has no usable first-token top_logprobs")
        return yes_no_logodds(top) if scoring == "logodds" else yes_logprob(top)

    def _validate(self, request: dict, body: dict) -> None:
        """Reject (so retry, and never cache) answers that cannot be scored."""
        if request.get("logprobs"):
            self._score(body, "logodds")
        elif "0 to 100" in str(request["messages"][0]["content"][0].get("text", "")):
            if _NUMBER.search(_content(body)) is None:
                raise unusable("the answer has no number")

    def _provenance_extra(self) -> dict:
        return {"requested_model": self.model, "scoring": self.scoring or self.requested_scoring,
                "capabilities": self.capabilities, "request_seed": self.seed,
                "question": (CONFIDENCE_QUESTION if self.scoring == "confidence" else QUESTION)}


def _validate_probe(request: dict, body: dict) -> None:
    """A probe answer may lack logprobs (that is what it finds out), but listed ones must be valid."""
    try:
        listed = body["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise unusable("the answer has no choices") from None
    if listed and _top_logprobs(body) is None:
        raise unusable("the answer lists logprobs that are not valid log-probabilities")


def _top_logprobs(body: dict | None):
    """The first token's alternatives as ``[{"token", "logprob"}]``, or None when absent or when
    any value is not a log-probability (finite and <= 0)."""
    try:
        top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(top, list) or not top:
        return None
    try:
        out = [{"token": str(t["token"]), "logprob": float(t["logprob"])} for t in top]
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(t["logprob"]) and t["logprob"] <= 1e-6 for t in out):
        return None
    return out


def _content(body: dict | None) -> str:
    try:
        return str(body["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


def _confidence(text: str) -> float:
    m = _NUMBER.search(text)
    value = float(m.group()) if m else 50.0
    return float(np.clip(value, 0.0, 100.0)) if math.isfinite(value) else 50.0


def openai_vision_model(name: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                        budget=None, cache: bool = True, concurrency: int = 16, rpm: float | None = None,
                        tpm: float | None = None, timeout: float = 60.0, max_attempts: int = 6,
                        prices: str | PriceTable | None = None, dry_run: bool = False,
                        max_wait: float = 60.0, backoff: float = 0.5, service_tier: str | None = None,
                        **options) -> OpenAIVisionModel:
    """Build the model for ``gpt-vision`` or ``openai:<model>`` with its engine. The endpoint's
    model card (if it has one) sets the view and, when the price table has none, the price.
    ``service_tier="flex"`` sends every request at the flex tier (priced at its share; only for a
    model the price table offers it for)."""
    from .openai_transport import OpenAITransport, is_loopback

    if name in PRESETS:
        model = PRESETS[name]
    elif name.startswith("openai:") and name[len("openai:"):].strip():
        model = name[len("openai:"):].strip()
    else:
        raise InputError(f"expected gpt-vision or openai:<model>, got {name!r}")
    service_tier = None if service_tier == "default" else service_tier
    transport = OpenAITransport(base_url=base_url, api_key_env=api_key_env, kind="chat",
                                max_connections=max(concurrency, 8), require_key=not dry_run,
                                service_tier=service_tier)
    # a dry run without a key asks a remote API nothing (its model card would only answer 401)
    card = (transport.model_card(model, timeout=min(timeout, 10.0))
            if transport.has_key or is_loopback(transport.base_url) else None)
    table = prices if isinstance(prices, PriceTable) else PriceTable.load(prices)
    described = _card_price((card or {}).get("pricing"))
    if described is not None and table.price(model) is None:
        table.table[model] = described
    try:
        table.check_tier(model, service_tier)
    except InputError:
        transport.close()
        raise
    engine = QueryEngine(transport, budget=budget, cache=cache,
                         concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout, max_attempts=max_attempts,
                         prices=table, model=model, dry_run=dry_run, max_wait=max_wait, backoff=backoff)
    return OpenAIVisionModel(model, engine, card=card, name=name if name in PRESETS else None, **options)


def _card_price(pricing) -> dict | None:
    """``{"input": .., "output": ..}`` in USD per million tokens from a model card (with its
    ``batch``/``flex`` shares when it gives them), if valid."""
    try:
        return price_entry(pricing, "the model card's pricing")
    except InputError:
        return None

