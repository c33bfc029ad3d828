"""Peers and references for the saliency benchmark, all on the same blurred baseline.

* :class:`Oracle`: the embedded model as a counted, cached, timed black box for one target. The
  cache lets a small-budget run reuse the answers of a large-budget run when it asks for the very
  same images (same seed: the same first queries); maps are identical to uncached runs, only the
  timing of such runs is not a measurement (timing runs use a fresh oracle).
* :func:`rise`: RISE (Petsiuk et al. 2018), random binary masks on a coarse grid, bilinearly
  upsampled with random shifts, mixing the image with the blurred baseline.
* :func:`captum_map`: occlusion (FeatureAblation on grid cells), KernelSHAP and LIME from Captum,
  with the grid cells as the feature mask and the blurred copy as the baseline; LIME with
  Captum's default sparse interpretable model (Lasso, alpha 0.01) or with ridge (alpha 1).
* :func:`shapiq_map`: shapiq's KernelSHAP (Shapley values) and RegressionFBII of order 1 (Banzhaf
  values by least squares over uniformly sampled coalitions; Tsai et al. 2023) on the grid cells,
  the game being the target's probability of the image with the cells outside a coalition replaced
  by the baseline; with the pairing trick (each coalition and its complement) or without.
* :func:`leverage_shap`: Leverage SHAP (Musco & Witter, ICLR 2025), written from the paper: the
  KernelSHAP regression with the efficiency constraint, coalitions sampled by their leverage
  scores (the size uniform in 1..n-1, the members uniform, each with its complement), weighted by
  kernel / sampling probability.
* :func:`hsic`: HSIC attribution (Novello, Fel, Vigouroux, NeurIPS 2022), written from the paper:
  binary masks on an 8x8 grid (a scrambled Sobol sequence rounded to {0, 1}), the dependence
  between each cell's mask value and the output measured by the HSIC estimator
  ``tr(K H L H) / (n - 1)^2`` with the binary kernel on the mask value and an RBF kernel on the
  output (bandwidth: the median pairwise distance of the outputs).
* :func:`sobol`: Sobol attribution (Fel et al., NeurIPS 2021), written from the paper: total Sobol
  indices of the cells with the Jansen estimator over a replicated design (matrices A, B and the
  d matrices C_i = A with column i from B) from a scrambled Sobol sequence of real-valued masks;
  ``nb_design * (grid^2 + 2)`` queries.
* :func:`whitebox_maps`: gradient and Integrated Gradients by torch autograd on the white-box twin,
  in the removal convention ``grad . (x - baseline)`` per pixel.

HSIC and Sobol perturb by "inpainting" towards the baseline, ``x(M) = b + M (x - b)``, and, like
their reference implementations, return the cell scores smoothly upsampled.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from blackbox import PatchGrid


class Oracle:
    """Target log-probability / probability of one class, with counters and a cache."""

    def __init__(self, model, index: int, cache: bool = True, store=None):
        self.model, self.index, self.use_cache, self.store = model, index, cache, store
        self.cache: dict[bytes, float] = {}
        if store is not None and store.exists():
            saved = np.load(store)
            self.cache = dict(zip((bytes(k) for k in saved["keys"]), saved["values"].tolist()))
        self.reset()

    def save(self) -> None:
        """Keep the answers on disk (``store``), so a rerun with other settings pays nothing twice."""
        if self.store is not None and self.cache:
            keys = np.array(list(self.cache), dtype="S16")
            tmp = self.store.with_suffix(".tmp.npz")
            np.savez(tmp, keys=keys, values=np.array(list(self.cache.values())))
            tmp.replace(self.store)

    def reset(self):
        self.evals = 0          # images answered (cached or not): the queries a method spent
        self.forwards = 0       # images actually run through the model
        self.model_seconds = 0.0
        self.harness_seconds = 0.0  # hashing/caching: benchmark cost, not the method's

    def logp(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        self.evals += len(images)
        if not self.use_cache:
            t1 = time.perf_counter()
            values = self.model.log_probs(images)[:, self.index]
            self.model_seconds += time.perf_counter() - t1
            self.forwards += len(images)
            return values
        t0 = time.perf_counter()
        keys = [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        self.harness_seconds += time.perf_counter() - t0
        if missing:
            t1 = time.perf_counter()
            values = self.model.log_probs(images[missing])[:, self.index]
            self.model_seconds += time.perf_counter() - t1
            self.forwards += len(missing)
            for i, v in zip(missing, values):
                self.cache[keys[i]] = float(v)
        return np.array([self.cache[k] for k in keys])

    def prob(self, images: np.ndarray) -> np.ndarray:
        return np.exp(self.logp(images))


def _batched(score, masks: np.ndarray, cells: PatchGrid, image, baseline, batch: int) -> np.ndarray:
    """Scores of ``baseline + up(mask) * (image - baseline)`` for (n, rows, cols) cell masks."""
    diff = (image - baseline)[None]
    out = []
    for start in range(0, len(masks), batch):
        m = cells.upsample(masks[start:start + batch].astype(np.float32))[..., None]
        out.append(score(baseline[None] + m * diff))
    return np.concatenate(out) if out else np.zeros(0)


def rise(prob, image: np.ndarray, baseline: np.ndarray, n: int, *, s: int = 7, p1: float = 0.5,
         seed: int = 0, batch: int = 64) -> np.ndarray:
    """RISE saliency with exactly ``n`` queries: sum_i p_i M_i / (n p1)."""
    h, w = image.shape[:2]
    cell_h, cell_w = int(np.ceil(h / s)), int(np.ceil(w / s))
    big_grid = PatchGrid((s + 1) * cell_h, (s + 1) * cell_w, s)
    rng = np.random.default_rng(seed)
    diff = (image - baseline)[None]
    sal = np.zeros((h, w))
    for start in range(0, n, batch):
        m = min(batch, n - start)
        grids = (rng.random((m, s, s)) < p1).astype(np.float64)
        shifts = np.stack([rng.integers(0, cell_h, m), rng.integers(0, cell_w, m)], axis=1)
        big = [big_grid.smooth_upsample(g) for g in grids]
        masks = np.stack([b[dy:dy + h, dx:dx + w] for b, (dy, dx) in zip(big, shifts)]).astype(np.float32)
        p = prob(baseline[None] + masks[..., None] * diff)
        sal += np.tensordot(p, masks, axes=1)
    return (sal / (n * p1)).astype(np.float32)


def occlusion_grid(budget: int, side: int) -> int:
    """The finest grid whose occlusion (one query per cell plus the image) fits the budget."""
    return max(g for g in range(1, side + 1) if g * g + 1 <= budget)


def captum_map(kind: str, score, image: np.ndarray, baseline: np.ndarray, budget: int, grid: int,
               *, seed: int = 0, batch: int = 64) -> np.ndarray:
    """Occlusion / KernelSHAP / LIME (lasso or ridge) from Captum on the grid cells."""
    import torch
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import FeatureAblation, KernelShap, Lime

    torch.set_num_threads(1)  # two intra-op threads on a shared 2-core machine: 30x slower kernels
    torch.manual_seed(seed)

    def forward(x):
        return torch.from_numpy(score(x.detach().numpy().astype(np.float32, copy=False))).float()

    cells = PatchGrid(image.shape[0], image.shape[1], grid)
    ids = torch.from_numpy(np.broadcast_to(cells.cell_ids[:, :, None], image.shape).copy())[None].long()
    x, b = torch.from_numpy(image)[None], torch.from_numpy(baseline)[None]
    common = dict(baselines=b, feature_mask=ids, perturbations_per_eval=batch)
    if kind == "occlusion":
        attr = FeatureAblation(forward).attribute(x, **common)
        return attr[0].detach().numpy().sum(axis=2).astype(np.float32)
    if kind == "kernelshap":
        method = KernelShap(forward)
    elif kind == "lime":        # Captum's defaults: Lasso(alpha=0.01), exponential cosine kernel
        method = Lime(forward)
    elif kind == "lime-ridge":  # the strong form: the same samples and kernel, a ridge model
        method = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0))
    else:
        raise ValueError(kind)
    cell_of, diff = cells.cell_ids, image - baseline

    def to_image(sample, inputs, **kwargs):
        # Captum's default transform (image where the sample is 1, baseline elsewhere) without
        # its per-sample indexing of a full-size mask (~0.1 s per query on this machine)
        on = sample[0].numpy().astype(np.float32)[cell_of][..., None]
        return torch.from_numpy(baseline + on * diff)[None]

    method.from_interp_rep_transform = to_image
    attr = method.attribute(x, n_samples=budget, **common)
    return attr[0].detach().numpy().sum(axis=2).astype(np.float32)


def shapiq_map(kind: str, score, image: np.ndarray, baseline: np.ndarray, budget: int, grid: int, *,
               pairing: bool = True, seed: int = 0, batch: int = 64) -> np.ndarray:
    """shapiq's ``kernelshap`` (Shapley values) or ``fbii`` (order-1 Faithful Banzhaf, i.e. Banzhaf
    values) of the grid cells within ``budget`` queries, as a map constant on each cell."""
    import warnings

    from shapiq.approximator import KernelSHAP, RegressionFBII

    cells = PatchGrid(image.shape[0], image.shape[1], grid)

    def game(coalitions):  # shapiq asks every coalition at once: render and answer them in batches
        keep = np.asarray(coalitions, dtype=np.float32).reshape(-1, grid, grid)
        return _batched(score, keep, cells, image, baseline, batch)

    if kind == "kernelshap":
        approximator = KernelSHAP(cells.cells, pairing_trick=pairing, random_state=seed)
    elif kind == "fbii":
        approximator = RegressionFBII(cells.cells, max_order=1, pairing_trick=pairing, random_state=seed)
    else:
        raise ValueError(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shapiq warns about budgets below full enumeration
        values = approximator.approximate(budget, game)
    cell_values = np.array([values[(i,)] for i in range(cells.cells)], dtype=np.float64)
    return cells.upsample(cell_values.reshape(1, grid, grid))[0]


def leverage_shap(score, image: np.ndarray, baseline: np.ndarray, budget: int, grid: int, *, pairing: bool = True,
                  seed: int = 0, batch: int = 64) -> np.ndarray:
    """Leverage SHAP with ``budget`` queries: the image and the baseline (the efficiency constraint's
    two ends), then coalitions (in complement pairs with ``pairing``), the size uniform in 1..n-1 (equal leverage per
    size), the members uniform. The Shapley kernel over that sampling probability leaves the weight
    1 / (s (n - s)) for a coalition of size s. Solved as in the paper: project out the constraint
    sum(phi) = v(all) - v(none), weighted least squares, add the constraint's part back."""
    cells = PatchGrid(image.shape[0], image.shape[1], grid)
    n = cells.cells
    rng = np.random.default_rng(seed)
    draws = (budget - 2) // 2 if pairing else budget - 2
    keep = np.zeros((draws, n))
    for row, size in zip(keep, rng.integers(1, n, draws)):
        row[rng.choice(n, size, replace=False)] = 1.0
    masks = np.vstack([np.ones((1, n)), np.zeros((1, n)), keep, *([1.0 - keep] if pairing else [])])
    y = _batched(score, masks.reshape(-1, grid, grid), cells, image, baseline, batch)
    v_all, v_none, z, b = y[0], y[1], masks[2:], y[2:] - y[1]
    size = z.sum(axis=1)
    root_w = np.sqrt(1.0 / (size * (n - size)))
    share = (v_all - v_none) / n
    a = z - size[:, None] / n                # Z P with P = I - 11'/n
    rhs = b - size * share                   # y - Z 1 (v(all) - v(none)) / n
    x = np.linalg.lstsq(a * root_w[:, None], rhs * root_w, rcond=None)[0]
    phi = x - x.mean() + share               # P x + the constraint's part
    return cells.upsample(phi.reshape(1, grid, grid))[0]


