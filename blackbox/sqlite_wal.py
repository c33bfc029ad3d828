"""Connections to the SQLite files several processes share (the budget ledger, the query cache).

WAL mode lets readers and one writer work at once, and ``synchronous=NORMAL`` keeps every commit
across a killed process. Switching a new file to WAL needs it alone for a moment: when several
processes (or threads) open the same new file at once, SQLite tells the losers "database is
locked" straight away instead of waiting out the busy timeout, so :func:`connect_wal` retries
until ``timeout``.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

RETRY_PAUSE = 0.02  # seconds between attempts to switch a new file to WAL


def connect_wal(path: str | os.PathLike, timeout: float) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode, shareable across threads, that waits up
    to ``timeout`` seconds for locks (the switch to WAL included); the folder is made if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_PAUSE)


@contextmanager
def immediate(conn: sqlite3.Connection):
    """One write transaction on an autocommit connection, taking the write lock at once (``BEGIN
    IMMEDIATE``: one writer at a time, across processes): committed whole or rolled back whole."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
