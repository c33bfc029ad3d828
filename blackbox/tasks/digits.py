"""The built-in image task of alignment: scikit-learn's real handwritten digits.

1797 real 8x8 scans (``load_digits``; they ship inside the package, no download), upscaled to
224x224 RGB, dark ink on a light background. Their captions are one-word class names that are
single LM tokens (" three"), and there are enough images per class for a held-out split.
"""
from __future__ import annotations

import importlib

import numpy as np

from blackbox.errors import InputError, MissingDependency

from .images import LabelledImages

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


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


def load_digits(classes=(0, 1, 2, 3, 4), per_class: int | None = None, seed: int = 0) -> LabelledImages:
    """Real handwritten digits of ``classes``, shuffled with ``seed``; ``per_class`` caps the images
    per class (a seeded random choice). The first half is for training, the second half held out.
    The class names are the digit words (``"three"``)."""
    try:
        datasets = importlib.import_module("sklearn.datasets")
    except ImportError:
        raise MissingDependency("scikit-learn", "lm", "the digits data set") from None
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
    return LabelledImages(digit_images(data.images[keep]), labels, [DIGIT_WORDS[c] for c in classes],
                          test=np.arange(len(labels)) >= len(labels) // 2, name="digits")