def hsic(score, image: np.ndarray, baseline: np.ndarray, n: int, *, grid: int = 8, seed: int = 0,
         batch: int = 64) -> np.ndarray:
    """HSIC attribution with ``n`` binary masks (one query each)."""
    from scipy.stats import qmc

    cells = PatchGrid(image.shape[0], image.shape[1], grid)
    design = np.round(qmc.Sobol(cells.cells, scramble=True, seed=seed).random(n))
    y = _batched(score, design.reshape(n, grid, grid), cells, image, baseline, batch)
    dist = np.abs(y[:, None] - y[None, :])
    width = np.median(dist[np.triu_indices(n, 1)]) if n > 1 else 1.0
    gram = np.exp(-dist ** 2 / (2 * max(width, 1e-12) ** 2))
    centred_gram = gram - gram.mean(0) - gram.mean(1)[:, None] + gram.mean()
    # binary kernel k(a, b) = 1 + (1/2) s_a s_b on s = 2m - 1: centring removes the constant, so
    # tr(K H L H) = (1/2) s~' L~ s~ per cell with s~ the centred signs
    signs = 2 * design - 1
    signs -= signs.mean(0)
    scores = 0.5 * (signs * (centred_gram @ signs)).sum(0) / max(n - 1, 1) ** 2
    return cells.smooth_upsample(scores.reshape(grid, grid))


