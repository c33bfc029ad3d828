"""Output files for the commands: checked before any query is paid, written atomically."""
from __future__ import annotations

import os

from blackbox.errors import InputError


def check_writable(path: str, what: str) -> None:
    """Fail now (before anything is spent) if ``path`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"cannot write {what} {path}: it is a folder")
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {what} {path}: folder is not writable")


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
