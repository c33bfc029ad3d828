"""What a request costs: per-model prices and a worst-case token count before the endpoint says.

The price table is user-editable (see :meth:`PriceTable.load`); the token estimate
(:func:`default_token_estimate`) is what a budget reserves for a request until the endpoint has
reported usage, and what ``--dry-run`` adds up. Images are counted with the rules of OpenAI's
vision pricing guide for each model family (:func:`image_tokens`), at the size and ``detail``
actually sent.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import os
from dataclasses import dataclass, field
from typing import Callable

from blackbox.errors import InputError
from blackbox.paths import read_json_object

# USD per million tokens (input, output), and the share of those prices two cheaper ways of
# sending bill: ``batch`` (the Batch API: every model here has it, at half price) and ``flex`` (the
# flex service tier: synchronous, slower, at the batch rate; OpenAI offers it for o3, o4-mini and
# the gpt-5 models). A model without an entry for a tier has no such discount. Edit your own copy
# of the table, see PriceTable.load.
DEFAULT_PRICES = {
    "gpt-4o": {"input": 2.50, "output": 10.00, "batch": 0.5},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60, "batch": 0.5},
    "gpt-4.1": {"input": 2.00, "output": 8.00, "batch": 0.5},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60, "batch": 0.5},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40, "batch": 0.5},
    "gpt-5": {"input": 1.25, "output": 10.00, "batch": 0.5, "flex": 0.5},
    "gpt-5-mini": {"input": 0.25, "output": 2.00, "batch": 0.5, "flex": 0.5},
    "gpt-5-nano": {"input": 0.05, "output": 0.40, "batch": 0.5, "flex": 0.5},
    "o3": {"input": 2.00, "output": 8.00, "batch": 0.5, "flex": 0.5},
    "o4-mini": {"input": 1.10, "output": 4.40, "batch": 0.5, "flex": 0.5},
}
TIERS = ("batch", "flex")  # the discounted ways of sending a price entry may name


@dataclass
class PriceTable:
    """Per-model prices in USD per million input/output tokens, with the share of them a
    discounted tier bills (``batch``, ``flex``; see :data:`DEFAULT_PRICES`).

    Loaded from the defaults, then ``prices.json`` in the user config directory
    (``platformdirs.user_config_dir('blackbox')``, or ``BLACKBOX_PRICES``), then an explicit file;
    later entries win. Format: ``{"model-name": {"input": 0.15, "output": 0.60, "batch": 0.5}}``
    (``batch`` and ``flex`` are optional)."""

    table: dict = field(default_factory=lambda: dict(DEFAULT_PRICES))
    sources: list = field(default_factory=list)

    @classmethod
    def load(cls, path: str | None = None) -> "PriceTable":
        prices = cls()
        candidates = [os.environ.get("BLACKBOX_PRICES")]
        try:
            from platformdirs import user_config_dir

            candidates.insert(0, os.path.join(user_config_dir("blackbox", appauthor=False), "prices.json"))
        except ImportError:  # pragma: no cover
            pass
        for candidate in candidates:
            if candidate and os.path.isfile(candidate):
                prices.update_from(candidate)
        if path:
            prices.update_from(path)
        return prices

    def update_from(self, path: str) -> None:
        data = read_json_object(path, "price table", "a JSON object mapping model names to "
                                "{'input': .., 'output': ..} (optionally 'batch' and 'flex' shares)")
        for name, entry in data.items():
            self.table[name] = price_entry(entry, f"price table {path}: entry {name!r}")
        self.sources.append(path)

    def price(self, model: str) -> dict | None:
        return _family(model, self.table)  # dated snapshots use their family's price

    def discount(self, model: str | None, tier: str | None) -> float | None:
        """The share of the price ``tier`` bills for ``model`` (1.0 for no tier; None when the
        model has no price or the tier is not offered for it)."""
        p = self.price(model) if model else None
        if p is None:
            return None
        return 1.0 if tier is None else p.get(tier)

    def check_tier(self, model: str, tier: str | None) -> None:
        """Refuse (one line) a service tier the table offers no rate for, for this model."""
        if tier is not None and self.discount(model, tier) is None:
            offered = sorted(name for name, entry in self.table.items() if tier in entry)
            raise InputError(f"--service-tier {tier}: the price table offers no {tier} rate for {model} (it does for "
                             f"{', '.join(offered) or 'no model'}; add \"{tier}\": 0.5 to its entry in prices.json "
                             "if your endpoint has it)")

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, tier: str | None = None) -> float | None:
        """What the tokens cost sent one by one (``tier`` None) or through ``tier``; a tier the
        model has no discount for is priced in full (a reservation must not fall short)."""
        p = self.price(model)
        if p is None:
            return None
        share = 1.0 if tier is None else p.get(tier, 1.0)
        return share * (prompt_tokens * p["input"] + completion_tokens * p["output"]) / 1e6


def price_entry(entry, where: str) -> dict:
    """One price entry checked: numeric ``input`` and ``output``, optional tier shares in [0, 1]."""
    try:
        out = {"input": float(entry["input"]), "output": float(entry["output"])}
        for tier in TIERS:
            if entry.get(tier) is not None:
                out[tier] = float(entry[tier])
    except (TypeError, KeyError, ValueError, AttributeError):
        raise InputError(f"{where} needs numeric 'input' and 'output' (and, if given, numeric "
                         f"{' and '.join(repr(t) for t in TIERS)})") from None
    if not all(math.isfinite(v) and v >= 0 for v in out.values()) or any(out.get(t, 0) > 1 for t in TIERS):
        raise InputError(f"{where}: prices must be >= 0 and a tier's share between 0 and 1")
    return out


# -- image tokens -------------------------------------------------------------------------------
# OpenAI's vision guide ("Images and vision", section "Calculating costs",
# https://platform.openai.com/docs/guides/images-vision) bills an image in one of two ways.
#
# Tiles (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1/o3, computer-use-preview, and gpt-4o-mini at a higher
# count): ``detail: low`` costs a fixed base; ``detail: high`` scales the image to fit a 2048 x 2048
# square, then so that its shortest side is 768 px, counts the 512-px tiles that cover it, and
# costs base + tiles x tile tokens. The guide's worked examples (gpt-4o): 1024 x 1024 high -> 768 x
# 768, 4 tiles, 85 + 4 x 170 = 765; 2048 x 4096 high -> 1024 x 2048 -> 768 x 1536, 6 tiles, 1105;
# 4096 x 8192 low -> 85. Stored copies of the guide quoting these: the v2ex.com thread
# (https://v2ex.com/amp/t/1044688, the guide's own text), the "Azure OpenAI Essentials" book
# (fliphtml5.com/zroi/kpmw/Azure_OpenAI_Essentials/89) and openai-hd4n6.mintlify.app/docs/guides/images.
# The guide's wording ("scale so that the shortest side is 768 px") could be read as upscaling
# small images; the calculators and community measurements stored next to it (e.g.
# community.openai.com/t/how-do-i-calculate-image-tokens-in-gpt4-vision/492318: 500 x 500 -> 1
# tile, 255 tokens) only scale down, and so do we.
#
# gpt-4o-mini is billed by the same tile rule with 2833 base and 5667 tile tokens (33x gpt-4o's,
# at 1/33 of the price per token): no stored copy of the guide's table has these two numbers; they
# are quoted from OpenAI's pricing calculator and Azure's docs in epam/ai-dial-adapter-openai#165
# and autogenhub/autogen#57. Other bases from the guide's table as the stored copies and the
# tools built on it give them (openai-vision-cost on PyPI, jamesmcroft/openai-image-token-calculator,
# xn1cklas/tokenlens#7): gpt-5 70/140; o1, o1-pro, o3 75/150; computer-use-preview 65/129.
#
# Patches (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): count the 32 x 32 patches
# covering the image; above 1536 patches, shrink it (keeping the aspect ratio) so that a whole
# number of patches covers it within 1536; the patch count (at most 1536) times a per-model
# multiplier is billed. Worked examples in the guide: 1024 x 1024 -> 32 x 32 = 1024 patches;
# 1800 x 2400 -> 4275 raw patches, shrink 0.603 -> 1086 x 1448, then 33 / 33.94 -> 1056 x 1408,
# 33 x 44 = 1452 patches. Multipliers: gpt-4.1-mini 1.62 and gpt-4.1-nano 2.46 (in the mintlify
# copy), o4-mini 1.72, gpt-5-mini 1.62, gpt-5-nano 2.46 (xn1cklas/tokenlens#7, quoting the guide).
# Disagreements: community measurements (community.openai.com/t/gpt-5-mini-image-input-token-
# calculation-discrepancy-with-official-faq-formula/1344040) bill gpt-5-mini at ~1.20 and gpt-5-nano
# at ~1.5 per patch, as OpenAI's pricing calculator does; we keep the guide's larger multipliers (a
# reservation should not fall short). Above the patch budget the bill can exceed the guide's
# formula too: 4000 x 1474 to gpt-4.1-mini gives 1449 patches by the formula (and by OpenAI's
# calculator) but was billed at the full 1536 (community.openai.com/t/vision-pricing-calculator-
# inaccurate-resizing-rounding-vs-api-costs/1281361). One calculator (a64.in) counts gpt-4.1 by
# patches; the guide and measured bills (765 + 8 tokens for a 1800 x 2400 image) put it with the
# tiles. The guide does not say whether ``detail: low`` changes the patch count; we assume not.
#
# ``detail: auto`` lets the model choose low or high; the estimate assumes high.

TILE, PATCH = "tiles", "patches"


@dataclass(frozen=True)
class ImageRule:
    """How a model family bills an image: ``tiles`` (base, tile) or ``patches`` (multiplier)."""

    kind: str
    base: int = 0
    tile: int = 0
    multiplier: float = 1.0


IMAGE_RULES = {
    "gpt-4o": ImageRule(TILE, 85, 170),
    "chatgpt-4o": ImageRule(TILE, 85, 170),
    "gpt-4o-mini": ImageRule(TILE, 2833, 5667),
    "gpt-4.1": ImageRule(TILE, 85, 170),
    "gpt-4.5": ImageRule(TILE, 85, 170),
    "gpt-4.1-mini": ImageRule(PATCH, multiplier=1.62),
    "gpt-4.1-nano": ImageRule(PATCH, multiplier=2.46),
    "gpt-5": ImageRule(TILE, 70, 140),
    "gpt-5-mini": ImageRule(PATCH, multiplier=1.62),
    "gpt-5-nano": ImageRule(PATCH, multiplier=2.46),
    "o1": ImageRule(TILE, 75, 150),
    "o3": ImageRule(TILE, 75, 150),
    "o4-mini": ImageRule(PATCH, multiplier=1.72),
    "computer-use-preview": ImageRule(TILE, 65, 129),
}
DETAILS = ("low", "high", "auto")
PATCH_SIZE, PATCH_BUDGET = 32, 1536
TILE_SIZE, TILE_FIT, TILE_SHORT_SIDE = 512, 2048, 768
UNKNOWN_MODEL_IMAGE_TOKENS = 1105  # a model with no rule: the guide's 2048 x 4096 gpt-4o example


def _family(model: str | None, table: dict):
    """The entry for ``model`` or its family (dated snapshots: "gpt-4o-2024-08-06" -> "gpt-4o")."""
    if not model:
        return None
    if model in table:
        return table[model]
    family = max((k for k in table if model.startswith(k + "-")), key=len, default=None)
    return table[family] if family else None


def image_rule(model: str | None) -> ImageRule | None:
    return _family(model, IMAGE_RULES)


def tile_count(width: int, height: int) -> int:
    """512-px tiles covering the image after the high-detail resizing (fit 2048, shortest side 768)."""
    w, h = float(width), float(height)
    if max(w, h) > TILE_FIT:
        scale = TILE_FIT / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > TILE_SHORT_SIDE:
        scale = TILE_SHORT_SIDE / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(math.floor(w) / TILE_SIZE) * math.ceil(math.floor(h) / TILE_SIZE)


def patch_count(width: int, height: int, budget: int = PATCH_BUDGET) -> int:
    """32-px patches covering the image, shrunk (aspect kept) to a whole number of patches within ``budget``."""
    def cover(w: float, h: float) -> int:
        return math.ceil(w / PATCH_SIZE - 1e-9) * math.ceil(h / PATCH_SIZE - 1e-9)

    raw = cover(width, height)
    if raw <= budget:
        return raw
    r = math.sqrt(PATCH_SIZE ** 2 * budget / (width * height))
    fw, fh = width * r / PATCH_SIZE, height * r / PATCH_SIZE  # patches per side, fractional
    r *= min(max(math.floor(fw), 1) / fw, max(math.floor(fh), 1) / fh)
    return min(cover(width * r, height * r), budget)


def image_tokens(model: str | None, width: int | None, height: int | None, detail: str = "auto") -> int:
    """Tokens OpenAI bills for one ``width x height`` image sent to ``model`` with ``detail``.

    An unknown size is counted at its worst case (a 768 x 2048 image for tiles, the full patch
    budget for patches); a model without a rule at ``UNKNOWN_MODEL_IMAGE_TOKENS``."""
    if detail not in DETAILS:
        raise InputError(f"unknown image detail {detail!r} ({', '.join(DETAILS)})")
    rule = image_rule(model)
    if rule is None:
        return UNKNOWN_MODEL_IMAGE_TOKENS
    known = bool(width and height)
    if rule.kind == PATCH:
        patches = patch_count(width, height) if known else PATCH_BUDGET
        return math.ceil(patches * rule.multiplier - 1e-9)
    if detail == "low":
        return rule.base
    tiles = tile_count(width, height) if known else tile_count(TILE_SHORT_SIDE, TILE_FIT)
    return rule.base + rule.tile * tiles


# -- requests -----------------------------------------------------------------------------------
ImageSize = Callable[[str], "tuple[int, int] | None"]
_STRUCTURE = ("model", "type", "role", "detail")  # JSON fields that are not prompt text


def data_url_size(url: str) -> tuple[int, int] | None:
    """``(width, height)`` of a base64 ``data:`` image URL (read from the header), else None."""
    head, sep, payload = url.partition(",")
    if not (url.startswith("data:image/") and sep and head.endswith(";base64")):
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(payload, validate=False))) as im:
            return im.size
    except (binascii.Error, OSError, ValueError, SyntaxError):
        return None


def max_output_tokens(request: dict) -> int:
    """The most output a request can be billed: its token limit (16 if none) times ``n``."""
    out = int(request.get("max_completion_tokens") or request.get("max_output_tokens")
              or request.get("max_tokens") or 16)
    return out * int(request.get("n") or 1)


def text_tokens(text: str) -> int:
    """A generous token count: a token per 3 ASCII characters (English averages about 4 in
    OpenAI's tokenizers) and one per other character."""
    ascii_chars = sum(1 for c in text if ord(c) < 128)
    return math.ceil(ascii_chars / 3) + (len(text) - ascii_chars)


def request_tokens(request: dict, image_size: ImageSize | None = None) -> dict:
    """The token count of a request by part: ``text``, ``images`` (list, one count per image) and
    ``output`` (the most it can be billed). ``image_size(url)`` may give the ``(width, height)`` of
    an image the request refers to by a stand-in URL; data URLs are measured from their header."""
    model = request.get("model")
    chars: list[str] = []
    images: list[int] = []

    def walk(x):
        if isinstance(x, dict):
            if x.get("type") in ("image_url", "input_image") or "image_url" in x:
                ref = x.get("image_url")
                url = ref.get("url", "") if isinstance(ref, dict) else str(ref or "")
                detail = (ref.get("detail") if isinstance(ref, dict) else None) or x.get("detail") or "auto"
                size = (image_size(url) if image_size else None) or data_url_size(url)
                images.append(image_tokens(model, *(size or (None, None)), detail=detail))
                return
            for k, v in x.items():
                if k not in _STRUCTURE:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            chars.append(x)

    messages = request.get("messages")
    walk(messages if messages is not None else request.get("prompt", request.get("input", "")))
    # chat framing: 3 tokens per message and 3 priming the reply (OpenAI cookbook, "How to count
    # tokens with tiktoken", num_tokens_from_messages); other requests keep 16 tokens of slack
    framing = 3 * len(messages) + 3 if isinstance(messages, list) else 16
    return {"text": framing + sum(text_tokens(c) for c in chars), "images": images,
            "output": max_output_tokens(request)}


def default_token_estimate(request: dict, image_size: ImageSize | None = None) -> int:
    """A generous worst-case token count for a request: text, images (the guide's rules for the
    request's model at the size and detail sent, see :func:`image_tokens`) and the most output."""
    parts = request_tokens(request, image_size)
    return parts["text"] + sum(parts["images"]) + parts["output"]
