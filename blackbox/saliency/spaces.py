"""Low-dimensional coordinates for perturbing images: a patch grid, pixel noise and masks.

Perturbing 150,528 pixel values one by one needs 1e4..1e5 queries; one value per patch of a
``G x G`` grid needs a few hundred. Two coordinate systems sit on the grid:

* :class:`PixelSpace`: additive noise on pixel values, one value per patch (all channels, or one
  per channel). Measures sensitivity to brightness changes.
* :class:`MaskSpace`: a mixing coefficient ``m`` per patch between a baseline ``b`` (a blurred
  copy) and the image, ``x(m) = b + up(m) * (x - b)``. The gradient at ``m = 1`` is the first-order
  effect of *removing* each patch: what deletion/insertion curves measure.

Both render points to images clipped to [0, 1] and quantised to 8 bits *inside the black box*,
and report the perturbation actually delivered, which the estimator weights by.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..images import as_float_image, blur
from ..queries import KeyedInputs, keyed_points


class PatchGrid:
    """A ``rows x cols`` grid of near-equal cells over an ``H x W`` image."""

    def __init__(self, height: int, width: int, rows: int, cols: int | None = None):
        cols = rows if cols is None else cols
        if rows < 1 or cols < 1:
            raise InputError(f"grid must be at least 1x1, got {rows}x{cols}")
        if rows > height or cols > width:
            raise InputError(f"grid {rows}x{cols} is larger than the image ({width}x{height} pixels)")
        self.height, self.width, self.rows, self.cols = height, width, rows, cols
        self.row_edges = np.linspace(0, height, rows + 1).round().astype(int)
        self.col_edges = np.linspace(0, width, cols + 1).round().astype(int)
        self.row_of = np.repeat(np.arange(rows), np.diff(self.row_edges))
        self.col_of = np.repeat(np.arange(cols), np.diff(self.col_edges))
        self.cell_pixels = np.outer(np.diff(self.row_edges), np.diff(self.col_edges))

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def cell_ids(self) -> np.ndarray:
        """``(H, W)`` array of flat cell indices."""
        return self.row_of[:, None] * self.cols + self.col_of[None, :]

    def upsample(self, values: np.ndarray) -> np.ndarray:
        """``(n, rows, cols, ...)`` cell values -> ``(n, H, W, ...)`` (nearest: each pixel its cell's value)."""
        return values[:, self.row_of][:, :, self.col_of]

    def smooth_upsample(self, cells: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
        """``(rows, cols)`` cell values -> ``(height, width)`` (default: the grid's H x W), bilinear
        between cell centres (constant beyond the outer centres). For display: a map drawn as a
        checkerboard of cells reads as noise."""
        height = self.height if height is None else height
        width = self.width if width is None else width
        rows = _interpolation(self.row_edges, height / self.height)
        cols = _interpolation(self.col_edges, width / self.width)
        return (rows @ np.asarray(cells, dtype=np.float64) @ cols.T).astype(np.float32)

    def pool(self, images: np.ndarray) -> np.ndarray:
        """``(n, H, W, ...)`` -> per-cell means ``(n, rows, cols, ...)``."""
        summed = np.add.reduceat(np.add.reduceat(images, self.row_edges[:-1], axis=1),
                                 self.col_edges[:-1], axis=2)
        shape = (1, self.rows, self.cols) + (1,) * (images.ndim - 3)
        return summed / self.cell_pixels.reshape(shape)

    def coarsened(self, factor: int) -> tuple["PatchGrid", np.ndarray]:
        """A grid ``factor`` times coarser over the same image, and for every cell of this grid
        the coarse cell that holds its centre (flat indices)."""
        coarse = PatchGrid(self.height, self.width, -(-self.rows // factor), -(-self.cols // factor))
        centre_rows = (self.row_edges[:-1] + self.row_edges[1:]) // 2
        centre_cols = (self.col_edges[:-1] + self.col_edges[1:]) // 2
        parent = coarse.row_of[centre_rows][:, None] * coarse.cols + coarse.col_of[centre_cols][None, :]
        return coarse, parent.reshape(-1)

    def laplacian(self) -> np.ndarray:
        """``(cells, cells)`` graph Laplacian of the 4-neighbour grid: ``g' L g`` is the sum of
        squared differences between neighbouring cells (a smoothness penalty)."""
        ids = np.arange(self.cells).reshape(self.rows, self.cols)
        pairs = np.concatenate([np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1),
                                np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1)])
        out = np.zeros((self.cells, self.cells))
        np.add.at(out, (pairs[:, 0], pairs[:, 1]), -1.0)
        np.add.at(out, (pairs[:, 1], pairs[:, 0]), -1.0)
        out[np.diag_indices(self.cells)] = -out.sum(axis=1)
        return out

    def blocks(self, k: int) -> list[np.ndarray]:
        """Split the cells into ``k`` spatially contiguous tiles (flat cell indices)."""
        if k < 1 or k > self.cells:
            raise InputError(f"blocks must be between 1 and the number of cells ({self.cells}), got {k}")
        kr = max(d for d in range(1, int(np.sqrt(k)) + 1) if k % d == 0)
        kc = k // kr
        if kr > self.rows or kc > self.cols:
            kr, kc = (k, 1) if k <= self.rows else (1, k)
        r_edges = np.linspace(0, self.rows, kr + 1).round().astype(int)
        c_edges = np.linspace(0, self.cols, kc + 1).round().astype(int)
        ids = np.arange(self.cells).reshape(self.rows, self.cols)
        return [ids[r_edges[i]:r_edges[i + 1], c_edges[j]:c_edges[j + 1]].reshape(-1)
                for i in range(kr) for j in range(kc)]


def _interpolation(edges: np.ndarray, scale: float) -> np.ndarray:
    """``(n_out, cells)`` linear interpolation weights between the centres of cells with these
    ``edges``, for ``n_out = round(edges[-1] * scale)`` output pixels."""
    centres = (edges[:-1] + edges[1:]) / 2 * scale
    pixels = np.arange(int(round(edges[-1] * scale))) + 0.5
    hi = np.clip(np.searchsorted(centres, pixels), 1, max(len(centres) - 1, 1))
    lo = hi - 1
    if len(centres) == 1:
        return np.ones((len(pixels), 1))
    t = np.clip((pixels - centres[lo]) / (centres[hi] - centres[lo]), 0.0, 1.0)
    out = np.zeros((len(pixels), len(centres)))
    out[np.arange(len(pixels)), lo] = 1 - t
    out[np.arange(len(pixels)), hi] += t
    return out


def quantize(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Clip to [0, 1] and round to 8-bit levels (what a PNG or a camera would deliver)."""
    out = np.clip(images, 0.0, 1.0, out=out)
    out *= 255.0
    np.rint(out, out=out)
    out /= 255.0
    return out


class ClampedMean:
    """Exact delivered perturbation under clipping, per cell, without touching pixels.

    A cell's coordinate ``u`` moves each of its values along a line that is clipped at a
    per-value limit: value ``p`` actually moves by ``clamp(u, lo_p, hi_p)`` (``lo_p <= 0 <= hi_p``).
    The delivered coordinate is the weighted mean ``sum_p w_p clamp(u, lo_p, hi_p) / sum_p w_p``
    (the least-squares fit of the delivered change), a piecewise-linear function of ``u`` that is
    evaluated from sorted limits and prefix sums. 8-bit rounding (at most 1/510 per value, mean
    zero over a cell) is left out of the weights.
    """

    _SPAN = 1e6  # limits are capped here; cells are laid out on a line SPAN*4 apart

    def __init__(self, cell_of: np.ndarray, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray, cells: int):
        self.cells = cells
        w = weights.astype(np.float64)
        self.total = np.bincount(cell_of, weights=w, minlength=cells)
        self._upper = self._table(cell_of, w, np.minimum(hi, self._SPAN))
        self._lower = self._table(cell_of, w, np.minimum(-lo, self._SPAN))

    def _table(self, cell_of, w, limit):
        offset = cell_of * (4 * self._SPAN)
        order = np.argsort(offset + limit, kind="stable")
        keys = (offset + limit)[order]
        cw = np.concatenate([[0.0], np.cumsum(w[order])])
        cwl = np.concatenate([[0.0], np.cumsum((w * limit)[order])])
        start = np.searchsorted(keys, np.arange(self.cells) * (4 * self._SPAN), side="left")
        return keys, cw, cwl, start

    def _side(self, table, u):  # u >= 0, shape (n, cells): sum_p w_p min(u, limit_p)
        keys, cw, cwl, start = table
        base = np.arange(self.cells) * (4 * self._SPAN)
        idx = np.searchsorted(keys, base + u, side="left")  # limits below u are saturated
        end = np.append(start[1:], len(keys))
        saturated = cwl[idx] - cwl[start]
        free_weight = cw[end] - cw[idx]
        return saturated + u * free_weight

    def __call__(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        up = self._side(self._upper, np.maximum(u, 0.0))
        down = self._side(self._lower, np.maximum(-u, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.total > 0, (up - down) / self.total, u)


@dataclass
class Probe:
    """What a space hands an estimator: the query function over its coordinates (returning the
    scores and the perturbation actually delivered), the centre the noise is added to (or a
    fresh centre per direction, ``center_fn``, as on the path of Integrated Gradients), and the
    coordinate blocks perturbed one at a time."""

    f: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    center: np.ndarray
    blocks: list[np.ndarray]
    center_fn: Callable[[np.random.Generator, int], np.ndarray] | None = None


@dataclass
class Attribution:
    """An estimate read back as a map: per cell, its standard error, and per working pixel."""

    cells: np.ndarray
    stderr: np.ndarray
    pixels: np.ndarray
    signed: bool


class PixelSpace:
    """Additive per-patch noise on pixel values. Coordinates: one offset per cell (x channel).

    Measures sensitivity to brightness changes; vanilla and SmoothGrad maps are gradient
    magnitudes (summed over channels), IG and gradient x input are signed attributions."""

    name = "pixel"
    default_method = "ig"
    default_sigma = 0.1
    default_smooth = 0.15

    def __init__(self, image: np.ndarray, grid: PatchGrid, per_channel: bool = False,
                 baseline: np.ndarray | None = None):
        self.image = np.asarray(image, dtype=np.float32)
        self.baseline = self.image if baseline is None else _same_shape(baseline, self.image)
        self.grid = grid
        self.per_channel = per_channel
        self.channels = self.image.shape[2] if per_channel else 1
        self.dim = grid.cells * self.channels
        self.center = np.zeros(self.dim)
        self._delivery = self._clamps(self.image)

    def _clamps(self, base: np.ndarray) -> ClampedMean:
        cell = (self.grid.cell_ids[:, :, None] * self.channels
                + (np.arange(base.shape[2]) if self.per_channel else np.zeros(base.shape[2], int))[None, None, :])
        return ClampedMean(cell.reshape(-1), np.ones(base.size), -base.reshape(-1), 1.0 - base.reshape(-1), self.dim)

    def render(self, points: np.ndarray, base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Images for cell offsets ``points`` (n, dim) added to ``base`` (default: the image).
        With a per-point ``base`` (n, H, W, 3) the delivered offsets are computed pixelwise."""
        n = len(points)
        offsets = points.reshape(n, self.grid.rows, self.grid.cols, self.channels).astype(np.float32)
        if base is None:
            images = quantize(self.image[None] + self.grid.upsample(offsets))
            return images, self._delivery(points)
        images = quantize(base + self.grid.upsample(offsets))
        delivered = self.grid.pool(images - base)
        if not self.per_channel:
            delivered = delivered.mean(axis=3, keepdims=True)
        return images, delivered.reshape(n, -1)

    def prior(self) -> np.ndarray:
        """Smoothness penalty over the coordinates: neighbouring cells alike, channel by channel."""
        return np.kron(self.grid.laplacian(), np.eye(self.channels))

    def probe(self, method, score: Callable, cell_blocks: Sequence[np.ndarray]) -> Probe:
        """Offsets around the image; on the IG path one extra coordinate, never perturbed, carries
        the path position alpha (the offsets are then added to ``baseline + alpha (image - baseline)``)."""
        if method.center == "half":
            raise InputError(f"{method.name} mixes patches with the baseline: use it in mask space")
        blocks = [np.concatenate([b * self.channels + c for c in range(self.channels)]) for b in cell_blocks]
        if not method.path:
            def f(points):
                images, delivered = self.render(points)
                return score(images), delivered
            return Probe(f, self.center, blocks)
        diff = self.image - self.baseline

        def f_path(points):
            alpha = points[:, -1].astype(np.float32)[:, None, None, None]
            images, delivered = self.render(points[:, :-1], base=self.baseline[None] + alpha * diff[None])
            return score(images), np.concatenate([delivered, points[:, -1:]], axis=1)

        def center_fn(rng, n):
            c = np.zeros((n, self.dim + 1))
            c[:, -1] = rng.random(n)
            return c
        return Probe(f_path, np.zeros(self.dim + 1), blocks, center_fn)

    def attribution(self, method, flat: np.ndarray, flat_err: np.ndarray) -> Attribution:
        shape = (self.grid.rows, self.grid.cols, self.channels)
        g, g_err = flat[:self.dim].reshape(shape), flat_err[:self.dim].reshape(shape)  # d score / d offset
        grid = self.grid
        # per-pixel gradient: a cell offset moves every pixel of the cell (and channel)
        per_pixel = grid.upsample(g[None])[0] / grid.upsample(grid.cell_pixels[None, :, :, None])[0]
        if self.channels == 1:
            per_pixel = per_pixel / self.image.shape[2]
        if method.times_input:
            pixels = (per_pixel * (self.image - self.baseline)).sum(axis=2)
            cells = grid.pool(pixels[None, :, :, None])[0, :, :, 0] * grid.cell_pixels
        else:
            pixels = (np.abs(per_pixel).sum(axis=2) if self.channels > 1
                      else np.abs(per_pixel[:, :, 0]) * self.image.shape[2])
            cells = np.abs(g).sum(axis=2)
        return Attribution(cells, np.sqrt((g_err ** 2).sum(axis=2)), np.asarray(pixels, dtype=np.float32),
                           signed=method.times_input)


class MaskSpace:
    """Per-patch mixing between a baseline and the image. Coordinates: one ``m`` per cell.

    Every method gives a signed attribution: the effect on the score of removing each patch."""

    name = "mask"
    default_method = "quarters"
    default_sigma = 0.3
    default_smooth = 0.5

    def __init__(self, image: np.ndarray, grid: PatchGrid, baseline: np.ndarray, per_channel: bool = False):
        if per_channel:
            raise InputError("mask space has one coordinate per patch; per-channel noise is for pixel space")
        self.image = np.asarray(image, dtype=np.float32)
        self.baseline = _same_shape(baseline, self.image)
        self.grid = grid
        self.dim = grid.cells
        self.center = np.ones(self.dim)
        self.diff = self.image - self.baseline
        self._diff255, self._base255 = self.diff * 255, self.baseline * 255
        self._levels = None  # two mask levels and their uniform renderings (two-level masks copy from them)
        # value p moves by m*d_p from b_p and is clipped to [0, 1]: in units of m the change is
        # clamp(m, lo_p, hi_p) with hi_p = (1 - b_p)/d_p or -b_p/d_p; weight d_p^2 (least squares)
        d = self.diff.reshape(-1).astype(np.float64)
        b = self.baseline.reshape(-1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            hi = np.where(d > 0, (1 - b) / d, np.where(d < 0, -b / d, np.inf))
            lo = np.where(d > 0, -b / d, np.where(d < 0, (1 - b) / d, -np.inf))
        cells = np.repeat(grid.cell_ids.reshape(-1), self.image.shape[2])
        self._delivery = ClampedMean(cells, d * d, np.minimum(lo, 0.0), np.maximum(hi, 0.0), grid.cells)

    RENDER_VERSION = "mask-1"  # change it when render() changes what an image looks like (cache keys)

    def keyed(self, points: np.ndarray) -> KeyedInputs:
        """The images for ``points`` as keyed inputs: keys from the points (and this space's
        image, baseline and grid), pixels rendered only for the images a model must send."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256(f"{self.RENDER_VERSION}:{self.image.shape}:{self.grid.rows}x{self.grid.cols}".encode())
            h.update(np.ascontiguousarray(self.image).tobytes())
            h.update(np.ascontiguousarray(self.baseline).tobytes())
            self._fingerprint = h.hexdigest()
        return keyed_points(points, self._fingerprint, lambda p: self.render(p)[0])

    def render(self, points: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Images for mask values ``points`` (n, cells), and the mask values delivered.

        ``out``: an optional float32 ``(n, H, W, 3)`` buffer to write into (reusing one buffer
        halves the rendering time: fresh 20 MB arrays cost page faults)."""
        n = len(points)
        if out is None or out.shape != (n,) + self.image.shape:
            out = np.empty((n,) + self.image.shape, dtype=np.float32)
        cells = points.reshape(n, self.grid.rows, self.grid.cols)
        low, high = (cells.min(), cells.max()) if n else (0.0, 0.0)
        if np.all((cells == low) | (cells == high)):  # two levels: binary masks, one-patch steps
            self._copy_cells(cells == high, (float(low), float(high)), out)
        else:
            self._mix(cells, out)
        return out, self._delivery(points)

    def _mix(self, cells: np.ndarray, out: np.ndarray) -> None:
        """Pixels ``baseline + m (image - baseline)``, clipped and 8-bit quantised, into ``out``."""
        m = self.grid.upsample(cells.astype(np.float32))
        np.multiply(m[..., None], self._diff255, out=out)
        np.add(out, self._base255, out=out)
        np.clip(out, 0.0, 255.0, out=out)
        np.rint(out, out=out)
        np.multiply(out, np.float32(1 / 255), out=out)

    def _copy_cells(self, high: np.ndarray, levels: tuple[float, float], out: np.ndarray) -> None:
        """Masks with two levels (banzhaf's 0 and 1; ig-steps' two sides of a step): each cell
        copied from the rendering of the uniform mask at its level, the very pixels :meth:`_mix`
        gives it, in one pass instead of five."""
        if self._levels is None or self._levels[0] != levels:
            ends = np.empty((2,) + self.image.shape, dtype=np.float32)
            self._mix(np.array(levels, dtype=np.float32)[:, None, None] * np.ones((1, self.grid.rows, self.grid.cols)),
                      ends)
            self._levels = (levels, ends)
        ends = self._levels[1]
        rows, cols = self.grid.row_edges, self.grid.col_edges
        for i in range(self.grid.rows):
            for j in range(self.grid.cols):
                box = (slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))
                on = high[:, i, j]
                out[(on,) + box] = ends[1][box]
                out[(~on,) + box] = ends[0][box]

    def prior(self) -> np.ndarray:
        """Smoothness penalty over the coordinates: neighbouring cells alike."""
        return self.grid.laplacian()

    def on_grid(self, grid: PatchGrid) -> "MaskSpace":
        """The same image and baseline on another grid."""
        return MaskSpace(self.image, grid, self.baseline)

    def probe(self, method, score: Callable, cell_blocks: Sequence[np.ndarray]) -> Probe:
        """Masks around ``m = 1`` (the image), on the IG path around ``m = alpha`` (one random
        alpha per direction, shared by all patches), or around ``m = 1/2`` (half removed)."""
        buffer = [None]  # one reusable image buffer: the score function consumes images at once

        def f(points):
            if getattr(score, "accepts_keys", False):  # a content-cached model: cached answers need no pixels
                return score(self.keyed(points)), self._delivery(points)
            images, delivered = self.render(points, out=buffer[0])
            buffer[0] = images
            return score(images), delivered

        center_fn = None
        if method.path:
            def center_fn(rng, n):
                return np.repeat(rng.random((n, 1)), self.dim, axis=1)
        center = np.full(self.dim, 0.5) if method.center == "half" else self.center
        return Probe(f, center, list(cell_blocks), center_fn)

    def attribution(self, method, flat: np.ndarray, flat_err: np.ndarray) -> Attribution:
        shape = (self.grid.rows, self.grid.cols)
        cells = flat.reshape(shape)
        return Attribution(cells, flat_err.reshape(shape), self.grid.upsample(cells[None])[0].astype(np.float32),
                           signed=True)


def make_baseline(image: np.ndarray, kind: str = "blur", radius: float | None = None) -> np.ndarray:
    """The 'removed' image: a strong blur (default), the mean colour, or black."""
    if kind == "blur":
        return blur(image, radius if radius is not None else max(image.shape[:2]) / 16)
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1)), image.shape).astype(np.float32).copy()
    if kind == "black":
        return np.zeros_like(image)
    raise InputError(f"unknown baseline {kind!r} (blur, mean or black)")


