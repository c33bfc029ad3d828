"""Where blackbox keeps files: the user cache directory (override with BLACKBOX_CACHE_DIR)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("BLACKBOX_CACHE_DIR")
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("blackbox", appauthor=False)
    path = Path(root, *parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from .errors import InputError

        raise InputError(f"cannot use the cache folder {path} ({exc.strerror or exc}): "
                         "point BLACKBOX_CACHE_DIR at a folder you can write") from None
    return path
