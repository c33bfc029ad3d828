"""A model *description* that travels to worker processes and Ray nodes, where it is rebuilt.

Models hold sessions, HTTP clients and thread pools, so they are never pickled: a worker gets a
:class:`ModelSpec` (the registry name plus plain options) and builds its own copy, with the
shared budget, the shared query cache and its share of the rate limits handed in by the executor.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from blackbox.errors import InputError

from .registry import DEFAULT_MODEL, load_image_model

_RATE_OPTIONS = ("rpm", "tpm")


def is_remote(name: str) -> bool:
    return name == "gpt-vision" or name.startswith(("openai:", "http:"))


@dataclass(frozen=True)
class ModelSpec:
    """How to build an image model: ``load_image_model(name, **options)``.

    ``build(budget=, cache=, share=, threads=)`` is what executors call in each worker:
    remote models get the shared ``budget`` and ``cache`` and ``1/share`` of the concurrency and
    of the rpm/tpm limits (so ``share`` workers together stay within them); local models get
    ``threads`` intra-op threads."""

    name: str = DEFAULT_MODEL
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if "budget" in self.options:
            raise InputError("a model description carries no budget: pass it to explain_many(budget=...)")

    @property
    def remote(self) -> bool:
        return is_remote(self.name)

    def build(self, *, budget=None, cache=None, share: int = 1, threads: int | None = None):
        options = dict(self.options)
        if self.remote:
            options["budget"] = budget
            if options.get("cache", True) is not False:
                options["cache"] = cache if cache is not None else self.make_cache()
            share = max(1, int(share))
            options["concurrency"] = max(1, int(options.get("concurrency", 16)) // share)
            for key in _RATE_OPTIONS:
                if options.get(key):
                    options[key] = options[key] / share
        elif threads:
            options["threads"] = threads
        return load_image_model(self.name, **options)

    def make_cache(self):
        """The query cache of a remote model (None for local models or ``cache=False``)."""
        cache = self.options.get("cache", True)
        if not self.remote or cache is False:
            return None
        from .remote.cache import ResponseCache

        return ResponseCache(None if cache is True else cache)

    def describe(self) -> dict:
        """What identifies the model's answers (for resuming a results folder); no secrets."""
        keep = ("base_url", "resolution", "scoring", "seed", "detail", "backend")
        return {"model": self.name, **{k: self.options[k] for k in keep if self.options.get(k) is not None}}


def model_spec(name: str = DEFAULT_MODEL, **options) -> ModelSpec:
    """Describe a model for :func:`blackbox.explain_many` with several workers.

    ``name`` and ``options`` are those of :func:`~blackbox.adapters.load_image_model` (minus the
    budget, which ``explain_many`` shares). Paths are made absolute and the query cache is pinned
    to this machine's cache file (``cache=True``) or to the file given (``cache="path.sqlite"``),
    so every worker reads and writes the same one."""
    options = dict(options)
    if name.startswith("http:"):
        name = "http:" + os.path.abspath(name[len("http:"):])
    if is_remote(name) and options.get("cache", True) is not False:
        from .remote.cache import default_cache_path

        cache = options.get("cache", True)
        options["cache"] = os.path.abspath(default_cache_path() if cache is True else cache)
    return ModelSpec(name, options)
