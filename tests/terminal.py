"""Start a command as a terminal would, so that a test's Ctrl-C (SIGINT) reaches it.

A shell that starts a job in the background (``nohup``, ``&``, some CI runners) sets SIGINT to
ignored for it, and an ignored signal stays ignored across ``exec``: Python then installs no
KeyboardInterrupt handler, and the SIGINT a test sends does nothing. The wrapper restores the
default, then becomes the command.
"""
from __future__ import annotations

import sys

_RESTORE = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.argv[1], sys.argv[1:])")


def interruptible(argv) -> list[str]:
    """``argv`` (its first item a path to an executable) started with SIGINT at its default."""
    return [sys.executable, "-c", _RESTORE, *map(str, argv)]
