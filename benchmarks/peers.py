"""Peers and references for the saliency benchmark.

* :class:`Oracle`: the embedded model as a counted, cached, timed black box for one target. The
  cache lets a method's small-budget run reuse the answers of its large-budget run when it asks
  for the very same images (same seed: the same first queries); the maps are identical to
  uncached runs, only the timing of such runs is not a measurement (the table reports speed from
  uncached runs only).
* :func:`rise`: RISE (Petsiuk et al. 2018), random binary masks on a coarse grid, bilinearly
  upsampled with random shifts, mixing the image with the blurred baseline.
* :func:`captum_map`: occlusion (FeatureAblation on grid cells), KernelSHAP and LIME from Captum,
  with the grid cells as the feature mask and the blurred copy as the baseline.
* :func:`whitebox_maps`: gradient, SmoothGrad and Integrated Gradients by torch autograd on the
  white-box twin, in the removal convention ``grad . (x - baseline)`` per pixel.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from blackbox.image_spaces import PatchGrid


class Oracle:
    """Target log-probability / probability of one class, with counters and a cache."""

    def __init__(self, model, index: int):
        self.model, self.index = model, index
        self.cache: dict[bytes, float] = {}
        self.reset()

    def reset(self):
        self.evals = 0          # images answered (cached or not): the queries a method spent
        self.forwards = 0       # images actually run through the model
        self.model_seconds = 0.0
        self.harness_seconds = 0.0  # hashing/caching: benchmark cost, not the method's

    def logp(self, images: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        images = np.asarray(images, dtype=np.float32)
        keys = [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]
        out = np.empty(len(images))
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        self.harness_seconds += time.perf_counter() - t0
        if missing:
            t1 = time.perf_counter()
            values = self.model.log_probs(images[missing])[:, self.index]
            self.model_seconds += time.perf_counter() - t1
            self.forwards += len(missing)
            for i, v in zip(missing, values):
                self.cache[keys[i]] = float(v)
        out[:] = [self.cache[k] for k in keys]
        self.evals += len(images)
        return out

    def prob(self, images: np.ndarray) -> np.ndarray:
        return np.exp(self.logp(images))


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation (half-pixel centres, edge clamp) as an (n_out, n_in) matrix."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    mat = np.zeros((n_out, n_in))
    mat[np.arange(n_out), lo] += 1 - w
    mat[np.arange(n_out), hi] += w
    return mat


def rise(prob, image: np.ndarray, baseline: np.ndarray, n: int, *, s: int = 7, p1: float = 0.5,
         seed: int = 0, batch: int = 64) -> np.ndarray:
    """RISE saliency with exactly ``n`` queries: sum_i p_i M_i / (n p1)."""
    h, w = image.shape[:2]
    cell_h, cell_w = int(np.ceil(h / s)), int(np.ceil(w / s))
    up_r, up_c = _interp_matrix((s + 1) * cell_h, s), _interp_matrix((s + 1) * cell_w, s)
    rng = np.random.default_rng(seed)
    diff = (image - baseline)[None]
    sal = np.zeros((h, w))
    for start in range(0, n, batch):
        m = min(batch, n - start)
        grids = (rng.random((m, s, s)) < p1).astype(np.float64)
        shifts = np.stack([rng.integers(0, cell_h, m), rng.integers(0, cell_w, m)], axis=1)
        big = np.einsum("ri,nij,cj->nrc", up_r, grids, up_c)
        masks = np.stack([big[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)]).astype(np.float32)
        p = prob(baseline[None] + masks[..., None] * diff)
        sal += np.tensordot(p, masks, axes=1)
    return (sal / (n * p1)).astype(np.float32)


def captum_map(kind: str, prob, image: np.ndarray, baseline: np.ndarray, budget: int, grid: int,
               *, seed: int = 0, batch: int = 64) -> tuple[np.ndarray, int]:
    """Occlusion / KernelSHAP / LIME from Captum on the grid cells. Returns (map, grid used)."""
    import torch
    from captum.attr import FeatureAblation, KernelShap, Lime
    from captum._utils.models.linear_model import SkLearnRidge

    torch.manual_seed(seed)
    h, w = image.shape[:2]

    def forward(x):
        return torch.from_numpy(prob(x.detach().numpy().astype(np.float32, copy=False))).float()

    if kind == "occlusion":  # one query per cell plus the unperturbed image
        grid = max(g for g in range(1, min(h, w) + 1) if g * g + 1 <= budget)
    cells = PatchGrid(h, w, grid)
    ids = torch.from_numpy(np.broadcast_to(cells.cell_ids[:, :, None], image.shape).copy())[None].long()
    x = torch.from_numpy(image)[None]
    b = torch.from_numpy(baseline)[None]
    if kind == "occlusion":
        attr = FeatureAblation(forward).attribute(x, baselines=b, feature_mask=ids, perturbations_per_eval=batch)
    elif kind == "kernelshap":
        attr = KernelShap(forward).attribute(x, baselines=b, feature_mask=ids, n_samples=budget,
                                             perturbations_per_eval=batch)
    elif kind == "lime":
        def similarity(original, perturbed, interpretable, **kwargs):
            # LIME's image default: exponential kernel on the cosine distance between the
            # all-on interpretable vector and the sampled one, width 0.25
            z = interpretable.float().reshape(-1)
            cos = z.sum() / (np.sqrt(z.numel()) * torch.sqrt(z.sum()).clamp_min(1e-12))
            return torch.exp(-((1 - cos) ** 2) / 0.25 ** 2)
        lime = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity)
        attr = lime.attribute(x, baselines=b, feature_mask=ids, n_samples=budget, perturbations_per_eval=batch)
    else:
        raise ValueError(kind)
    return attr[0].detach().numpy().sum(axis=2).astype(np.float32), grid


def whitebox_maps(reference, image: np.ndarray, baseline: np.ndarray, index: int, *, n: int = 16,
                  smooth: float = 0.15, seed: int = 0) -> dict[str, np.ndarray]:
    """White-box gradient / SmoothGrad / IG maps, each as grad . (x - baseline) per pixel, plus
    the plain gradient magnitude (``absgrad``)."""
    diff = image - baseline
    g = reference.gradient(image[None], index)[0]
    rng = np.random.default_rng(seed)
    noisy = np.clip(image[None] + rng.normal(0, smooth, (n,) + image.shape), 0, 1).astype(np.float32)
    g_sg = reference.gradient(noisy, index).mean(axis=0)
    alphas = (np.arange(n) + 0.5) / n
    path = (baseline[None] + alphas[:, None, None, None] * diff[None]).astype(np.float32)
    g_ig = reference.gradient(path, index).mean(axis=0)
    return {"gradient": (g * diff).sum(axis=2), "smoothgrad": (g_sg * diff).sum(axis=2),
            "ig": (g_ig * diff).sum(axis=2), "absgrad": np.abs(g).sum(axis=2)}
