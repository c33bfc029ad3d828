"""What every remote image model shares: its view, targets, requests keyed by image digests,
usage and provenance. :class:`~.openai_vision.OpenAIVisionModel` and
:class:`~.http_model.HTTPImageModel` only say how a request is built and how an answer is scored.

Requests carry a content hash of each image (``blackbox-image-sha256:<hex>``) instead of the
image; the cache key is computed from that, and ``prepare`` swaps in the PNG only for requests
that are really sent (in the engine's worker threads). Images are 8-bit quantised first and PNG
is lossless, so what is sent is exactly what the estimator weighted.

How an endpoint looks at an image (:class:`ViewRule`) comes from what the endpoint says about
itself (its model card: ``GET /models/{model}`` with an ``input_view`` field, as ``blackbox
serve`` gives), else from the user's ``--resolution``, else the whole image at 512 px.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from blackbox.errors import InputError
from blackbox.images import ImageView
from blackbox.models import ImageModel, Target
from blackbox.queries import KeyedInputs

from .engine import QueryEngine
from .pricing import default_token_estimate

DEFAULT_RESOLUTION = 512
MAX_RESOLUTION = 4096
VIEW_KINDS = ("full", "center_crop")
STAND_IN = "blackbox-image-sha256:"
_STAND_IN_RE = re.compile(re.escape(STAND_IN) + r"(b64:)?([0-9a-f]{64})")


def quantise(images: np.ndarray) -> np.ndarray:
    """[0, 1] float images -> uint8 (what is sent; the saliency spaces already render on this grid)."""
    if images.dtype == np.uint8:
        return images
    x = np.multiply(images, np.float32(255.0), dtype=np.float32)
    x += np.float32(0.5)  # round half up; values rendered on the 8-bit grid are never at .5
    np.clip(x, 0.0, 255.0, out=x)
    return x.astype(np.uint8)


def image_digest(image8: np.ndarray) -> str:
    """A content hash of an 8-bit image (the cache key holds this, not the encoded image)."""
    h = hashlib.sha256(str(image8.shape).encode())
    h.update(np.ascontiguousarray(image8).tobytes())
    return h.hexdigest()


def png_data_url(image: np.ndarray) -> str:
    """An ``(H, W, 3)`` image ([0, 1] float or uint8) as a PNG data URL (8 bits, lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(quantise(np.asarray(image))).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def stand_in(digest: str, bare_base64: bool = False) -> str:
    """The placeholder a request carries for an image: its digest (``b64:``: a bare base64 PNG)."""
    return STAND_IN + ("b64:" if bare_base64 else "") + digest


@dataclass(frozen=True)
class ViewRule:
    """How an endpoint looks at an image: the whole image with its longer side at ``size``
    (``full``), or the central square (shorter side x ``crop_fraction``) at ``size`` x ``size``
    (``center_crop``, as ImageNet classifiers do)."""

    kind: str = "full"
    size: int = DEFAULT_RESOLUTION
    crop_fraction: float = 224 / 256

    def __post_init__(self):
        if self.kind not in VIEW_KINDS:
            raise InputError(f"unknown view {self.kind!r} ({', '.join(VIEW_KINDS)})")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_RESOLUTION:
            raise InputError(f"the resolution must be a whole number from 1 to {MAX_RESOLUTION}, got {self.size!r}")
        if not 0 < float(self.crop_fraction) <= 1:
            raise InputError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")

    def view(self, height: int, width: int) -> ImageView:
        if self.kind == "center_crop":
            return ImageView.center_crop(height, width, self.size, float(self.crop_fraction))
        return ImageView.full(height, width, self.size)

    @classmethod
    def parse(cls, described, where: str, resolution: int | None = None) -> "ViewRule":
        """A rule from a description (``{"kind", "size", "crop_fraction"}``, e.g. a model card's
        ``input_view`` or a spec's fields); ``resolution`` (the user's) overrides the size."""
        described = described if isinstance(described, dict) else {}
        size = resolution if resolution is not None else described.get("size", DEFAULT_RESOLUTION)
        try:
            return cls(str(described.get("kind", "full")), _whole(size),
                       float(described.get("crop_fraction", 224 / 256)))
        except (TypeError, ValueError, InputError) as exc:
            raise InputError(f"{'--resolution' if resolution is not None else where}: {exc}") from None


def _whole(value) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"the resolution must be a whole number, got {value!r}")


