"""Reading images, the model's view of an image, and blurred baselines (Pillow does the IO)."""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import InputError


MAX_PIXELS = 40_000_000  # 40 megapixels: any camera photo; more is refused before decoding


def max_pixels() -> int:
    """The largest image (width x height) read or served; ``BLACKBOX_MAX_PIXELS`` overrides."""
    value = os.environ.get("BLACKBOX_MAX_PIXELS", "")
    try:
        return int(value) if value.strip() else MAX_PIXELS
    except ValueError:
        raise InputError(f"BLACKBOX_MAX_PIXELS must be a whole number, got {value!r}") from None


def decode_image(source, what: str, limit: int | None = None) -> np.ndarray:
    """Decode an image file or file-like object as an ``(H, W, 3)`` float32 array in [0, 1].

    The size is checked from the header before any pixel is decoded (a small file can claim
    12000 x 12000 pixels: a decompression bomb). 16-bit and float images keep their range
    (a 16-bit PNG is not clipped to white). Every failure is an :class:`InputError` naming
    ``what``."""
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels() if limit is None else int(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged files: the error below says it
            with Image.open(source) as im:
                width, height = im.size
                if width * height > limit:
                    raise InputError(f"{what} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), "
                                     f"more than the {limit / 1e6:g} allowed (set BLACKBOX_MAX_PIXELS to allow more)")
                im.load()  # decode now, so truncated files fail here
                arr = _rgb_float(im)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{what} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise InputError(f"not an image (or an unsupported format): {what}") from None
    except PermissionError:
        raise InputError(f"cannot read {what}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise InputError(f"cannot decode image {what}: {exc}") from None
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"image {what} is too small ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def _rgb_float(im) -> np.ndarray:
    """A decoded Pillow image as float32 RGB in [0, 1], keeping 16-bit and float precision."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        grey = np.asarray(im, dtype=np.float64)
        if not np.all(np.isfinite(grey)):
            raise ValueError("the image has non-finite pixel values")
        if im.mode == "F":
            top = max(1.0, float(grey.max(initial=0.0)))
        else:
            top = 65535.0 if im.mode.startswith("I;16") or grey.max(initial=0) <= 65535 else float(2 ** 32 - 1)
        grey = np.clip(grey / top, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` float32 array in [0, 1]; clear errors otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"image not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"expected an image file, got a directory: {path}")
    return decode_image(path, path)


def as_float_image(image: np.ndarray) -> np.ndarray:
    """Accept ``(H, W, 3)`` uint8 or float arrays (or greyscale ``(H, W)``); return float32 in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.max(initial=0) > 1.0 + 1e-6 or arr.min(initial=0) < -1e-6:
        raise InputError("float images must lie in [0, 1]; pass uint8 for 0..255 values")
    return arr


def resize(image: np.ndarray, height: int, width: int, resample: str = "bilinear") -> np.ndarray:
    """Resize a float (H, W) or (H, W, C) array with Pillow, channel by channel in float32."""
    from PIL import Image

    mode = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}[resample]
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr).resize((width, height), mode))
    return np.stack([resize(arr[:, :, c], height, width, resample) for c in range(arr.shape[2])], axis=2)


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float image (the 'removed' baseline for masks and deletion curves)."""
    from PIL import Image, ImageFilter

    arr = np.asarray(image, dtype=np.float32)
    if radius <= 0:
        return arr.copy()
    rgb = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return np.asarray(rgb.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class ImageView:
    """Which region of the original image a model sees, and at what size.

    ``box`` is ``(top, left, height, width)`` in original pixels; the model sees that region
    resized to ``size`` = ``(height, width)``. Saliency is computed on the working view and mapped
    back to the original resolution; pixels the model never sees get 0 (and are drawn hatched).
    """

    original: tuple[int, int]
    box: tuple[int, int, int, int]
    size: tuple[int, int]

    @classmethod
    def center_crop(cls, height: int, width: int, size: int, crop_fraction: float = 224 / 256) -> "ImageView":
        """The classic classifier view: the central square (shorter side x crop_fraction)."""
        side = max(1, int(round(min(height, width) * crop_fraction)))
        top, left = (height - side) // 2, (width - side) // 2
        return cls((height, width), (top, left, side, side), (size, size))

    @classmethod
    def full(cls, height: int, width: int, max_side: int) -> "ImageView":
        """The whole image, resized so its longer side is ``max_side`` (aspect kept)."""
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return cls((height, width), (0, 0, height, width), size)

    def to_working(self, image: np.ndarray) -> np.ndarray:
        """The model's view of ``image`` (uint8 or [0, 1] float) as float32 in [0, 1]."""
        image = as_float_image(image)
        top, left, h, w = self.box
        crop = image[top:top + h, left:left + w]
        if (h, w) == tuple(self.size):
            return np.ascontiguousarray(crop, dtype=np.float32)
        return np.clip(resize(crop, *self.size, resample="bicubic"), 0.0, 1.0)

    def to_original(self, working_map: np.ndarray, fill: float = 0.0) -> np.ndarray:
        top, left, h, w = self.box
        out = np.full(self.original, fill, dtype=np.float32)
        out[top:top + h, left:left + w] = resize(working_map, h, w, resample="nearest")
        return out

    def coverage(self) -> np.ndarray:
        """Boolean (H, W) mask of the original pixels the model sees."""
        top, left, h, w = self.box
        mask = np.zeros(self.original, dtype=bool)
        mask[top:top + h, left:left + w] = True
        return mask
