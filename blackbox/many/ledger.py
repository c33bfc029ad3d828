"""One budget for many processes: a ledger of spending that workers reserve from before they send.

A :class:`~blackbox.queries.Budget` lives in one process. When images are explained by a pool of
processes or a Ray cluster, every worker must draw on the *same* caps, so that no worker can
overspend what the others already spent or hold. :class:`SharedBudget` is a ``Budget`` whose
counts live in a :class:`Ledger`:

* :class:`SQLiteLedger` keeps them in a small SQLite file (one ``BEGIN IMMEDIATE`` transaction
  per reservation, so processes on one machine never both take the last query); in a results
  folder it also carries the spending over to a resumed run;
* the Ray executor serves the same ledger from an actor (see :mod:`blackbox.many.ray_executor`).

Reservations are held in the name of an *owner* (one attempt at one image). When a worker dies,
the driver calls :meth:`Ledger.reclaim` for the owners it was running: what they still held is
counted as spent, because a request in flight when a process dies may have been billed. The cap
is therefore never passed; at worst a crash costs the run the reservations it held.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import BudgetExceeded, InputError
from ..queries import Budget, Reservation
from ..sqlite_wal import connect_wal, immediate

FIELDS = ("queries", "tokens", "cost")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS caps (id INTEGER PRIMARY KEY CHECK (id = 0), queries INTEGER, tokens INTEGER, "
    "cost REAL, deadline REAL)",
    "CREATE TABLE IF NOT EXISTS spent (id INTEGER PRIMARY KEY CHECK (id = 0), queries INTEGER NOT NULL, "
    "tokens INTEGER NOT NULL, cost REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS holds (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, "
    "queries INTEGER NOT NULL, tokens INTEGER NOT NULL, cost REAL NOT NULL)",
    "INSERT OR IGNORE INTO spent VALUES (0, 0, 0, 0.0)",
)


class Ledger(Protocol):
    """Shared caps and spending. Amounts are ``(queries, tokens, cost)``; caps may be None; the
    deadline is a wall-clock time (``time.time()``) after which nothing more is reserved."""

    def caps(self) -> tuple:
        """``(max_queries, max_tokens, max_cost, deadline)``."""

    def reserve(self, owner: str, queries: int, tokens: int, cost: float) -> int:
        """Hold an amount (raises :class:`BudgetExceeded` if it does not fit); returns a ticket."""

    def grow(self, ticket: int, tokens: int, cost: float) -> None:
        """Hold more tokens/cost under a ticket (raises :class:`BudgetExceeded` if they do not fit)."""

    def settle(self, ticket: int, queries: int, tokens: int, cost: float) -> None:
        """Drop the hold and add what was really spent."""

    def record(self, queries: int, tokens: int, cost: float) -> None:
        """Add spending that already happened (no cap check: it cannot be undone)."""

    def reclaim(self, owner: str | None = None) -> int:
        """Count the holds of ``owner`` (of everyone when None) as spent; returns how many."""

    def totals(self) -> dict: ...


def exceeded_message(caps, spent, held, amount) -> str | None:
    """Why ``amount`` does not fit (None when it does)."""
    for what, cap, s, h, a in zip(FIELDS, caps, spent, held, amount):
        if cap is not None and s + h + a > cap + 1e-12:
            return (f"budget exhausted: {what} cap is {cap:g}, {s:g} spent and {h:g} held by "
                    f"running workers, {a:g} more requested")
    return None


class SQLiteLedger:
    """A :class:`Ledger` in an SQLite file (WAL), safe for many processes on one machine.

    Opening an existing file keeps its spending (a resumed run goes on from there) and sets the
    caps to the ones given."""

    def __init__(self, path: str | os.PathLike, max_queries: int | None = None,
                 max_tokens: int | None = None, max_cost: float | None = None, deadline: float | None = None,
                 timeout: float = 60.0):
        self.path = Path(path)
        self.timeout = timeout
        self._conn = None
        self._pid = None
        self._lock = threading.Lock()
        try:
            with self._transaction() as conn:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO caps VALUES (0, ?, ?, ?, ?)",
                             (max_queries, max_tokens, max_cost, deadline))
        except sqlite3.DatabaseError as exc:
            raise InputError(f"budget ledger {self.path} is unusable ({exc}); remove it") from None

    def __getstate__(self):  # a ledger travels to worker processes as its path
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state):
        self.path, self.timeout = state["path"], state["timeout"]
        self._conn, self._pid, self._lock = None, None, threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never share a connection across fork
            self._conn, self._pid = connect_wal(self.path, self.timeout), os.getpid()
        return self._conn

    @contextmanager
    def _transaction(self):
        with self._lock, immediate(self._connect()) as conn:  # one writer at a time, across processes
            yield conn

    @staticmethod
    def _state(conn):
        caps = conn.execute("SELECT queries, tokens, cost, deadline FROM caps WHERE id = 0").fetchone()
        spent = conn.execute("SELECT queries, tokens, cost FROM spent WHERE id = 0").fetchone()
        held = conn.execute("SELECT COALESCE(SUM(queries), 0), COALESCE(SUM(tokens), 0), "
                            "COALESCE(SUM(cost), 0.0), COUNT(*) FROM holds").fetchone()
        return caps, spent, held

    def caps(self) -> tuple:
        with self._transaction() as conn:
            return tuple(self._state(conn)[0])

    def _check(self, conn, amount) -> None:
        caps, spent, held = self._state(conn)
        if caps[3] is not None and time.time() >= caps[3]:
            raise BudgetExceeded("deadline reached: the run's time is up (--deadline)")
        message = exceeded_message(caps[:3], spent, held[:3], amount)
        if message:
            raise BudgetExceeded(message)

    def reserve(self, owner: str, queries: int, tokens: int = 0, cost: float = 0.0) -> int:
        with self._transaction() as conn:
            self._check(conn, (queries, tokens, cost))
            return conn.execute("INSERT INTO holds (owner, queries, tokens, cost) VALUES (?, ?, ?, ?)",
                                (owner, int(queries), int(tokens), float(cost))).lastrowid

    def grow(self, ticket: int, tokens: int = 0, cost: float = 0.0) -> None:
        with self._transaction() as conn:
            self._check(conn, (0, tokens, cost))
            conn.execute("UPDATE holds SET tokens = tokens + ?, cost = cost + ? WHERE id = ?",
                         (int(tokens), float(cost), ticket))

    def record(self, queries: int, tokens: int = 0, cost: float = 0.0) -> None:
        with self._transaction() as conn:
            self._spend(conn, queries, tokens, cost)

    def settle(self, ticket: int, queries: int, tokens: int = 0, cost: float = 0.0) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM holds WHERE id = ?", (ticket,))
            self._spend(conn, queries, tokens, cost)

    @staticmethod
    def _spend(conn, queries, tokens, cost):
        conn.execute("UPDATE spent SET queries = queries + ?, tokens = tokens + ?, cost = cost + ? WHERE id = 0",
                     (int(queries), int(tokens), float(cost)))

    def reclaim(self, owner: str | None = None) -> int:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        with self._transaction() as conn:
            q, t, c, n = conn.execute("SELECT COALESCE(SUM(queries), 0), COALESCE(SUM(tokens), 0), "
                                      f"COALESCE(SUM(cost), 0.0), COUNT(*) FROM holds {where}", args).fetchone()
            conn.execute(f"DELETE FROM holds {where}", args)
            self._spend(conn, q, t, c)
        return int(n)

    def totals(self) -> dict:
        with self._transaction() as conn:
            caps, spent, held = self._state(conn)
        out = {name: value for name, value in zip(FIELDS, spent)}
        out.update({f"max_{name}": cap for name, cap in zip(FIELDS, caps)}, deadline=caps[3])
        out.update({f"held_{name}": value for name, value in zip(FIELDS, held[:3])}, holds=held[3])
        out["cost"] = round(out["cost"], 6)
        return out

    def close(self):
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


@dataclass
class Ticket(Reservation):
    """A reservation held in a ledger."""

    ticket: int = 0


class SharedBudget(Budget):
    """A :class:`Budget` whose caps and spending live in a :class:`Ledger` shared by workers.

    Drop-in wherever a Budget goes (QueryRunner, remote engines). ``queries``/``tokens``/``cost``
    count what *this* process spent; :meth:`summary` and :attr:`remaining` read the shared totals.
    ``owner`` names the work the reservations belong to (set per image by the executors)."""

    def __init__(self, ledger: Ledger, owner: str = "main"):
        max_queries, max_tokens, max_cost, deadline = ledger.caps()
        seconds = None if deadline is None else max(0.0, deadline - time.time())
        super().__init__(max_queries=max_queries, max_tokens=max_tokens, max_cost=max_cost, max_seconds=seconds)
        self.ledger = ledger
        self.owner = owner

    @property
    def remaining(self) -> int | None:
        if self.max_queries is None:
            return None
        t = self.ledger.totals()
        return self.max_queries - t["queries"] - t["held_queries"]

    def reserve(self, queries: int, tokens: int = 0, cost: float = 0.0) -> Ticket:
        if queries < 0 or tokens < 0 or cost < 0:
            raise ValueError("a reservation cannot be negative")
        ticket = self.ledger.reserve(self.owner, queries, tokens, cost)
        return Ticket(queries, tokens, cost, ticket=ticket)

    def grow(self, reservation: Ticket, tokens: int = 0, cost: float = 0.0) -> None:
        self.ledger.grow(reservation.ticket, tokens, cost)
        reservation.tokens += tokens
        reservation.cost += cost

    def record(self, queries: int = 0, tokens: int = 0, cost: float = 0.0) -> None:
        self.ledger.record(queries, tokens, cost)
        self._count(queries, tokens, cost)

    def _count(self, queries, tokens, cost) -> None:
        with self._lock:
            self.queries += queries
            self.tokens += tokens
            self.cost += cost

    def settle(self, reservation: Ticket, tokens: int | None = None, cost: float | None = None,
               queries: int | None = None) -> None:
        with self._lock:
            if reservation.settled:
                raise RuntimeError("reservation settled twice")
            reservation.settled = True
        q = reservation.queries if queries is None else queries
        t = reservation.tokens if tokens is None else tokens
        c = reservation.cost if cost is None else cost
        self.ledger.settle(reservation.ticket, q, t, c)
        self._count(q, t, c)

    def summary(self) -> dict:
        t = self.ledger.totals()
        return {"queries": t["queries"], "max_queries": self.max_queries, "tokens": t["tokens"],
                "max_tokens": self.max_tokens, "cost": t["cost"], "max_cost": self.max_cost,
                "max_seconds": self.max_seconds}
