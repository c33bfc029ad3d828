"""Black-box saliency maps from likelihood-ratio gradient estimates (forward queries only).

Methods (all from the same LR estimator, see ``estimators.py``):

* ``vanilla``: the gradient of the target score at the image (smoothed at a small sigma);
* ``smoothgrad``: the same at ``sqrt(sigma^2 + smooth^2)`` (Stein: LR at noise s *is* SmoothGrad's
  mean gradient at s);
* ``ig``: Integrated Gradients from the baseline to the image, one random path position per
  antithetic pair;
* ``gradxinput``: gradient times (input - baseline).

Spaces: ``mask`` (default; per-patch mixing with a blurred baseline: the effect of removing each
patch) and ``pixel`` (per-patch additive brightness noise). Maps are signed attributions
(positive: supports the target), except pixel-space vanilla/smoothgrad, which are gradient
magnitudes summed over channels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import InputError
from .estimators import GradientEstimate, lr_gradient
from .image_spaces import MaskSpace, PatchGrid, PixelSpace
from .images import as_float_image, blur
from .queries import Budget, QueryRunner
from .rationing import rationed_gradient

METHODS = ("vanilla", "smoothgrad", "ig", "gradxinput")
SPACES = ("mask", "pixel")
DEFAULT_SIGMA = {"mask": 0.3, "pixel": 0.1}
DEFAULT_SMOOTH = {"mask": 0.5, "pixel": 0.15}


@dataclass
class SaliencyResult:
    """A saliency map on the working image plus everything needed to judge it."""

    map: np.ndarray            # (H, W) attribution on the working image
    cells: np.ndarray          # (rows, cols) per-patch attribution
    stderr: np.ndarray         # (rows, cols) standard error of ``cells``
    method: str
    space: str
    grid: tuple[int, int]
    blocks: int
    sigma: float
    queries: int
    seconds: float
    model_seconds: float
    stopped: str | None = None
    estimate: GradientEstimate | None = field(default=None, repr=False)
    queries_saved: int = 0     # left unspent when target_error was reached early
    allocator: str | None = None
    # filled by explain() / the CLI: the map at the original image's resolution and what it explains
    full_map: np.ndarray | None = field(default=None, repr=False)
    target: object | None = None
    view: object | None = field(default=None, repr=False)

    @property
    def overhead(self) -> float:
        """Share of wall time spent outside the model (rendering, estimation, bookkeeping)."""
        return max(0.0, 1.0 - self.model_seconds / self.seconds) if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"method": self.method, "space": self.space, "grid": list(self.grid),
                "blocks": self.blocks, "sigma": self.sigma, "queries_used": self.queries,
                "seconds": round(self.seconds, 3), "model_seconds": round(self.model_seconds, 3),
                "overhead": round(self.overhead, 4), "stopped": self.stopped,
                "allocator": self.allocator, "queries_saved": self.queries_saved,
                "mean_stderr": float(np.mean(self.stderr)) if np.all(np.isfinite(self.stderr)) else None}


def make_baseline(image: np.ndarray, kind: str = "blur", radius: float | None = None) -> np.ndarray:
    """The 'removed' image: a strong blur (default), the mean colour, or black."""
    if kind == "blur":
        return blur(image, radius if radius is not None else max(image.shape[:2]) / 16)
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1)), image.shape).astype(np.float32).copy()
    if kind == "black":
        return np.zeros_like(image)
    raise InputError(f"unknown baseline {kind!r} (blur, mean or black)")


def saliency(
    score: Callable[[np.ndarray], np.ndarray] | QueryRunner,
    image: np.ndarray,
    *,
    queries: int = 1000,
    method: str = "ig",
    space: str = "mask",
    grid: int | tuple[int, int] = 14,
    blocks: int = 1,
    sigma: float | None = None,
    smooth: float | None = None,
    per_channel: bool = False,
    control: str = "antithetic",
    noise: str = "gaussian",
    baseline: str | np.ndarray = "blur",
    allocation: np.ndarray | None = None,
    seed: int | None = 0,
    budget: Budget | None = None,
    batch_size: int = 32,
    progress: bool = False,
    allocator: str | None = None,
    rounds: int | None = None,
    target_error: float | None = None,
) -> SaliencyResult:
    """Explain ``score`` (images -> one float each, e.g. a target log-probability) at ``image``.

    ``image`` is the working image the model sees, ``(H, W, 3)`` in [0, 1] (or uint8).
    ``score`` may be a plain function or a :class:`QueryRunner` (to share a budget and counters).
    Spends at most ``queries`` queries; if a budget runs out first, the map built from the
    queries already answered is returned with ``stopped`` set.
    ``allocator`` (``uniform``, ``neyman``, ``flops``) rations the budget across the ``blocks``
    in ``rounds`` (default 4); ``target_error`` stops once the relative standard error of the
    estimate is at or below it (see :mod:`blackbox.rationing`), reporting ``queries_saved``.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if space not in SPACES:
        raise InputError(f"unknown space {space!r}; choose from {', '.join(SPACES)}")
    if not isinstance(queries, (int, np.integer)) or queries < 2:
        raise InputError(f"queries must be a whole number >= 2, got {queries}")
    image = as_float_image(image)
    height, width = image.shape[:2]
    rows, cols = (grid, grid) if isinstance(grid, (int, np.integer)) else grid
    patch = PatchGrid(height, width, int(rows), int(cols))
    cell_blocks = patch.blocks(blocks)
    if isinstance(score, QueryRunner):
        runner = score
        if budget is not None:
            raise InputError("pass the budget to the QueryRunner, not to saliency()")
    else:
        runner = QueryRunner(score, budget=budget, batch_size=batch_size)
    if progress:
        runner.start_progress(queries, f"saliency ({method}, {space})")
    base = baseline if isinstance(baseline, np.ndarray) else make_baseline(image, baseline)
    base = as_float_image(base)
    sigma = float(sigma if sigma is not None else DEFAULT_SIGMA[space])
    if sigma <= 0:
        raise InputError("sigma must be > 0")
    if method == "smoothgrad":
        s_smooth = smooth if smooth is not None else DEFAULT_SMOOTH[space]
        sigma = float(np.sqrt(sigma ** 2 + s_smooth ** 2))
    q0, m0, t0 = runner.record.queries, runner.record.model_seconds, time.perf_counter()
    estimate = lr_gradient
    if allocator is not None or rounds is not None or target_error is not None:
        if allocation is not None:
            raise InputError("pass either a fixed allocation or an allocator, not both")

        def estimate(*args, allocation=None, **kw):
            return rationed_gradient(*args, allocator=allocator or "uniform", rounds=rounds or 4,
                                     target_error=target_error, **kw)
    rng = np.random.default_rng(seed)

    if space == "mask":
        sp = MaskSpace(image, patch, base)
        dim, blocks_idx = sp.dim, cell_blocks
        buffer = [None]  # one reusable image buffer: the runner consumes images at once

        def f(points):
            if runner.accepts_keys:  # a content-cached model: a cached answer needs no rendering
                return runner(sp.keyed(points)), sp.delivered(points)
            images, delivered = sp.render(points, out=buffer[0])
            buffer[0] = images
            return runner(images), delivered

        center_fn = None
        if method == "ig":
            def center_fn(r, n):
                return np.repeat(r.random((n, 1)), dim, axis=1)
        est = estimate(f, sp.center, queries=queries, sigma=sigma, control=control, noise=noise,
                          blocks=blocks_idx, allocation=allocation, seed=rng, center_fn=center_fn)
        cells = est.mean.reshape(rows, cols)
        cell_err = est.stderr.reshape(rows, cols)
        pixel_map = patch.upsample(cells[None])[0]
    else:
        sp = PixelSpace(image, patch, per_channel=per_channel)
        ch = sp.channels
        blocks_idx = [np.concatenate([b * ch + c for c in range(ch)]) for b in cell_blocks]
        if method == "ig":
            # one extra coordinate, never perturbed, carries the path position alpha
            diff = image - base

            def f(points):
                alpha = points[:, -1].astype(np.float32)[:, None, None, None]
                start = base[None] + alpha * diff[None]
                images, delivered = sp.render(points[:, :-1], base=start)
                return runner(images), np.concatenate([delivered, points[:, -1:]], axis=1)

            def center_fn(r, n):
                c = np.zeros((n, sp.dim + 1))
                c[:, -1] = r.random(n)
                return c
            est = estimate(f, np.zeros(sp.dim + 1), queries=queries, sigma=sigma, control=control,
                              noise=noise, blocks=blocks_idx, allocation=allocation, seed=rng,
                              center_fn=center_fn)
            flat, flat_err = est.mean[:-1], est.stderr[:-1]
        else:
            def f(points):
                images, delivered = sp.render(points)
                return runner(images), delivered
            est = estimate(f, sp.center, queries=queries, sigma=sigma, control=control,
                              noise=noise, blocks=blocks_idx, allocation=allocation, seed=rng)
            flat, flat_err = est.mean, est.stderr
        g = sp.cell_gradient(flat)                      # (rows, cols, ch): d score / d offset
        g_err = sp.cell_gradient(flat_err)
        # per-pixel gradient: a cell offset moves every pixel of the cell (and channel)
        per_pixel = patch.upsample(g[None])[0] / patch.upsample(patch.cell_pixels[None, :, :, None])[0]
        if ch == 1:
            per_pixel = per_pixel / image.shape[2]
        if method in ("ig", "gradxinput"):
            pixel_map = (per_pixel * (image - base)).sum(axis=2)
            cells = patch.pool(pixel_map[None, :, :, None])[0, :, :, 0] * patch.cell_pixels
        else:
            pixel_map = np.abs(per_pixel).sum(axis=2) if ch > 1 else np.abs(per_pixel[:, :, 0]) * image.shape[2]
            cells = np.abs(g).sum(axis=2)
        cell_err = np.sqrt((g_err ** 2).sum(axis=2))
    if progress:
        runner.close()
    return SaliencyResult(
        map=np.asarray(pixel_map, dtype=np.float32), cells=cells, stderr=cell_err, method=method,
        space=space, grid=(int(rows), int(cols)), blocks=blocks, sigma=sigma,
        queries=runner.record.queries - q0, seconds=time.perf_counter() - t0,
        model_seconds=runner.record.model_seconds - m0, stopped=est.stopped, estimate=est,
        queries_saved=int(est.extras.get("queries_saved", 0)), allocator=est.extras.get("allocator"))
