"""What the core needs from an image model: a view, a target and a scalar per image.

Adapters (``blackbox.adapters``) implement :class:`ImageModel`; the core never imports them.
:class:`Classifier` holds what every class-probability model shares (targets, top-k, scores), so
an adapter only supplies ``log_probs(images)``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import InputError
from .images import ImageView


@dataclass(frozen=True)
class Target:
    """What a saliency map explains: a class index (None for free-text targets) and a label."""

    index: int | None
    label: str


@runtime_checkable
class ImageModel(Protocol):
    """An image model as the core sees it. Images are ``(n, H, W, 3)`` float32 arrays in [0, 1]."""

    name: str

    def view(self, height: int, width: int) -> ImageView:
        """The region and working size this model looks at, for an ``height x width`` image."""

    def resolve_target(self, target: str | int | None, image: np.ndarray) -> Target:
        """Turn user input (label text, class index or None for the top class) into a Target."""

    def score_fn(self, target: Target, kind: str = "logprob") -> Callable[[np.ndarray], np.ndarray]:
        """A query function: images in, one score per image (``logprob`` or ``prob``) out."""


class Classifier:
    """Shared behaviour of class-probability models; subclasses implement :meth:`log_probs`."""

    name = "classifier"
    input_size = 224
    crop_fraction = 224 / 256

    def __init__(self, labels: Sequence[str], synonyms: Sequence[Sequence[str]] | None = None):
        self.labels = list(labels)
        self.synonyms = [list(s) for s in synonyms] if synonyms is not None else [[l] for l in self.labels]

    # -- to implement -------------------------------------------------------------------
    def log_probs(self, images: np.ndarray) -> np.ndarray:
        """``(n, H, W, 3)`` working images -> ``(n, classes)`` log-probabilities."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def view(self, height: int, width: int) -> ImageView:
        return ImageView.center_crop(height, width, self.input_size, self.crop_fraction)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.exp(self.log_probs(images))

    def top_k(self, image: np.ndarray, k: int = 5) -> list[tuple[str, float, int]]:
        probs = self.probabilities(image[None])[0]
        order = np.argsort(-probs)[:k]
        return [(self.labels[i], float(probs[i]), int(i)) for i in order]

    def score_fn(self, target: Target, kind: str = "logprob") -> Callable[[np.ndarray], np.ndarray]:
        if target.index is None:
            raise InputError("a classifier needs a class target")
        index = target.index
        if kind == "logprob":
            return lambda images: self.log_probs(images)[:, index]
        if kind == "prob":
            return lambda images: np.exp(self.log_probs(images)[:, index])
        raise ValueError(f"unknown score kind {kind!r} (logprob or prob)")

    def resolve_target(self, target: str | int | None, image: np.ndarray | None = None) -> Target:
        n = len(self.labels)
        if target is None or (isinstance(target, str) and target.strip() == ""):
            if image is None:
                raise InputError("no target given and no image to take the top class from")
            label, _, index = self.top_k(image, 1)[0]
            return Target(index, label)
        if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.strip().lstrip("-").isdigit()):
            index = int(target)
            if not 0 <= index < n:
                raise InputError(f"class index {index} is out of range (0..{n - 1})")
            return Target(index, self.labels[index])
        text = target.strip().lower()
        exact = [i for i, names in enumerate(self.synonyms) if text in (s.lower() for s in names)]
        exact = exact or [i for i, l in enumerate(self.labels) if l.lower() == text]
        if not exact:
            exact = [i for i, l in enumerate(self.labels) if text in l.lower()]
            if len(exact) > 1:
                shown = ", ".join(repr(self.labels[i]) for i in exact[:6])
                raise InputError(f"target {target!r} matches several classes ({shown}); be more specific or give an index")
        if not exact:
            close = difflib.get_close_matches(text, [l.lower() for l in self.labels], n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise InputError(f"unknown target {target!r} for model {self.name}{hint}")
        if len(exact) > 1 and image is not None:  # repeated names (e.g. two 'missile' classes)
            probs = self.probabilities(image[None])[0]
            exact.sort(key=lambda i: -probs[i])
        return Target(exact[0], self.labels[exact[0]])
