"""A persistent query cache: SQLite (WAL) in the user cache directory.

Keys come from :func:`~blackbox.adapters.remote.engine.request_key` (endpoint, request content,
replica index; never credentials). Every answer is committed as it arrives, so a run that is
killed (even with SIGKILL) keeps everything answered so far, and WAL + a busy timeout let several
processes write at once without corrupting the file.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from blackbox.errors import InputError
from blackbox.paths import cache_dir

SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, endpoint TEXT, value TEXT NOT NULL, created REAL NOT NULL)"""


def default_cache_path() -> Path:
    return cache_dir("remote") / "queries.sqlite"


class ResponseCache:
    """``get_many(keys) -> {key: value}``, ``put(key, value)``; values are JSON-able dicts."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 30.0):
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self._local = threading.local()
        try:
            conn = self._conn()
            with conn:
                conn.execute(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"query cache {self.path} is unusable ({exc}); remove it or run "
                             "'blackbox cache clear'") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
        return conn

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        conn = self._conn()
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            rows = conn.execute(f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(part))})",
                                part).fetchall()
            for key, value in rows:
                try:
                    out[key] = json.loads(value)
                except ValueError:  # a damaged row is a miss, not a crash
                    continue
        return out

    def put(self, key: str, value: dict, endpoint: str = "") -> None:
        blob = json.dumps(value, separators=(",", ":"))
        self._conn().execute("INSERT OR REPLACE INTO responses (key, endpoint, value, created) VALUES (?, ?, ?, ?)",
                             (key, endpoint, blob, time.time()))

    def stats(self) -> dict:
        conn = self._conn()
        n, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM responses").fetchone()
        first, last = conn.execute("SELECT MIN(created), MAX(created) FROM responses").fetchone()
        files = [self.path, Path(f"{self.path}-wal")]
        on_disk = sum(p.stat().st_size for p in files if p.exists())
        return {"path": str(self.path), "entries": int(n), "payload_bytes": int(size), "disk_bytes": on_disk,
                "oldest": first, "newest": last}

    def clear(self, older_than_days: float | None = None) -> int:
        conn = self._conn()
        if older_than_days is None:
            n = conn.execute("DELETE FROM responses").rowcount
        else:
            n = conn.execute("DELETE FROM responses WHERE created < ?",
                             (time.time() - older_than_days * 86400,)).rowcount
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        return int(n)

    def close(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
