"""What :func:`blackbox.explain_many` returns and writes: one :class:`ImageResult` per image, the
:class:`BatchResult` of the run, and the :class:`ResultsFolder` that makes a run resumable."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..images import ImageView, load_image


# -- one result per image -------------------------------------------------------------------------
@dataclass
class ImageResult:
    """The explanation of one image (or why there is none).

    ``status``: ``done``; ``stopped`` (the budget ran out: the map holds what was paid for, and
    a rerun redoes it); ``failed`` (the image could not be explained: ``error`` says why);
    ``pending`` (never started: the budget ran out first, or the run was interrupted). Within a
    batched run an image is ``waiting`` while its requests wait for the run's next batch."""

    name: str
    source: str | None
    digest: str
    status: str
    requested_target: Any = None
    target_label: str | None = None
    target_index: int | None = None
    top5: list = field(default_factory=list)
    queries: int = 0
    seconds: float = 0.0
    faithfulness: dict | None = None
    details: dict = field(default_factory=dict)     # SaliencyResult.summary() and remote usage
    view: tuple | None = None                        # (original, box, size) of the model's view
    map: np.ndarray | None = field(default=None, repr=False)   # attribution on the working image
    cells: np.ndarray | None = field(default=None, repr=False)
    stderr: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None
    resumed: bool = False
    settings: dict | None = field(default=None, repr=False)  # of a result read back from a folder

    @property
    def full_map(self) -> np.ndarray | None:
        """The map at the image's own resolution (0 where the model does not look)."""
        return None if self.map is None else self.image_view.to_original(self.map)

    @property
    def image_view(self) -> ImageView:
        original, box, size = self.view
        return ImageView(tuple(original), tuple(box), tuple(size))

    def row(self) -> dict:
        """One line of the summary table."""
        out = {"name": self.name, "status": self.status, "target": self.target_label,
               "target_index": self.target_index,
               "top5": [{"label": l, "probability": round(p, 6), "index": i} for l, p, i in self.top5],
               "queries": self.queries, "seconds": round(self.seconds, 3)}
        if self.faithfulness:
            out.update(deletion_auc=self.faithfulness["deletion_auc"], insertion_auc=self.faithfulness["insertion_auc"])
        for key in ("paid", "cached"):
            if key in self.details:
                out[key] = self.details[key]
        if self.error:
            out["error"] = self.error
        return out

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "source", "digest", "status", "requested_target",
                                          "target_label", "target_index", "queries", "seconds",
                                          "faithfulness", "details", "error")}
        d["top5"] = [list(t) for t in self.top5]
        d["view"] = [list(v) for v in self.view] if self.view else None
        return d

    @classmethod
    def from_files(cls, folder: Path, name: str) -> "ImageResult | None":
        try:
            data = json.loads((folder / f"{name}.json").read_text())
            result = cls(**{k: v for k, v in data.items() if k not in ("top5", "view", "settings")},
                         top5=[tuple(t) for t in data.get("top5", [])],
                         view=tuple(tuple(v) for v in data["view"]) if data.get("view") else None)
            if result.status != "failed":
                with np.load(folder / f"{name}.npz") as arrays:
                    result.map, result.cells, result.stderr = arrays["map"], arrays["cells"], arrays["stderr"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: the image is simply redone
        result.settings = data.get("settings")
        return result

    def overlay(self, image: np.ndarray | None = None, title: str | None = None):
        """The map over the image (a matplotlib figure); the image is read from ``source`` if not given."""
        from ..plots import overlay

        if self.map is None:
            raise InputError(f"no map for {self.name} ({self.status}: {self.error})")
        if image is None:
            if self.source is None:
                raise InputError("pass the image: this result was made from an array")
            image = load_image(self.source)
        signed = self.details.get("signed", True)
        title = title if title is not None else f"{self.name}: '{self.target_label}' ({self.queries} queries)"
        return overlay(image, self.full_map, title=title, signed=signed, coverage=self.image_view.coverage())


# -- the results folder -----------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class ResultsFolder:
    """``OUT/NAME.json`` + ``OUT/NAME.npz`` per finished image, ``OUT/summary.json`` for the run,
    and ``OUT/.blackbox/`` for the shared budget ledger and the lock that keeps two runs apart."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out-dir {self.path} is a file, not a folder")
        try:
            (self.path / ".blackbox").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the results folder {self.path}: {exc.strerror}") from None
        self._lock = _lock_folder(self.path / ".blackbox" / "lock")

    @property
    def ledger_path(self) -> Path:
        return self.path / ".blackbox" / "budget.sqlite"

    def finished(self, item, settings: dict) -> ImageResult | None:
        """The stored result of ``item`` if it is done with these settings (else None)."""
        result = ImageResult.from_files(self.path, item.name)
        if result is None or result.status != "done" or result.digest != item.digest:
            return None
        stored = result.settings
        if stored != settings:
            changed = sorted(k for k in set(settings) | set(stored or {})
                             if (stored or {}).get(k) != settings.get(k))
            raise InputError(f"{self.path} holds results made with other settings ({', '.join(changed)}); "
                             "use another output folder or remove it")
        if result.requested_target != item.target:
            return None
        result.resumed = True
        return result

    def save(self, result: ImageResult, settings: dict) -> None:
        if result.map is not None:
            _atomic_write(self.path / f"{result.name}.npz", lambda fh: np.savez_compressed(
                fh, map=result.map, cells=result.cells, stderr=result.stderr))
        data = {**result.to_json(), "settings": settings}
        _atomic_write(self.path / f"{result.name}.json",  # written last: the image counts as done
                      lambda fh: fh.write(json.dumps(data, indent=1, default=_plain).encode()))

    def save_overlay(self, result: ImageResult, image: np.ndarray | None = None) -> None:
        from ..plots import save_figure

        fig = result.overlay(image)
        save_figure(fig, self.path / f"{result.name}.png")
        import matplotlib.pyplot as plt

        plt.close(fig)

    def save_summary(self, summary: dict) -> Path:
        path = self.path / "summary.json"
        _atomic_write(path, lambda fh: fh.write(json.dumps(summary, indent=1, default=_plain).encode()))
        return path

    def close(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _lock_folder(path: Path):
    """Hold an exclusive lock on ``path`` for the run (POSIX); a second run gets a clear error."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise InputError(f"another run is writing to {path.parent.parent}; wait for it or use another folder") from None
    return fh


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -- the whole run ---------------------------------------------------------------------------------
@dataclass(repr=False)
class BatchResult:
    """One :class:`ImageResult` per image (input order), the budget spent and the run's settings.

    ``batch["coffee"]`` or ``batch[0]`` is one image; ``batch.table()`` the summary as text (a
    notebook shows it as an HTML table); ``batch.summary()`` what ``summary.json`` holds."""

    results: list[ImageResult]
    spent: dict
    seconds: float
    executor: str
    workers: int
    settings: dict
    out_dir: str | None = None
    interrupted: str | None = None

    def __len__(self):
        return len(self.results)

    def __repr__(self) -> str:
        c = self.counts()
        return (f"<BatchResult: {c['done']} of {c['images']} images done ({c['resumed']} resumed), "
                f"{self.spent.get('queries', 0)} queries, {self.seconds:.1f} s, executor {self.executor}>\n"
                + self.table())

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, key) -> ImageResult:
        if isinstance(key, (int, np.integer)):
            return self.results[key]
        for result in self.results:
            if result.name == key:
                return result
        raise KeyError(key)

    @property
    def rows(self) -> list[dict]:
        return [r.row() for r in self.results]

    def counts(self) -> dict:
        c = Counter(r.status for r in self.results)
        return {"images": len(self.results), "done": c["done"], "stopped": c["stopped"], "failed": c["failed"],
                "pending": c["pending"], "resumed": sum(r.resumed for r in self.results)}

    def summary(self) -> dict:
        return {**self.counts(), "seconds": round(self.seconds, 3), "executor": self.executor,
                "workers": self.workers, "settings": self.settings, "spent": self.spent,
                "interrupted": self.interrupted, "images_table": self.rows}

    def _table_rows(self) -> tuple[list[str], list[list[str]]]:
        faith = any(r.faithfulness for r in self.results)
        head = ["image", "status", "target", "top-5", "queries", "seconds"] + (["deletion", "insertion"] if faith else [])
        body = []
        for r in self.results:
            top = ", ".join(f"{l} {p:.2f}" for l, p, _ in r.top5) or "-"
            line = [r.name, r.status + (" (resumed)" if r.resumed else ""), str(r.target_label or r.error or "-"),
                    top, str(r.queries), f"{r.seconds:.1f}"]
            if faith:
                f = r.faithfulness or {}
                line += [f"{f['deletion_auc']:.3f}" if f else "-", f"{f['insertion_auc']:.3f}" if f else "-"]
            body.append(line)
        return head, body

    def table(self) -> str:
        head, body = self._table_rows()
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        fmt = "  ".join(f"{{:{w}}}" for w in widths)
        return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])

    def _repr_html_(self) -> str:
        import html

        head, body = self._table_rows()
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in b) + "</tr>" for b in body)
        c = self.counts()
        caption = (f"{c['done']} of {c['images']} images explained ({c['resumed']} from an earlier run), "
                   f"{self.spent.get('queries', 0)} queries, {self.seconds:.1f} s, executor {self.executor}")
        return f"<table><caption>{html.escape(caption)}</caption><tr>{cells}</tr>{rows}</table>"

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("name")


