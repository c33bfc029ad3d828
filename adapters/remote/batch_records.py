"""Batches in flight, recorded in the query cache's database so that they outlive the process.

A batch is recorded before anything is uploaded (its endpoint, the digest of its request file:
a hash of the sorted custom ids, which are the requests' cache keys; one row per request), then
the id of the uploaded file, then the provider's batch id. A run killed while its batch is in
flight finds it again by the requests it is waiting for (:meth:`BatchRecords.open_for`): a line
stays *open* until an answer for it has been taken into the cache or the batch has said it
failed, so a rerun with the same command polls that batch (and reads its output file) instead of
paying again. The query cache file is the home because reruns already rely on it: it is per
machine (every endpoint in one file, keyed by endpoint), kept across runs, and a many-images run
shares it between its workers; ``blackbox cache clear`` removes answers, not these records.

Every write commits at once (SQLite WAL, ``synchronous=NORMAL``), so a SIGKILL loses nothing
that was recorded before it.
"""
from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Iterable

from blackbox.errors import InputError
from blackbox.sqlite_wal import immediate

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL, "
    "digest TEXT NOT NULL, file_id TEXT, batch_id TEXT, lines INTEGER NOT NULL, created REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS batch_lines (batch INTEGER NOT NULL, key TEXT NOT NULL, "
    "open INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (batch, key))",
    "CREATE INDEX IF NOT EXISTS batch_lines_open ON batch_lines (key) WHERE open = 1",
)
CHUNK = 500  # keys per SQL statement


def file_digest(endpoint: str, keys: Iterable[str]) -> str:
    """What identifies a request file: its endpoint and its custom ids (cache keys), sorted."""
    h = hashlib.sha256(endpoint.encode())
    for key in sorted(keys):
        h.update(b"\n" + key.encode())
    return h.hexdigest()


@dataclass
class Record:
    """One batch as recorded: ``row`` (ours), the provider's ``file_id`` and ``batch_id`` (None
    until known) and the keys of its lines still open."""

    row: int
    digest: str
    file_id: str | None
    batch_id: str | None
    open: set = field(default_factory=set)


class BatchRecords:
    """The ``batches`` and ``batch_lines`` tables of a :class:`~.cache.ResponseCache`'s file."""

    def __init__(self, cache):
        self.cache = cache
        try:
            with immediate(self.cache.connection()) as conn:
                for statement in SCHEMA:
                    conn.execute(statement)
        except sqlite3.Error as exc:
            raise self._unusable(exc) from None

    def _unusable(self, exc) -> InputError:
        return InputError(f"cannot record batches in the query cache {self.cache.path} ({exc}): a batch that is "
                          "not recorded could not be resumed, so none is sent ('blackbox cache clear' repairs "
                          "a damaged file)")

    def _write(self, statements) -> int | None:
        """Run ``[(sql, args | [args...])]`` in one transaction; the last row id."""
        try:
            with immediate(self.cache.connection()) as conn:
                last = None
                for sql, args in statements:
                    if isinstance(args, list):
                        conn.executemany(sql, args)
                    else:
                        last = conn.execute(sql, args).lastrowid
                return last
        except sqlite3.Error as exc:
            raise self._unusable(exc) from None

    def start(self, endpoint: str, keys: list[str]) -> Record:
        """Record a batch about to be uploaded (every line open); before anything leaves."""
        digest = file_digest(endpoint, keys)
        row = self._write([("INSERT INTO batches (endpoint, digest, lines, created) VALUES (?, ?, ?, ?)",
                            (endpoint, digest, len(keys), time.time()))])
        self._write([("INSERT OR IGNORE INTO batch_lines (batch, key) VALUES (?, ?)", [(row, k) for k in keys])])
        return Record(row, digest, None, None, set(keys))

    def uploaded(self, record: Record, file_id: str) -> None:
        """The request file is at the provider (a rerun can look for a batch made from it)."""
        record.file_id = file_id
        self._write([("UPDATE batches SET file_id = ? WHERE id = ?", (file_id, record.row))])

    def created(self, record: Record, batch_id: str) -> None:
        """The batch exists at the provider: a rerun polls it."""
        record.batch_id = batch_id
        self._write([("UPDATE batches SET batch_id = ? WHERE id = ?", (batch_id, record.row))])

    def close(self, record: Record, keys: Iterable[str]) -> None:
        """These lines have their verdict (answered into the cache, or failed)."""
        keys = [k for k in keys if k in record.open]
        if keys:
            self._write([("UPDATE batch_lines SET open = 0 WHERE batch = ? AND key = ?",
                          [(record.row, k) for k in keys])])
            record.open.difference_update(keys)

    def forget(self, record: Record) -> None:
        """A batch that never started at the provider (nothing to wait for)."""
        self._write([("DELETE FROM batch_lines WHERE batch = ?", (record.row,)),
                     ("DELETE FROM batches WHERE id = ?", (record.row,))])
        record.open.clear()

    def open_for(self, endpoint: str, keys: Iterable[str]) -> list[Record]:
        """The recorded batches to ``endpoint`` with an open line for any of ``keys``, oldest first."""
        keys = list(keys)
        try:
            conn = self.cache.connection()
            rows: set[int] = set()
            for start in range(0, len(keys), CHUNK):
                part = keys[start:start + CHUNK]
                rows.update(r for (r,) in conn.execute(
                    f"SELECT DISTINCT l.batch FROM batch_lines l JOIN batches b ON b.id = l.batch WHERE l.open = 1 "
                    f"AND b.endpoint = ? AND l.key IN ({','.join('?' * len(part))})", [endpoint, *part]))
            return [self._record(conn, row) for row in sorted(rows)]
        except sqlite3.Error as exc:
            raise self._unusable(exc) from None

    @staticmethod
    def _record(conn, row: int) -> Record:
        digest, file_id, batch_id = conn.execute("SELECT digest, file_id, batch_id FROM batches WHERE id = ?",
                                                 (row,)).fetchone()
        keys = {k for (k,) in conn.execute("SELECT key FROM batch_lines WHERE batch = ? AND open = 1", (row,))}
        return Record(row, digest, file_id, batch_id, keys)