def sobol_design(budget: int, grids=(11, 8, 7, 6, 5, 4, 3, 2)) -> tuple[int, int]:
    """(grid, nb_design): the finest grid with at least 8 designs (a power of two) in the budget."""
    for g in grids:
        designs = 2 ** int(np.floor(np.log2(max(budget // (g * g + 2), 1))))
        if designs >= 8 and designs * (g * g + 2) <= budget:
            return g, min(designs, 32)
    return 2, max(1, 2 ** int(np.floor(np.log2(max(budget // 6, 1)))))


def sobol(score, image: np.ndarray, baseline: np.ndarray, budget: int, *, seed: int = 0,
          batch: int = 64) -> np.ndarray:
    """Total Sobol indices per cell (Jansen estimator) within ``budget`` queries."""
    from scipy.stats import qmc

    grid, designs = sobol_design(budget)
    cells = PatchGrid(image.shape[0], image.shape[1], grid)
    d = cells.cells
    ab = qmc.Sobol(2 * d, scramble=True, seed=seed).random(designs)
    a, b = ab[:, :d], ab[:, d:]
    c = np.repeat(a[None], d, axis=0)
    c[np.arange(d), :, np.arange(d)] = b.T  # C_i: A with column i taken from B
    masks = np.concatenate([a, b, c.reshape(d * designs, d)]).reshape(-1, grid, grid)
    y = _batched(score, masks, cells, image, baseline, batch)
    ya, yc = y[:designs], y[2 * designs:].reshape(d, designs)
    var = max(float(np.var(ya, ddof=1)) if designs > 1 else 0.0, 1e-12)
    total = ((ya[None] - yc) ** 2).sum(1) / (2 * designs * var)
    return cells.smooth_upsample(total.reshape(grid, grid))


def whitebox_maps(reference, image: np.ndarray, baseline: np.ndarray, index: int, *, n: int = 32) -> dict:
    """White-box gradient and IG (midpoint rule, ``n`` points) maps, each ``grad . (x - baseline)``
    per pixel."""
    diff = image - baseline
    g = reference.gradient(image[None], index)[0]
    alphas = (np.arange(n) + 0.5) / n
    path = (baseline[None] + alphas[:, None, None, None] * diff[None]).astype(np.float32)
    g_ig = reference.gradient(path, index).mean(axis=0)
    return {"gradient": (g * diff).sum(axis=2), "ig": (g_ig * diff).sum(axis=2)}
