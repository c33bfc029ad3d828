"""Import optional dependencies with a message that names the extra to install."""
from __future__ import annotations

import importlib

from blackbox.errors import MissingDependency


def require(module: str, extra: str, purpose: str = "", package: str | None = None):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(package or module, extra, purpose) from None
