"""What a request costs: per-model prices and a worst-case token count before the endpoint says.

The price table is user-editable (see :meth:`PriceTable.load`); the token estimate is what a
budget reserves for a request until the endpoint has reported usage.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from blackbox.errors import InputError

DEFAULT_PRICES = {  # USD per million tokens (input, output); edit your own copy, see PriceTable.load
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
}


@dataclass
class PriceTable:
    """Per-model prices in USD per million input/output tokens.

    Loaded from the defaults, then ``prices.json`` in the user config directory
    (``platformdirs.user_config_dir('blackbox')``, or ``BLACKBOX_PRICES``), then an explicit file;
    later entries win. Format: ``{"model-name": {"input": 0.15, "output": 0.60}}``."""

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
            if not os.path.isfile(path):
                raise InputError(f"price table not found: {path}")
            prices.update_from(path)
        return prices

    def update_from(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read price table {path}: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"price table {path} must map model names to {{'input': .., 'output': ..}}")
        for name, entry in data.items():
            try:
                self.table[name] = {"input": float(entry["input"]), "output": float(entry["output"])}
            except (TypeError, KeyError, ValueError):
                raise InputError(f"price table {path}: entry {name!r} needs numeric 'input' and 'output'") from None
        self.sources.append(path)

    def price(self, model: str) -> dict | None:
        if model in self.table:
            return self.table[model]
        # dated snapshots ("gpt-4o-2024-08-06") use their family's price
        family = max((k for k in self.table if model.startswith(k + "-")), key=len, default=None)
        return self.table.get(family) if family else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        p = self.price(model)
        if p is None:
            return None
        return (prompt_tokens * p["input"] + completion_tokens * p["output"]) / 1e6


def default_token_estimate(request: dict) -> int:
    """A generous worst-case token count for a request: text/3 + images + max output tokens."""
    text_chars, images = 0, 0

    def walk(x):
        nonlocal text_chars, images
        if isinstance(x, dict):
            if x.get("type") == "image_url" or "image_url" in x:
                images += 1
                return
            for k, v in x.items():
                if k not in ("model",):
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            text_chars += len(x)

    walk(request.get("messages", request.get("prompt", request.get("input", ""))))
    out = int(request.get("max_completion_tokens") or request.get("max_tokens") or 16)
    n = int(request.get("n") or 1)
    # OpenAI bills at most 85 + 170 * 4 = 765 tokens for an image <= 768 px; 1105 covers 1024 px
    return 16 + text_chars // 3 + 1105 * images + out * n
