"""How a classifier file wants its input: the view (crop or stretch to its size) and the tensor
(channel order, pixel range, mean/std, layout). Shared by the ONNX and torch classifiers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blackbox.errors import InputError
from blackbox.images import ImageView
from blackbox.models import Classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUTS = ("nchw", "nhwc")
CHANNELS = ("rgb", "bgr", "gray")
RESIZES = ("crop", "stretch")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as Pillow's convert("L")


def _numbers(value, name: str) -> tuple[float, ...]:
    """One number or a sequence of numbers (per channel) as a tuple of floats."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number or one number per channel, got {value!r}") from None


@dataclass(frozen=True)
class Preprocessing:
    """From ``(n, H, W, 3)`` [0, 1] working images to the model's input tensor.

    ``resize``: ``crop`` takes the centred box of the input's aspect ratio, ``crop_fraction`` of
    the shorter side (the usual 256 -> 224 evaluation crop), ``stretch`` resizes the whole image.
    The tensor is ``(pixels * pixel_range - mean) / std`` per channel (``mean``/``std`` in the units
    of ``pixel_range``), in ``rgb``, ``bgr`` or one ``gray`` channel, laid out ``nchw`` or ``nhwc``."""

    size: tuple[int, int] = (224, 224)
    resize: str = "crop"
    crop_fraction: float = 224 / 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    pixel_range: float = 1.0
    channels: str = "rgb"
    layout: str = "nchw"

    def __post_init__(self):
        for value, allowed, what in ((self.resize, RESIZES, "resize"), (self.channels, CHANNELS, "channels"),
                                     (self.layout, LAYOUTS, "layout")):
            if value not in allowed:
                raise InputError(f"unknown {what} {value!r} ({', '.join(allowed)})")
        if len(self.size) != 2 or min(self.size) < 1:
            raise InputError(f"input size must be two positive numbers, got {self.size}")
        if not 0 < self.crop_fraction <= 1:
            raise InputError(f"crop fraction must be in (0, 1], got {self.crop_fraction}")
        n = self.n_channels
        for name in ("mean", "std"):
            values = _numbers(getattr(self, name), name)
            if len(values) == 1:
                values *= n
            if len(values) != n:
                raise InputError(f"{name} needs 1 or {n} values for {self.channels} input, got {len(values)}")
            object.__setattr__(self, name, values)
        if any(s == 0 for s in self.std):
            raise InputError("std must not be 0")

    @property
    def n_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    @property
    def identity(self) -> bool:
        """True when the tensor is the working image itself (the graph does its own preprocessing)."""
        return (self.channels == "rgb" and self.layout == "nhwc" and self.pixel_range == 1
                and self.mean == (0.0,) * 3 and self.std == (1.0,) * 3)

    def input_shape(self, n: int = 1) -> tuple[int, ...]:
        h, w = self.size
        return (n, self.n_channels, h, w) if self.layout == "nchw" else (n, h, w, self.n_channels)

    def view(self, height: int, width: int) -> ImageView:
        """Which part of an ``height x width`` image the model sees, at its input size."""
        th, tw = self.size
        if self.resize == "stretch":
            return ImageView((height, width), (0, 0, height, width), (th, tw))
        # the largest centred box of the input's aspect ratio, scaled by crop_fraction
        # (for a square input this is exactly ImageView.center_crop)
        side = min(height, width * th / tw)
        bh = max(1, int(round(side * self.crop_fraction)))
        bw = max(1, min(width, int(round(side * tw / th * self.crop_fraction))))
        return ImageView((height, width), ((height - bh) // 2, (width - bw) // 2, bh, bw), (th, tw))

    def to_input(self, images):
        """``(n, H, W, 3)`` [0, 1] images (a numpy array or a torch tensor) -> the model's input."""
        if self.identity:
            return images
        numpy = isinstance(images, np.ndarray)

        def const(values, shape=(-1,)):
            arr = np.asarray(values, dtype=np.float32).reshape(shape)
            if numpy:
                return arr
            import torch

            return torch.from_numpy(arr).to(images.dtype)

        x = images
        if self.channels == "bgr":
            x = x[..., [2, 1, 0]]
        elif self.channels == "gray":
            x = x @ const(LUMA, (3, 1))
        x = (x * self.pixel_range - const(self.mean)) / const(self.std)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2) if numpy else x.permute(0, 3, 1, 2)
        return x

    def describe(self) -> dict:
        return {"input_size": list(self.size), "resize": self.resize,
                "crop_fraction": self.crop_fraction if self.resize == "crop" else None,
                "mean": list(self.mean), "std": list(self.std), "pixel_range": self.pixel_range,
                "channels": self.channels, "layout": self.layout}


class PreprocessedClassifier(Classifier):
    """A classifier whose view and input tensor follow a :class:`Preprocessing`."""

    preprocessing = Preprocessing()

    def view(self, height: int, width: int) -> ImageView:
        return self.preprocessing.view(height, width)

