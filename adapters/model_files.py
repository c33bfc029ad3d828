"""Your own image classifier file as a black box: ``onnx:PATH`` (onnxruntime) or
``torchscript:PATH`` (torch), with its labels and preprocessing.

Loading checks the file once, with one grey image, and turns what can go wrong into one-line
errors: a missing or unreadable file, an input the model rejects (size, channels, layout), an
output that is not ``(batch, classes)`` scores, a labels file whose length is not the number of
classes. For ONNX files the input size, layout and channel count are read from the graph when it
fixes them. Whether the scores are logits or probabilities is detected (``outputs="auto"``).
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np

from blackbox.errors import InputError, ModelError

from ._lazy import require
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

KINDS = {"onnx": "ONNX", "torchscript": "TorchScript"}
OUTPUTS = ("auto", "logits", "probs")
DEFAULT_SIZE = 224


def load_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or a JSON list (or ``{"0": name, ...}`` map)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"labels file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from None
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"labels file {path} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            try:
                keys = sorted(int(k) for k in data)
            except ValueError:
                raise InputError(f"labels file {path}: a JSON object must map class indices to names") from None
            if keys != list(range(len(keys))):
                raise InputError(f"labels file {path}: class indices must run 0..{len(keys) - 1} without gaps")
            data = [data[str(k)] for k in keys]
        if not all(isinstance(v, (str, int, float)) for v in data):
            raise InputError(f"labels file {path}: expected a JSON list of names")
        labels = [str(v).strip() for v in data]
    else:
        labels = [line.strip() for line in text.strip("\n").splitlines()]
    if not labels or labels == [""]:
        raise InputError(f"labels file {path} is empty")
    if "" in labels:
        raise InputError(f"labels file {path}: label {labels.index('') + 1} is empty")
    return labels


def _last_line(exc: BaseException) -> str:
    lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()]
    text = (lines[-1] if lines else type(exc).__name__).removeprefix("RuntimeError: ")
    return text.split(". ")[0] if len(text) > 200 else text  # torch appends paragraphs of advice


def _onnx_layout(shape, layout, channels, size):
    """Layout, channels and size from an ONNX input shape like ``['batch', 3, 224, 224]``."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if len(dims) != 4:
        raise ModelError("expected a 4-D image input (batch, channels, height, width); "
                         f"the model's input has shape {shape}")
    if layout is None:
        layout = "nhwc" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "nchw"
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if c is not None and c not in (1, 3):
        raise ModelError(f"the model's input {shape} has {c} channels in {layout} layout; "
                         "images have 1 (grey) or 3 (colour): check --layout")
    if channels is None:
        channels = "gray" if c == 1 else "rgb"
    elif c is not None and (c == 1) != (channels == "gray"):
        raise InputError(f"--channels {channels} does not fit the model's input {shape} ({c} channel{'s' * (c > 1)})")
    if h is not None and w is not None:
        if size is not None and tuple(size) != (h, w):
            raise InputError(f"the model takes {h}x{w} input (height x width); --input-size says {size[0]}x{size[1]}")
        size = (h, w)
    batch = dims[0]
    return layout, channels, size, batch


