"""What the core needs from an image model: a view, a target and a scalar per image.

Adapters (``blackbox.adapters``) implement :class:`ImageModel`; the core never imports them.
:class:`Classifier` holds what every class-probability model shares (targets, top-k, scores), so
an adapter only supplies ``log_probs(images)``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .images import ImageView


@dataclass(frozen=True)
class Target:
    """What a saliency map explains: a class index (None for free-text targets) and a label."""

    index: int | None
    label: str


class ImageModel:
    """An image model as the pipeline sees it. Images are ``(n, H, W, 3)`` float32 arrays in [0, 1].

    A model says what it looks at (:meth:`view`), what a target is (:meth:`resolve_target`) and
    gives query functions (:meth:`score_fn`). The rest is what a paid endpoint adds, with the
    defaults of a local model that costs nothing: a capability check paid before the map
    (:meth:`probe`), how many images a number of billable requests pays for
    (:meth:`queries_within`), what it spent and who answered (:meth:`usage`, :meth:`provenance`),
    and :meth:`close`. A paid endpoint with a batch interface (half price, answers later) also
    collects requests instead of sending them (:meth:`collect`, :meth:`stage_gate`,
    :meth:`send_batch`; see :func:`blackbox.saliency.pipeline.explain_image`). A model object that
    does not subclass this class is used through :func:`as_image_model`, with those defaults."""

    name = "model"
    query_batch_size = 32   # images per call to a query function
    paid = False            # each query is a billable request
    requests_per_query = 1  # billable requests one image costs
    budget = None           # the Budget a paid model's own meter counts on (None: the caller's)

    def view(self, height: int, width: int) -> ImageView:
        """The region and working size this model looks at, for an ``height x width`` image."""
        raise NotImplementedError

    def resolve_target(self, target: str | int | None, image: np.ndarray) -> Target:
        """Turn user input (label text, class index or None for the top class) into a Target."""
        raise NotImplementedError

    def score_fn(self, target: Target, kind: str = "logprob") -> Callable[[np.ndarray], np.ndarray]:
        """A query function: images in, one score per image (``logprob`` or ``prob``) out."""
        raise NotImplementedError

    def top_k(self, image: np.ndarray, k: int = 5) -> list[tuple[str, float, int]]:
        """The ``k`` likeliest classes ``(label, probability, index)``; none for a model without classes."""
        return []

    def probe(self, image: np.ndarray, target: Target) -> None:
        """Find out, before the map, how the endpoint can be scored (nothing to do locally)."""

    def queries_within(self, requests: int) -> int:
        """How many images ``requests`` billable requests pay for, after :meth:`probe`."""
        return int(requests)

    def usage(self) -> dict | None:
        """What the model has spent (requests, cache hits, tokens, money); None when free."""
        return None

    def provenance(self) -> dict | None:
        """Which model and build answered; None for a local model."""
        return None

    def collect(self, on: bool = True) -> None:
        """Batch mode on or off: requests not answered yet are collected (answered by
        placeholders) until :meth:`send_batch`, instead of being sent one by one. A model without
        a batch interface refuses to turn it on."""
        if on:
            raise InputError(f"{self.name} has no batch interface: batch mode is for paid endpoints "
                             "that offer one (OpenAI's Batch API)")

    def stage_gate(self) -> Callable[[], None] | None:
        """A check for the stage boundaries of one run, made when the run starts: in batch mode it
        raises :class:`~blackbox.queries.StagePending` once the run has used placeholders; None
        when there is nothing to check (a model answering at once)."""
        return None

    def send_batch(self, progress: bool = True) -> int:
        """Send the requests collected so far as a batch, wait for it and keep its answers;
        returns how many requests were waiting (0: none)."""
        return 0

    def close(self) -> None:
        """Release connections and threads."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Plain(ImageModel):
    """Any object with ``view``, ``resolve_target`` and ``score_fn`` as an :class:`ImageModel`."""

    def __init__(self, model):
        self.model = model
        self.name = getattr(model, "name", type(model).__name__)

    def view(self, height, width):
        return self.model.view(height, width)

    def resolve_target(self, target, image):
        return self.model.resolve_target(target, image)

    def score_fn(self, target, kind="logprob"):
        return self.model.score_fn(target, kind)


def as_image_model(model) -> ImageModel:
    """``model`` itself if it is an :class:`ImageModel`, else the object wrapped with the defaults."""
    if isinstance(model, ImageModel):
        return model
    for needed in ("view", "resolve_target", "score_fn"):
        if not callable(getattr(model, needed, None)):
            raise InputError(f"an image model needs view(), resolve_target() and score_fn(); "
                             f"{type(model).__name__} has no {needed}()")
    return _Plain(model)


class Classifier(ImageModel):
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
