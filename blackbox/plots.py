"""Pictures people would rather look at than read: saliency overlays, learning curves (matplotlib)."""
from __future__ import annotations

import os
import tempfile

import numpy as np


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # a notebook backend already in use is fine
            pass
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write atomically: a failed or interrupted save never leaves a partial file behind."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(suffix=ext, dir=folder, prefix=".blackbox-")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def overlay(image: np.ndarray, saliency_map: np.ndarray, *, title: str = "", signed: bool = True,
            coverage: np.ndarray | None = None, clip_percentile: float = 99.0, ax=None,
            legend: str | None = None):
    """Draw ``saliency_map`` over ``image`` with a colour bar; returns the figure.

    Convention: signed maps use a diverging colormap centred on 0 (red supports the target, blue
    speaks against it, white is no effect); unsigned maps use 'inferno' from 0. Colours saturate
    at the ``clip_percentile`` of |map|. Pixels the model never saw (``coverage`` False) are
    greyed. ``legend`` labels the colour bar (say there what the map is, e.g. that a cell map
    was smoothly upsampled for display).
    """
    plt = _pyplot()
    if ax is None:
        aspect = image.shape[0] / image.shape[1]  # the panels' height follows the photo's: no blank bands
        fig, axes = plt.subplots(1, 2, figsize=(10, min(8.0, max(2.4, 4.4 * aspect + 0.7))),
                                 gridspec_kw={"width_ratios": [1, 1.12]})
    else:
        fig, axes = ax.figure, [None, ax]
    values = np.asarray(saliency_map, dtype=np.float64)
    seen = values[coverage] if coverage is not None and coverage.any() else values
    vmax = float(np.percentile(np.abs(seen), clip_percentile)) or 1e-12
    if axes[0] is not None:
        axes[0].imshow(image)
        axes[0].set_title("input")
        axes[0].axis("off")
    a = axes[1]
    a.imshow(np.mean(image, axis=2), cmap="gray", vmin=0, vmax=1)  # the photo in grey, under the colours
    shown = np.ma.masked_where(~coverage, values) if coverage is not None else values
    if signed:
        im = a.imshow(shown, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=0.6)
    else:
        im = a.imshow(shown, cmap="inferno", vmin=0, vmax=vmax, alpha=0.6)
    if coverage is not None and not coverage.all():
        a.imshow(np.ma.masked_where(coverage, np.ones(coverage.shape)), cmap="gray", vmin=0, vmax=2, alpha=0.6)
    a.axis("off")
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    cbar = fig.colorbar(im, cax=make_axes_locatable(a).append_axes("right", size="4%", pad=0.08))
    cbar.set_label(legend or ("attribution (target score)" if signed else "|gradient|"), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def learning_curves(runs: dict, *, x: str = "queries", metric: str = "accuracy", loss_label: str = "loss",
                    metric_label: str = "held-out accuracy", chance: float | None = None, title: str = ""):
    """Training curves of one or more runs (each a :class:`~blackbox.forward_learning.TrainResult`
    or anything with ``history`` and ``evals`` rows): the batch loss on the left and the held-out
    ``metric`` of its evaluations on the right, against training ``x`` (``"queries"`` or
    ``"step"``; runs without queries, like a backprop reference, need ``"step"``). The right panel
    is left out when no run was evaluated; ``chance`` draws a dashed line there."""
    if x not in ("queries", "step"):
        raise ValueError("x must be 'queries' or 'step'")
    plt = _pyplot()
    evaluated = any(len(r.evals) > 1 for r in runs.values())
    fig, axes = plt.subplots(1, 2 if evaluated else 1, figsize=(10 if evaluated else 6, 3.6), squeeze=False)
    left = axes[0, 0]
    for name, run in runs.items():
        rows = run.history
        left.plot([r[x] for r in rows], [r["loss"] for r in rows], lw=1, label=name)
    left.set_xlabel(f"training {x if x == 'queries' else 'step'}")
    left.set_ylabel(f"{loss_label} (batch mean)")
    left.xaxis.set_major_locator(plt.MaxNLocator(5))
    if len(runs) > 1:
        left.legend()
    if evaluated:
        right = axes[0, 1]
        for name, run in runs.items():
            rows = [e for e in run.evals if metric in e]
            right.plot([e[x] for e in rows], [e[metric] for e in rows], marker="o", label=name)
        if chance is not None:
            right.axhline(chance, color="grey", ls="--", label="chance")
        right.set_xlabel(left.get_xlabel())
        right.set_ylabel(metric_label)
        right.xaxis.set_major_locator(plt.MaxNLocator(5))
        right.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def ranked_captions(images, scores: np.ndarray, names, labels, *, count: int = 5, title: str = ""):
    """A row of images, each titled with its three most likely captions and their probabilities
    (softmax of ``scores`` (n, C) over the class ``names``; ``*`` marks the true one)."""
    plt = _pyplot()
    count = min(count, len(images))
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 3.4), squeeze=False)
    for ax, i in zip(axes[0], range(count)):
        ax.imshow(images[i])
        ax.axis("off")
        probs = np.exp(scores[i] - scores[i].max())
        probs /= probs.sum()
        order = np.argsort(-probs)[:3]
        lines = [f"{'*' if c == labels[i] else ' '} {names[c]}: {probs[c]:.2f}" for c in order]
        ax.set_title("\n".join(lines), fontsize=8, family="monospace", loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
