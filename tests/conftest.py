import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def model():
    """The real embedded classifier (ONNX runtime) with its torch twin at ``model.reference``."""
    from blackbox.adapters import load_image_model

    return load_image_model()


@pytest.fixture(scope="session")
def coffee_original():
    from blackbox.sample_images import load_sample

    return load_sample("coffee")


@pytest.fixture(scope="session")
def coffee(model, coffee_original):
    """The coffee photo as the model sees it: (224, 224, 3) float32 in [0, 1]."""
    view = model.view(*coffee_original.shape[:2])
    return view.to_working(coffee_original.astype(np.float32) / 255.0)


@pytest.fixture(scope="session")
def coffee_png(tmp_path_factory, coffee_original):
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(coffee_original).save(path)
    return path
