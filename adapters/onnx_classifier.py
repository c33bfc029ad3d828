"""An ONNX image classifier run by onnxruntime (faster than eager torch on a small CPU)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ._lazy import require
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, PreprocessedClassifier

INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an ONNX file."""
    ort = require("onnxruntime", "local", "ONNX models")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def log_softmax(scores: np.ndarray, probabilities: bool = False) -> np.ndarray:
    """Row-wise log-probabilities from logits (or from probabilities, renormalised)."""
    x = np.log(np.clip(scores, 1e-30, None)) if probabilities else scores.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


class OnnxClassifier(PreprocessedClassifier):
    """An ONNX classifier whose first output is class scores (logits, or probabilities with
    ``outputs="probs"``).

    ``path`` is an ONNX file or an open onnxruntime session. The input follows ``preprocessing``;
    without one, ``layout="nchw"`` (default) feeds ``(n, 3, S, S)`` normalised as ``(x - mean) /
    std`` and ``nhwc01`` feeds the ``(n, S, S, 3)`` [0, 1] images as they are, for graphs that do
    their own preprocessing (faster: no per-batch numpy work outside the model).
    """

    def __init__(self, path, labels: Sequence[str], *, name: str = "onnx-classifier",
                 preprocessing: Preprocessing | None = None, input_size: int = 224, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, layout: str = "nchw", batch_size: int = 32, synonyms=None,
                 threads: int | None = None, outputs: str = "logits"):
        super().__init__(labels, synonyms)
        self.session = path if hasattr(path, "run") else onnx_session(path, threads)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = INPUT_TYPES.get(first.type, np.float32)
        if preprocessing is None:
            if layout not in ("nchw", "nhwc01"):
                raise ValueError(f"unknown layout {layout!r}")
            preprocessing = (Preprocessing((input_size,) * 2, mean=(0,), std=(1,), layout="nhwc")
                             if layout == "nhwc01" else Preprocessing((input_size,) * 2, mean=mean, std=std))
        self.preprocessing = preprocessing
        self.input_size = preprocessing.size[0]
        self.name = name
        self.batch_size = batch_size
        self.outputs = outputs
        self.reference = None  # a white-box twin (TorchClassifier) when one is available

    def raw_scores(self, images: np.ndarray) -> np.ndarray:
        """The model's first output for ``(n, H, W, 3)`` working images, batch by batch."""
        out = []
        for s in range(0, len(images), self.batch_size):
            x = self.preprocessing.to_input(np.asarray(images[s:s + self.batch_size], dtype=np.float32))
            x = np.ascontiguousarray(x, dtype=self.input_dtype)
            out.append(np.asarray(self.session.run(None, {self.input_name: x})[0]))
        return np.concatenate(out)

    def log_probs(self, images: np.ndarray) -> np.ndarray:
        return log_softmax(self.raw_scores(images), self.outputs == "probs")

    def gradient(self, images, target, kind: str = "logprob"):
        if self.reference is None:
            raise NotImplementedError("this ONNX model has no white-box twin for reference gradients")
        return self.reference.gradient(images, target, kind)
