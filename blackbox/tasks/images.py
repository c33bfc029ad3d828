"""Labelled images for alignment: the data type, and the user's own folder of captioned images."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blackbox.errors import InputError
from blackbox.images import ImageView, load_image

from .tables import read_table

IMAGE_SIZE = 224


@dataclass
class LabelledImages:
    """``images`` ``(n, 224, 224, 3)`` float32 in [0, 1], ``labels`` indexing ``names`` (the class
    words or captions), and ``test`` marking the held-out images."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    test: np.ndarray
    name: str = "images"

    def summary(self) -> dict:
        return {"name": self.name, "classes": list(self.names), "train_images": int((~self.test).sum()),
                "heldout_images": int(self.test.sum())}


def load_captioned_images(folder: str | os.PathLike, captions: str | os.PathLike, *, file_column: str = "file",
                          caption_column: str = "caption", test_fraction: float = 0.5,
                          seed: int = 0) -> LabelledImages:
    """Images of ``folder`` named in the table ``captions`` with their caption or class word.

    Distinct captions are the classes (at least two, each with at least two images); each
    image's central square is resized to 224x224. Every class is split into training and
    held-out images by ``test_fraction`` (seeded; at least one of each)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder of images: {folder}")
    rows = read_table(captions, (file_column, caption_column))
    names = sorted({r[caption_column] for r in rows})
    if len(names) < 2:
        raise InputError(f"{captions}: every image has the caption {names[0]!r}; need two or more distinct ones")
    labels = np.array([names.index(r[caption_column]) for r in rows], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    if counts.min() < 2:
        raise InputError(f"{captions}: caption {names[int(counts.argmin())]!r} has only one image; each needs "
                         "at least two (one to train on, one held out)")
    images = np.empty((len(rows), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    for i, row in enumerate(rows):
        path = folder / row[file_column]
        if not path.is_file():
            raise InputError(f"{captions}: image {row[file_column]!r} is not in {folder}")
        image = load_image(path)
        view = ImageView.center_crop(*image.shape[:2], IMAGE_SIZE, crop_fraction=1.0)
        images[i] = view.to_working(image)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(len(names)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = min(max(1, int(round(len(idx) * test_fraction))), len(idx) - 1)
        test[idx[:n_test]] = True
    return LabelledImages(images, labels, names, test, name=folder.name)
