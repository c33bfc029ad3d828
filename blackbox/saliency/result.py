"""What a saliency run returns: the map, its per-cell standard errors, and what it cost."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..estimators import GradientEstimate
from .spaces import PatchGrid
from ..images import ImageView


@dataclass(frozen=True)
class SaliencyResult:
    """A saliency map plus everything needed to judge it, built once by :func:`saliency`.

    ``cells`` is the estimate per patch; ``map`` is the same on the working image (each pixel
    its cell's value in mask space; per-pixel gradient x input in pixel space). With a ``view``
    (the crop and resize the model saw) ``full_map`` is the map at the original image's
    resolution (0 where the model saw nothing) and ``display_map`` the cell map smoothly
    upsampled (bilinear between cell centres) for drawing.
    """

    map: np.ndarray = field(repr=False)
    cells: np.ndarray = field(repr=False)
    stderr: np.ndarray = field(repr=False)
    method: str
    space: str
    estimator: str
    cell_grid: PatchGrid = field(repr=False)
    blocks: int
    sigma: float
    signed: bool
    queries: int
    seconds: float
    model_seconds: float
    stopped: str | None = None
    queries_saved: int = 0     # left unspent when target_error was reached early
    allocator: str | None = None
    focus: float = 0.0         # share of cells re-measured in a second stage (blackbox.saliency.focus)
    estimate: GradientEstimate | None = field(default=None, repr=False)
    target: object | None = None
    view: ImageView | None = field(default=None, repr=False)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.cell_grid.rows, self.cell_grid.cols)

    @property
    def full_map(self) -> np.ndarray:
        """The raw map at the original image's resolution (the working map without a view)."""
        return self.view.to_original(self.map) if self.view is not None else self.map

    @property
    def display_map(self) -> np.ndarray:
        """The cell map upsampled bilinearly between cell centres, at the original resolution."""
        if self.view is None:
            return self.cell_grid.smooth_upsample(self.cells)
        top, left, height, width = self.view.box
        out = np.zeros(self.view.original, dtype=np.float32)
        out[top:top + height, left:left + width] = self.cell_grid.smooth_upsample(self.cells, height, width)
        return out

    @property
    def overhead(self) -> float:
        """Share of wall time spent outside the model (rendering, estimation, bookkeeping)."""
        return max(0.0, 1.0 - self.model_seconds / self.seconds) if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"method": self.method, "space": self.space, "estimator": self.estimator,
                "grid": list(self.grid), "blocks": self.blocks, "sigma": self.sigma,
                "queries_used": self.queries, "seconds": round(self.seconds, 3),
                "model_seconds": round(self.model_seconds, 3), "overhead": round(self.overhead, 4),
                "stopped": self.stopped, "allocator": self.allocator, "focus": self.focus,
                "queries_saved": self.queries_saved,
                "mean_stderr": float(np.mean(self.stderr)) if np.all(np.isfinite(self.stderr)) else None}
