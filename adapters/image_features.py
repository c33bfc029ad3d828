"""Image features from the embedded EfficientNet-Lite0: its penultimate layer (1280-d).

The frozen image encoder of the alignment task. ``extract_features`` (the last conv block) is
average-pooled, which is exactly what feeds the ImageNet classifier head. Features are computed
batched under ``torch.inference_mode()`` and cached on disk in ``cache_dir("features")``, keyed
by the SHA-256 of the pixels (and the weights file), so a second run of an example, test or
benchmark on the same images costs nothing.
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