def patch_grid(image: np.ndarray, grid: int | tuple[int, int]) -> PatchGrid:
    """A ``grid x grid`` (or ``(rows, cols)``) grid over ``image``."""
    rows, cols = (grid, grid) if isinstance(grid, (int, np.integer)) else grid
    return PatchGrid(image.shape[0], image.shape[1], int(rows), int(cols))


def _baseline(image: np.ndarray, baseline) -> np.ndarray:
    return as_float_image(baseline if isinstance(baseline, np.ndarray) else make_baseline(image, baseline))


@dataclass(frozen=True, eq=False)
class Mask:
    """Mask space as a part of a saliency map: each cell of a ``grid`` mixed between the image and
    the ``baseline`` (``blur``, ``mean``, ``black`` or an image of the same shape)."""

    grid: int | tuple[int, int] = 14
    baseline: str | np.ndarray = "blur"
    name = MaskSpace.name
    default_method = MaskSpace.default_method
    open_method = "banzhaf"  # the default among the methods any sampler can draw

    def bind(self, image: np.ndarray) -> MaskSpace:
        return MaskSpace(image, patch_grid(image, self.grid), baseline=_baseline(image, self.baseline))


@dataclass(frozen=True, eq=False)
class Pixel:
    """Pixel space as a part of a saliency map: additive noise per cell of a ``grid`` (per colour
    channel with ``per_channel``); the ``baseline`` starts the path of Integrated Gradients."""

    grid: int | tuple[int, int] = 14
    baseline: str | np.ndarray = "blur"
    per_channel: bool = False
    name = PixelSpace.name
    default_method = PixelSpace.default_method
    open_method = PixelSpace.default_method

    def bind(self, image: np.ndarray) -> PixelSpace:
        return PixelSpace(image, patch_grid(image, self.grid), per_channel=self.per_channel,
                          baseline=_baseline(image, self.baseline))


SPACES = {space.name: space for space in (Mask, Pixel)}


def _same_shape(baseline: np.ndarray, image: np.ndarray) -> np.ndarray:
    baseline = np.asarray(baseline, dtype=np.float32)
    if baseline.shape != image.shape:
        raise InputError("the baseline must have the image's shape")
    return baseline
