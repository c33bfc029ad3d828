"""Any torch ``nn.Module`` (or TorchScript) image classifier as a black-box query function (and,
for reference, its white-box gradient)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blackbox.models import Target

from ._lazy import require
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, PreprocessedClassifier


class TorchClassifier(PreprocessedClassifier):
    """Wrap a torch classifier that maps its input tensor to class scores (logits, or
    probabilities with ``outputs="probs"``).

    The input follows ``preprocessing`` (default: ``(n, 3, S, S)`` normalised as ``(x - mean) /
    std`` per channel). Inference runs batched under ``torch.inference_mode()``.
    """

    def __init__(self, module, labels: Sequence[str], *, name: str = "torch-classifier",
                 preprocessing: Preprocessing | None = None, input_size: int = 224, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, batch_size: int = 16, synonyms=None, threads: int | None = None,
                 outputs: str = "logits"):
        torch = require("torch", "local", "torch models")
        super().__init__(labels, synonyms)
        self.torch = torch
        self.module = module.eval()
        self.name = name
        self.preprocessing = preprocessing or Preprocessing((input_size,) * 2, mean=mean, std=std)
        self.input_size = self.preprocessing.size[0]
        self.batch_size = batch_size
        self.outputs = outputs
        if threads:
            torch.set_num_threads(threads)

    def _scores(self, x):
        """Scores for a float32 ``(n, H, W, 3)`` tensor of [0, 1] images."""
        out = self.module(self.preprocessing.to_input(x))
        return out[0] if isinstance(out, (tuple, list)) else out

    def _log_softmax(self, scores):
        scores = scores.float()
        if self.outputs == "probs":
            scores = scores.clamp_min(1e-30).log()
        return self.torch.log_softmax(scores, dim=1)

    def _batches(self, images: np.ndarray):
        for s in range(0, len(images), self.batch_size):
            yield self.torch.from_numpy(np.ascontiguousarray(images[s:s + self.batch_size], dtype=np.float32))

    def raw_scores(self, images: np.ndarray) -> np.ndarray:
        """The model's output for ``(n, H, W, 3)`` working images."""
        with self.torch.inference_mode():
            return np.concatenate([self._scores(x).float().numpy() for x in self._batches(images)])

    def log_probs(self, images: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = [self._log_softmax(self._scores(x)).numpy() for x in self._batches(images)]
        return np.concatenate(out).astype(np.float64)

    def gradient(self, images: np.ndarray, target: Target | int, kind: str = "logprob") -> np.ndarray:
        """White-box gradient of the target score w.r.t. the [0, 1] images: ``(n, H, W, 3)``."""
        torch = self.torch
        index = target.index if isinstance(target, Target) else int(target)
        grads = []
        for x in self._batches(images):
            x.requires_grad_(True)
            logp = self._log_softmax(self._scores(x))[:, index]
            score = logp.exp() if kind == "prob" else logp
            (g,) = torch.autograd.grad(score.sum(), x)
            grads.append(g.numpy())
        return np.concatenate(grads).astype(np.float64)
