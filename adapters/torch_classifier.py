"""Any torch ``nn.Module`` image classifier as a black-box query function (and, for reference,
its white-box gradient)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blackbox.models import Classifier, Target

from ._lazy import require


class TorchClassifier(Classifier):
    """Wrap a torch classifier that maps normalised ``(n, 3, S, S)`` tensors to logits.

    ``normalize`` turns [0, 1] pixels into the model's input scale: ``(x - mean) / std`` per
    channel. Inference runs batched under ``torch.inference_mode()``.
    """

    def __init__(self, module, labels: Sequence[str], *, name: str = "torch-classifier",
                 input_size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 batch_size: int = 16, synonyms=None, threads: int | None = None):
        torch = require("torch", "local", "torch models")
        super().__init__(labels, synonyms)
        self.torch = torch
        self.module = module.eval()
        self.name = name
        self.input_size = input_size
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        if threads:
            torch.set_num_threads(threads)

    def _to_tensor(self, images: np.ndarray):
        x = self.torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        return (x - self.mean) / self.std

    def log_probs(self, images: np.ndarray) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                logits = self.module(self._to_tensor(images[s:s + self.batch_size]))
                out.append(self.torch.log_softmax(logits.float(), dim=1).numpy())
        return np.concatenate(out).astype(np.float64)

    def gradient(self, images: np.ndarray, target: Target | int, kind: str = "logprob") -> np.ndarray:
        """White-box gradient of the target score w.r.t. the [0, 1] images: ``(n, H, W, 3)``."""
        torch = self.torch
        index = target.index if isinstance(target, Target) else int(target)
        grads = []
        for s in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + self.batch_size], dtype=np.float32))
            x.requires_grad_(True)
            logp = torch.log_softmax(self.module(((x.permute(0, 3, 1, 2)) - self.mean) / self.std), dim=1)[:, index]
            score = logp.exp() if kind == "prob" else logp
            (g,) = torch.autograd.grad(score.sum(), x)
            grads.append(g.numpy())
        return np.concatenate(grads).astype(np.float64)
