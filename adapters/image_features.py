"""Image features from the embedded EfficientNet-Lite0: its penultimate layer (1280-d).

The frozen image encoder of the alignment task. ``extract_features`` (the last conv block) is
average-pooled, which is exactly what feeds the ImageNet classifier head. Features are computed
batched under ``torch.inference_mode()`` and cached on disk in ``cache_dir("features")``, keyed
by the SHA-256 of the pixels (and the weights file), so a second run of an example, test or
benchmark on the same images costs nothing.

Also here: the digits data set used by the alignment example (scikit-learn's ``load_digits``:
1797 real 8x8 handwritten digits, upscaled to 224x224 RGB, dark ink on a light background).
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np

from blackbox.errors import InputError
from blackbox.paths import cache_dir

from ._lazy import require

FEATURE_DIM = 1280
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@lru_cache(maxsize=1)
def _encoder():
    from .embedded import MEAN, STD, _torch_module

    torch = require("torch", "local", "image features")
    module, weights_path = _torch_module()
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    stat = os.stat(weights_path)
    key = f"efficientnet-lite0:{stat.st_size}:{torch.__version__}:avgpool-v1"
    return torch, module, mean, std, key


def image_features(images: np.ndarray, *, batch_size: int = 32, cache: bool = True,
                   progress: bool = False) -> np.ndarray:
    """Penultimate EfficientNet-Lite0 features of ``(n, 224, 224, 3)`` images in [0, 1] (float)
    or 0..255 (uint8): an ``(n, 1280)`` float32 array (after ReLU6 and global average pooling)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (224, 224, 3):
        raise InputError(f"image_features expects (n, 224, 224, 3) images, got shape {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InputError("image_features expects pixel values in [0, 1]")
    torch, module, mean, std, key = _encoder()
    digest = hashlib.sha256(key.encode())
    digest.update(images.tobytes())
    path = cache_dir("features") / f"lite0-{digest.hexdigest()[:20]}.npy"
    if cache and path.exists():
        try:
            cached = np.load(path)
            if cached.shape == (len(images), FEATURE_DIM):
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and replaced
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="image features", unit="batch")
    with torch.inference_mode():
        for s in starts:
            x = torch.from_numpy(images[s:s + batch_size]).permute(0, 3, 1, 2)
            fmap = module.extract_features((x - mean) / std)
            out[s:s + batch_size] = fmap.mean(dim=(2, 3)).numpy()
    if cache:
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return out


def digit_images(digits: np.ndarray, size: int = 224) -> np.ndarray:
    """scikit-learn 8x8 digits (values 0..16) -> ``(n, size, size, 3)`` float32 images in [0, 1]:
    bicubic upscaling, dark ink on a light background, a small margin around the digit."""
    from PIL import Image

    digits = np.asarray(digits, dtype=np.float64).reshape(-1, 8, 8)
    inner = int(round(size * 0.8))
    pad = (size - inner) // 2
    out = np.ones((len(digits), size, size, 3), dtype=np.float32)
    for i, d in enumerate(digits):
        ink = Image.fromarray((np.clip(d / 16.0, 0, 1) * 255).astype(np.uint8))
        big = np.asarray(ink.resize((inner, inner), Image.BICUBIC), dtype=np.float32) / 255.0
        out[i, pad:pad + inner, pad:pad + inner, :] = (1.0 - big)[..., None]
    return out


def load_digit_set(classes=(0, 1, 2, 3, 4), per_class: int | None = None, seed: int = 0):
    """Real handwritten digits from scikit-learn (1797 8x8 scans), for the alignment task.

    Returns ``(images, labels, names)``: images ``(n, 224, 224, 3)`` in [0, 1], labels 0..C-1
    indexing ``classes``, and the class words (``"three"``). ``per_class`` caps the images per
    class (a seeded random choice); the order is shuffled with ``seed``."""
    datasets = require("sklearn.datasets", "dev", "the digits data set", package="scikit-learn")
    classes = tuple(int(c) for c in classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
        raise InputError(f"classes must be at least two distinct digits 0-9, got {classes}")
    data = datasets.load_digits()
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        idx = np.flatnonzero(data.target == c)
        if per_class is not None:
            idx = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        keep.append(np.sort(idx))
    keep = np.concatenate(keep)
    keep = keep[rng.permutation(len(keep))]
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[int(t)] for t in data.target[keep]], dtype=np.int64)
    return digit_images(data.images[keep]), labels, [DIGIT_WORDS[c] for c in classes]
