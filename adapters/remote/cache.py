"""A persistent query cache: SQLite (WAL) in the user cache directory.

Keys come from :func:`~blackbox.adapters.remote.engine.request_key` (endpoint, request content,
replica index; never credentials). Only answers that were validated (could be scored) are stored,
and every answer is committed as it arrives, so a run that is killed (even with SIGKILL) keeps
everything answered so far; WAL + a busy timeout let several processes write at once without
corrupting the file. A damaged file is reported in one line (``blackbox cache clear`` removes
it); if writing fails mid-run the run goes on without caching, with a warning.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

from blackbox.errors import InputError
from blackbox.paths import cache_dir
from blackbox.sqlite_wal import connect_wal

SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, endpoint TEXT, value TEXT NOT NULL, created REAL NOT NULL)"""


def default_cache_path() -> Path:
    return cache_dir("remote") / "queries.sqlite"


def _warn(message: str) -> None:
    print(f"blackbox: warning: {message}", file=sys.stderr, flush=True)


class ResponseCache:
    """``get_many(keys) -> {key: value}``, ``put(key, value)``; values are JSON-able dicts.

    ``repair=True`` (``blackbox cache clear``): a damaged file is removed and started afresh
    (``repaired`` says so) instead of raising."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 30.0, repair: bool = False,
                 warn=_warn):
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self.warn = warn
        self.repaired = False
        self._repair = repair
        self._writable = True
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []  # every thread's, so close() closes them all
        self._lock = threading.Lock()
        try:
            self._open()
        except sqlite3.Error as exc:
            self._start_afresh(exc)

    def _start_afresh(self, exc) -> None:
        """A damaged file: raise, or (``repair``) remove it and open an empty cache."""
        if not self._repair:
            raise self._damaged(exc) from None
        self.close()
        self._remove_files()
        self.repaired = True
        try:
            self._open()
        except sqlite3.Error as again:
            raise self._damaged(again) from None

    def _open(self) -> None:
        if self.path.is_dir():
            raise sqlite3.DatabaseError("it is a folder")
        conn = self._conn()
        with conn:
            conn.execute(SCHEMA)
        conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM responses LIMIT 1)").fetchone()

    def _damaged(self, exc) -> InputError:
        return InputError(f"the query cache {self.path} is unusable ({exc}): run 'blackbox cache clear' "
                          "to remove it, or pass --no-cache")

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = Path(f"{self.path}{suffix}")
            if candidate.is_file() or candidate.is_symlink():
                candidate.unlink()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_wal(self.path, self.timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the file (autocommit), e.g. for the batch records kept beside
        the answers (:mod:`.batch_records`)."""
        return self._conn()

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        try:
            conn = self._conn()
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                rows = conn.execute(f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(part))})",
                                    part).fetchall()
                for key, value in rows:
                    try:
                        entry = json.loads(value)
                    except (TypeError, ValueError):  # a damaged row is a miss, not a crash
                        continue
                    if isinstance(entry, dict) and isinstance(entry.get("body"), dict):
                        out[key] = entry
        except sqlite3.Error as exc:
            raise self._damaged(exc) from None
        return out

    def put(self, key: str, value: dict, endpoint: str = "") -> None:
        """Store one answer; if the file cannot be written, warn once and go on without caching."""
        if not self._writable:
            return
        blob = json.dumps(value, separators=(",", ":"), allow_nan=False)
        try:
            self._conn().execute("INSERT OR REPLACE INTO responses (key, endpoint, value, created) VALUES (?, ?, ?, ?)",
                                 (key, endpoint, blob, time.time()))
        except sqlite3.Error as exc:
            self._writable = False
            self.warn(f"cannot write the query cache {self.path} ({exc}); going on without caching "
                      "(run 'blackbox cache clear' afterwards)")

    def stats(self) -> dict:
        try:
            conn = self._conn()
            n, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM responses").fetchone()
            first, last = conn.execute("SELECT MIN(created), MAX(created) FROM responses").fetchone()
        except sqlite3.Error as exc:
            raise self._damaged(exc) from None
        files = [self.path, Path(f"{self.path}-wal")]
        on_disk = sum(p.stat().st_size for p in files if p.exists())
        return {"path": str(self.path), "entries": int(n), "payload_bytes": int(size), "disk_bytes": on_disk,
                "oldest": first, "newest": last}

    def clear(self, older_than_days: float | None = None) -> int:
        try:
            conn = self._conn()
            if older_than_days is None:
                n = conn.execute("DELETE FROM responses").rowcount
            else:
                n = conn.execute("DELETE FROM responses WHERE created < ?",
                                 (time.time() - older_than_days * 86400,)).rowcount
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
        except sqlite3.Error as exc:  # a damaged page: with repair, the file goes
            self._start_afresh(exc)
            return 0
        return int(n)

    def close(self):
        """Close every thread's connection (the engine's workers each have one)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