def load_model_file(spec: str, *, labels: str | os.PathLike | None = None, input_size=None, resize: str | None = None,
                    crop_fraction: float | None = None, mean=None, std=None, pixel_range: float | None = None,
                    channels: str | None = None, layout: str | None = None, outputs: str | None = None,
                    batch_size: int = 32, threads: int | None = None):
    """An :class:`~blackbox.models.ImageModel` for ``onnx:PATH`` or ``torchscript:PATH``.

    ``labels``: a labels file (default: the class indices as names). ``input_size``: an int or
    ``(height, width)``. The other options are :class:`~blackbox.adapters.preprocessing.Preprocessing`'s;
    ``None`` means the model's own (ONNX) or the default."""
    kind, _, path = spec.partition(":")
    if kind not in KINDS or not path:
        raise InputError(f"expected onnx:PATH or torchscript:PATH, got {spec!r}")
    if not os.path.isfile(path):
        raise InputError(f"{KINDS[kind]} model file not found: {path}" if not os.path.isdir(path)
                         else f"expected a {KINDS[kind]} model file, got a directory: {path}")
    outputs = outputs or "auto"
    if outputs not in OUTPUTS:
        raise InputError(f"unknown outputs {outputs!r} ({', '.join(OUTPUTS)})")
    names = load_labels(labels) if labels is not None else None
    size = (input_size, input_size) if isinstance(input_size, int) else (tuple(input_size) if input_size else None)
    name = f"{kind}:{os.path.basename(path)}"

    if kind == "onnx":
        from .onnx_classifier import OnnxClassifier, onnx_session

        session = _open(path, kind, lambda: onnx_session(path, threads))
        first = session.get_inputs()[0]
        layout, channels, size, batch = _onnx_layout(first.shape, layout, channels, size)
        batch_size = batch or batch_size
        make = lambda prep, ls, out, batch: OnnxClassifier(session, ls, name=name, preprocessing=prep,  # noqa: E731
                                                           batch_size=batch, outputs=out)
    else:
        from .torch_classifier import TorchClassifier

        def load():
            import torch

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(path, map_location="cpu")

        require("torch", "local", "TorchScript models")
        module = _open(path, kind, load)
        make = lambda prep, ls, out, batch: TorchClassifier(module, ls, name=name, preprocessing=prep,  # noqa: E731
                                                            batch_size=batch, threads=threads, outputs=out)
    channels = channels or "rgb"
    colour = channels != "gray"
    prep = Preprocessing(size or (DEFAULT_SIZE, DEFAULT_SIZE), resize=resize or "crop",
                         crop_fraction=crop_fraction or 224 / 256,
                         mean=mean if mean is not None else (IMAGENET_MEAN if colour else (0.0,)),
                         std=std if std is not None else (IMAGENET_STD if colour else (1.0,)),
                         pixel_range=pixel_range or 1.0, channels=channels, layout=layout or "nchw")
    probe = make(prep, ["?"], "logits", batch_size)
    scores, single = _probe(probe, prep)
    classes = scores.shape[1]
    if names is not None and len(names) != classes:
        raise InputError(f"labels file {labels} has {len(names)} labels but the model outputs {classes} scores")
    if outputs == "auto":
        outputs = "probs" if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4) else "logits"
    model = make(prep, names or [str(i) for i in range(classes)], outputs, 1 if single else batch_size)
    model.file_info = {"file": os.path.abspath(path), "format": KINDS[kind], "classes": classes,
                       "outputs": outputs, **prep.describe()}
    return model


def _runtime_error(exc: BaseException) -> bool:
    """An error the model runtime raised (torch's RuntimeError, onnxruntime's own types)."""
    return (isinstance(exc, (OSError, RuntimeError, ValueError, TypeError))
            or type(exc).__module__.startswith("onnxruntime"))


def _open(path: str, kind: str, load):
    try:
        return load()
    except Exception as exc:
        if not _runtime_error(exc):
            raise
        hint = (" (is it TorchScript? save one with torch.jit.trace(model, example).save(PATH) or "
                "torch.jit.script(model).save(PATH))" if kind == "torchscript" else "")
        raise ModelError(f"cannot load {KINDS[kind]} model {path}: {_last_line(exc)}{hint}") from None


def _probe(model, prep: Preprocessing) -> tuple[np.ndarray, bool]:
    """The model's scores for two grey images, checked to be ``(2, classes)`` finite numbers, and
    whether it needs one image per call (a file exported with a fixed batch of 1 somewhere inside)."""
    images = np.stack([np.full((*prep.size, 3), v, dtype=np.float32) for v in (0.5, 0.25)])
    shape = "x".join(map(str, prep.input_shape()))
    single = False
    try:
        scores = _scores(model, images)
    except Exception as exc:  # whatever the runtime raises for an input it rejects
        if not _runtime_error(exc):
            raise
        try:
            scores, single = np.concatenate([_scores(model, images[:1]), _scores(model, images[1:])]), True
        except Exception:
            raise ModelError(f"{model.name} rejected a {shape} {prep.layout} {prep.channels} input "
                             f"({_last_line(exc)}); check --input-size, --layout and --channels") from None
    if scores.ndim != 2 or scores.shape[0] != 2:
        raise ModelError(f"{model.name} outputs shape {tuple(scores.shape)} for two images; "
                         "expected (batch, classes) scores")
    if not np.all(np.isfinite(scores)):
        raise ModelError(f"{model.name} outputs non-finite scores for a grey image")
    return scores, single


def _scores(model, images):
    return np.asarray(model.raw_scores(images), dtype=np.float64)
