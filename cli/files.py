"""Output files for the commands: checked before any query is paid, written atomically."""
from __future__ import annotations

import os

from blackbox.errors import InputError


def check_writable(path: str, what: str) -> None:
    """Fail now (before anything is spent) if ``path`` cannot be written."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or path.endswith((os.sep, "/")):
        raise InputError(f"cannot write {what} {path}: it is a folder; give a file name")
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {what} {path}: folder is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {what} {path}: the file is read-only")


def check_outputs(outputs: dict[str, str | None], inputs: tuple[str, ...] = ()) -> None:
    """Every output (``{what: path}``) writable, none the same file as another or as an input."""
    seen: dict[str, str] = {}
    sources = {os.path.realpath(p) for p in inputs if p}
    for what, path in outputs.items():
        if not path:
            continue
        check_writable(path, what)
        real = os.path.realpath(path)
        if real in sources:
            raise InputError(f"{what} {path} is the input image: it would be overwritten; give another name")
        if real in seen:
            raise InputError(f"{what} and {seen[real]} are the same file ({path}); give them different names")
        seen[real] = what


def check_figure_format(path: str | None, what: str = "the overlay") -> None:
    """The picture's extension must be one matplotlib writes (known before any query is paid)."""
    if not path:
        return
    from matplotlib.backend_bases import FigureCanvasBase

    ext = os.path.splitext(path)[1].lower().lstrip(".") or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext not in formats:
        raise InputError(f"cannot write {what} as .{ext}: use one of {', '.join('.' + f for f in sorted(formats))}")


def save_npy(path: str, array) -> None:
    """``np.save`` through a temporary file: an interrupted write never leaves half a file."""
    import numpy as np

    tmp = f"{path}.{os.getpid()}.tmp.npy"
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_text(path: str, text: str) -> None:
    """Write a text file through a temporary file (never half a file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
