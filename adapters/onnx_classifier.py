"""An ONNX image classifier run by onnxruntime (4-6x faster than eager torch on a small CPU)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from blackbox.models import Classifier

from ._lazy import require


class OnnxClassifier(Classifier):
    """An ONNX classifier that outputs logits.

    Input layout: ``nchw`` (default) feeds ``(n, 3, S, S)`` normalised as ``(x - mean) / std``;
    ``nhwc01`` feeds the ``(n, S, S, 3)`` [0, 1] images as they are, for graphs that do their own
    preprocessing (faster: no per-batch numpy work outside the model).
    """

    def __init__(self, path: str | os.PathLike, labels: Sequence[str], *, name: str = "onnx-classifier",
                 input_size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 batch_size: int = 32, synonyms=None, threads: int | None = None, layout: str = "nchw"):
        ort = require("onnxruntime", "local", "ONNX models")
        super().__init__(labels, synonyms)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = name
        self.input_size = input_size
        self.batch_size = batch_size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if layout not in ("nchw", "nhwc01"):
            raise ValueError(f"unknown layout {layout!r}")
        self.layout = layout
        self.reference = None  # a white-box twin (TorchClassifier) when one is available

    def log_probs(self, images: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(images), self.batch_size):
            x = np.ascontiguousarray(images[s:s + self.batch_size], dtype=np.float32)
            if self.layout == "nchw":
                x = np.ascontiguousarray(((x - self.mean) / self.std).transpose(0, 3, 1, 2))
            logits = self.session.run(None, {self.input_name: x})[0].astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            out.append(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))
        return np.concatenate(out)

    def gradient(self, images, target, kind: str = "logprob"):
        if self.reference is None:
            raise NotImplementedError("this ONNX model has no white-box twin for reference gradients")
        return self.reference.gradient(images, target, kind)