class RemoteImageModel(ImageModel):
    """An endpoint as an :class:`~blackbox.models.ImageModel` over a :class:`QueryEngine`.

    Subclasses implement :meth:`scores` (images -> one float each, through the engine) and may
    add :meth:`_provenance_extra`. The query functions this model gives carry the engine's
    budget (``fn.budget``): the engine counts every billable request, a QueryRunner adopts it."""

    probe_requests = 0  # requests spent before the first query (a capability probe)
    paid = True

    def __init__(self, engine: QueryEngine, name: str, view_rule: ViewRule, card: dict | None = None):
        self.engine = engine
        self.name = name
        self.view_rule = view_rule
        self.card = card
        self.fingerprints: set[str] = set()
        self.served_models: set[str] = set()
        self.query_batch_size = max(64, 2 * engine.concurrency)
        self._sent_sizes: dict[str, tuple[int, int]] = {}  # digest -> (width, height) of the last batch
        if engine.token_estimate is default_token_estimate:  # price images at the size sent
            engine.token_estimate = lambda request: default_token_estimate(request, self.sent_size)

    def sent_size(self, url: str) -> tuple[int, int] | None:
        """``(width, height)`` of an image in the batch being sent, from its placeholder."""
        m = _STAND_IN_RE.search(url)
        return self._sent_sizes.get(m.group(2)) if m else None

    @property
    def budget(self):
        return self.engine.budget

    @property
    def resolution(self) -> int:
        return self.view_rule.size

    @property
    def requests_per_query(self) -> int:
        """Billable requests one image costs (more than one for sampled scores)."""
        return 1

    def queries_within(self, requests: int) -> int:
        """How many images ``requests`` billable requests pay for (after the probe), whatever
        the cache holds, so a rerun asks for the same images."""
        return max(0, (int(requests) - self.probe_requests) // self.requests_per_query)

    # -- ImageModel -----------------------------------------------------------------------------
    def view(self, height: int, width: int) -> ImageView:
        return self.view_rule.view(height, width)

    def resolve_target(self, target, image=None) -> Target:
        if target is None or not str(target).strip():
            raise InputError(f"model {self.name} needs a free-text target, e.g. --target \"espresso\"")
        return Target(None, str(target).strip())

    def score_fn(self, target: Target, kind: str = "logprob") -> Callable[[np.ndarray], np.ndarray]:
        if kind not in ("logprob", "prob"):
            raise ValueError(f"unknown score kind {kind!r} (logprob or prob)")
        label = target.label

        def fn(images: np.ndarray | KeyedInputs) -> np.ndarray:
            values = self.scores(images if isinstance(images, KeyedInputs) else np.asarray(images), label)
            return values if kind == "logprob" else self.as_probability(values)
        fn.budget = self.engine.budget  # metered: the engine counts the requests
        fn.keyed = True  # takes KeyedInputs: images are rendered only for requests really sent
        return fn

    def scores(self, images: np.ndarray, label: str) -> np.ndarray:
        raise NotImplementedError

    def as_probability(self, values: np.ndarray) -> np.ndarray:
        return np.exp(values)

    # -- requests -------------------------------------------------------------------------------
    def query(self, images: np.ndarray | KeyedInputs, build: Callable[[str], dict], validate,
              repeats: int = 1) -> list:
        """The engine's answers for ``build(digest) -> request`` per image, ``repeats`` replicas
        each. Keyed inputs are looked up by their keys first (a cached rerun renders nothing);
        only the images not answered yet are rendered, and they are asked by pixel content (two
        inputs that render alike are paid once), then remembered under their keys too."""
        replicas = [i % repeats for i in range(len(images) * repeats)]
        if not isinstance(images, KeyedInputs):
            requests, prepare = self.encoded_requests(images, build, repeats)
            return self.engine.map(requests, replicas, prepare=prepare, validate=validate)
        aliases = [build(key) for key in images.keys for _ in range(repeats)]
        answers = self.engine.lookup(aliases, replicas)
        missing = sorted({i // repeats for i, a in enumerate(answers) if a is None})
        if missing:
            requests, prepare = self.encoded_requests(images.build(missing), build, repeats)
            fresh = self.engine.map(requests, replicas[:len(requests)], prepare=prepare, validate=validate)
            slots = [i * repeats + r for i in missing for r in range(repeats)]
            for slot, answer in zip(slots, fresh):
                answers[slot] = answer
            self.engine.remember([aliases[s] for s in slots], [replicas[s] for s in slots], fresh)
        return answers

    def encoded_requests(self, images: np.ndarray, build: Callable[[str], dict], repeats: int = 1):
        """``build(digest) -> request`` per image (``repeats`` times each), and the ``prepare``
        that swaps every placeholder for the encoded image when a request is really sent."""
        images8 = quantise(images)
        digests = [image_digest(im) for im in images8]
        by_digest = dict(zip(digests, images8))
        self._sent_sizes = {d: (im.shape[1], im.shape[0]) for d, im in by_digest.items()}
        requests = [build(d) for d in digests for _ in range(repeats)]

        def encode(m) -> str:
            url = png_data_url(by_digest[m.group(2)])
            return url.split(",", 1)[1] if m.group(1) else url

        def prepare(node):
            if isinstance(node, dict):
                return {k: prepare(v) for k, v in node.items()}
            if isinstance(node, list):
                return [prepare(v) for v in node]
            if isinstance(node, str) and STAND_IN in node:
                return _STAND_IN_RE.sub(encode, node)
            return node
        return requests, prepare

    def note(self, body: dict | None) -> None:
        """Remember which model and build answered (provenance)."""
        if isinstance(body, dict):
            if body.get("system_fingerprint"):
                self.fingerprints.add(str(body["system_fingerprint"]))
            if body.get("model"):
                self.served_models.add(str(body["model"]))

    # -- batch mode (the engine's Batch API) ----------------------------------------------------
    def collect(self, on: bool = True) -> None:
        self.engine.collect(on)

    def stage_gate(self):
        return self.engine.stage_gate()

    def send_batch(self, progress: bool = True) -> int:
        return self.engine.send_batch(progress)

    # -- reporting ------------------------------------------------------------------------------
    def usage(self) -> dict:
        u = self.engine.stats.as_dict()
        u["budget"] = self.engine.budget.summary()
        batcher = self.engine.batcher
        if batcher is not None:
            u.update(batch_ids=list(batcher.batch_ids), batches_in_flight=list(batcher.in_flight))
        return u

    def provenance(self) -> dict:
        from blackbox import __version__

        return {"model": self.name, "endpoint": self.engine.transport.endpoint,
                "served_models": sorted(self.served_models), "system_fingerprint": sorted(self.fingerprints),
                "view": asdict(self.view_rule), "resolution": self.resolution,
                "model_card": bool(self.card), **self._provenance_extra(), "blackbox_version": __version__}

    def _provenance_extra(self) -> dict:
        return {}

    def close(self):
        self.engine.close()
