"""Real photos that ship inside installed packages, for trying blackbox offline."""
from __future__ import annotations

import numpy as np

from .errors import InputError, MissingDependency

SAMPLE_IMAGES = {
    "coffee": "scikit-image: a cup of espresso",
    "chelsea": "scikit-image: a tabby cat",
    "astronaut": "scikit-image: Eileen Collins",
    "rocket": "scikit-image: a rocket on its launch pad",
    "china": "scikit-learn: a temple in China",
    "flower": "scikit-learn: a flower",
    "grace_hopper": "matplotlib: Grace Hopper",
}


def load_sample(name: str) -> np.ndarray:
    """The photo as an ``(H, W, 3)`` uint8 array."""
    if name not in SAMPLE_IMAGES:
        raise InputError(f"unknown sample image {name!r}; choose from {', '.join(SAMPLE_IMAGES)}")
    package = SAMPLE_IMAGES[name].split(":")[0]
    try:
        if package == "scikit-image":
            from skimage import data

            return np.asarray(getattr(data, name)())
        if package == "scikit-learn":
            from sklearn.datasets import load_sample_image

            return np.asarray(load_sample_image(f"{name}.jpg"))
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(f"{name}.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB"))
    except ImportError:
        raise MissingDependency(package, "local", f"the sample image {name!r}") from None


def sample_image(name: str, out: str) -> None:
    from PIL import Image

    Image.fromarray(load_sample(name)).save(out)
