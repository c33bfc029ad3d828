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


def read_json_object(path: str, what: str, shape: str, hint: str = "") -> dict:
    """The JSON object in the file at ``path`` (a spec, a price table...), or one clear error line
    naming ``what`` it is, the ``shape`` it must have and, if missing, the ``hint`` how to give one."""
    import json

    from .errors import InputError

    if not os.path.isfile(path):
        raise InputError(f"{what} not found: {path}{f' ({hint})' if hint else ''}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must be {shape}")
    return data
