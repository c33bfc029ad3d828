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
    path.mkdir(parents=True, exist_ok=True)
    return path
