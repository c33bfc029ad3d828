"""Requests sent through a provider's Batch API (half price on OpenAI), resumably, under the same caps.

A :class:`Batcher` belongs to one :class:`~.engine.QueryEngine`. While the engine *collects*, the
requests it has no answer for are written here (:meth:`Batcher.record`: encoded at once, as the
lines of a JSONL request file kept in a temporary file, since images make them large) and
answered by placeholders. :meth:`Batcher.send` then sends everything collected and waits:

1. every collected request reserves its worst case at the batch price on the engine's budget:
   if they do not all fit, :class:`~blackbox.errors.BudgetExceeded` says so and nothing is uploaded;
2. requests an earlier run already sent (a batch recorded in the cache database, see
   :mod:`.batch_records`, with their lines still open) are not sent again: that batch is polled;
3. the rest are written as request files (``custom_id`` = the cache key; one file unless the
   provider's limits, 200 MB and 50,000 lines for OpenAI, need more), recorded, uploaded and
   created as batches;
4. the batches are polled (a progress line on stderr) until each is completed, expired,
   cancelled or failed; the budget's deadline stops the wait (the batch goes on at the provider;
   a rerun collects it);
5. every answer in the output file is checked by the transport and handed to
   :meth:`~.engine.QueryEngine.accept`, which charges it from its reported usage at the batch
   price, validates and caches it, exactly as a synchronous answer; a line in the error file is
   judged by :mod:`.outcomes` (429/5xx/expired/cancelled: not billed, sent again; 400...: the
   run stops);
6. what has no answer yet (an expired, cancelled or partly failed batch) is sent again as a new
   batch (said in one line), each request at most ``max_attempts`` times.

Reservations not used are released at the end; those of requests still in flight at the provider
when the wait stops are counted as spent (the provider may bill them).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from blackbox.errors import BudgetExceeded, EndpointRefused, ModelError, RetryableError

from .batch_records import BatchRecords, Record
from .openai_batch import refusal_of
from .outcomes import client_failed, status_error, verdict_of

MAX_FILE_BYTES = 190 << 20   # OpenAI takes request files up to 200 MB: keep a margin
MAX_FILE_LINES = 50_000      # and up to 50,000 requests
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.5, 1.5, 30.0  # seconds between polls: from half a second to 30
FINAL = ("completed", "failed", "expired", "cancelled")
ENCODERS = 4                 # threads encoding the images of collected requests


def _say(message: str) -> None:
    print(f"blackbox: {message}", file=sys.stderr, flush=True)


@dataclass
class Line:
    """One collected request: as keyed (with image stand-ins), its validator, and where its
    encoded JSONL line is in the spool."""

    request: dict
    validate: Callable | None
    offset: int
    size: int


class Spool:
    """The JSONL lines of the requests collected so far, in a temporary file."""

    def __init__(self, url: str):
        self.url = url
        self.lines: dict[str, Line] = {}
        self._dir: str | None = None
        self._file = None

    def __contains__(self, key: str) -> bool:
        return key in self.lines

    def add(self, key: str, request: dict, sent: dict, validate) -> None:
        """Append the line of ``sent`` (the request as it goes out) under ``key``."""
        if self._file is None:
            self._dir = tempfile.mkdtemp(prefix="blackbox-batch-")
            self._file = open(os.path.join(self._dir, "collected.jsonl"), "w+b")
        data = json.dumps({"custom_id": key, "method": "POST", "url": self.url, "body": sent},
                          separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"
        self._file.seek(0, os.SEEK_END)
        self.lines[key] = Line(request, validate, self._file.tell(), len(data))
        self._file.write(data)

    def write(self, keys: list[str], name: str) -> str:
        """A request file of ``keys``' lines, in the spool's folder; its path."""
        path = os.path.join(self._dir, name)
        with open(path, "wb") as out:
            for key in keys:
                line = self.lines[key]
                self._file.seek(line.offset)
                out.write(self._file.read(line.size))
        return path

    def clear(self) -> None:
        """Forget every line and remove the temporary files."""
        if self._file is not None:
            self._file.close()
            shutil.rmtree(self._dir, ignore_errors=True)
        self.lines, self._dir, self._file = {}, None, None


@dataclass
class Sent:
    """A batch being waited for: its record and its last known state (the provider's batch object)."""

    record: Record
    batch: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.batch.get("status") or "sent")

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass
class Flight:
    """One :meth:`Batcher.send`: the requests without an answer, their reservations, how many
    batches each has been in, and the last error of each."""

    waiting: dict
    held: dict
    sent: list = field(default_factory=list)   # this round's batches (the earlier rounds' are over)
    tries: Counter = field(default_factory=Counter)
    errors: dict = field(default_factory=dict)
    refusal: Exception | None = None


class Batcher:
    """Collects an engine's requests and sends them through ``api`` (an
    :class:`~.openai_batch.OpenAIBatchAPI`), recording batches in ``records``."""

    def __init__(self, engine, api, records: BatchRecords, say: Callable[[str], None] = _say):
        self.engine, self.api, self.records, self.say = engine, api, records, say
        self.spool = Spool(api.url)
        self.handed = 0                 # placeholders answered (stage gates compare before and after)
        self.answers: dict = {}         # answers taken from batches in this process (also cached)
        self.batch_ids: list[str] = []  # batches sent or collected in this process
        self.in_flight: list[str] = []  # batches still running when a wait stopped
        self.max_bytes, self.max_lines = MAX_FILE_BYTES, MAX_FILE_LINES
        self.poll = (POLL_FIRST, POLL_MAX)

    @property
    def endpoint(self) -> str:
        return self.engine.transport.endpoint

    def record(self, jobs: list[tuple[str, dict]], prepare, validate) -> None:
        """Collect ``jobs`` ``[(key, request)]`` (``prepare`` turns a request into what is sent:
        images encoded now, in a few threads) unless already collected."""
        jobs = [(key, request) for key, request in dict(jobs).items() if key not in self.spool]
        if prepare is None:
            sent = [request for _, request in jobs]
        else:
            with ThreadPoolExecutor(min(ENCODERS, max(1, len(jobs)))) as pool:
                sent = list(pool.map(prepare, [request for _, request in jobs]))
        for (key, request), body in zip(jobs, sent):
            self.spool.add(key, request, body, validate)

    # -- sending ----------------------------------------------------------------------------------
    def send(self, progress: bool = True) -> int:
        """Send everything collected, wait and take the answers (see the module's docstring);
        returns how many requests were collected (0: nothing to send)."""
        lines = dict(self.spool.lines)
        if not lines:
            return 0
        flight = Flight(dict(lines), self._reserve(lines))
        try:
            while flight.waiting:
                flight.sent = self._adopt(flight)
                covered = set().union(*(s.record.open for s in flight.sent))
                self._upload(flight, [k for k in flight.waiting if k not in covered])
                self._wait(flight.sent, progress)
                for s in flight.sent:
                    self._collect(s, flight)
                self._again(flight)
        finally:
            self._end(flight)
            self.spool.clear()
        return len(lines)

    def _reserve(self, lines: dict) -> dict:
        """Every request's worst case at the batch price, all or none (before anything is uploaded)."""
        try:
            held = self.engine.spending.reserve_all([line.request for line in lines.values()], batch=True)
        except BudgetExceeded as exc:
            raise BudgetExceeded(f"the batch of {len(lines)} requests does not fit the budget at batch prices "
                                 f"({exc}); nothing was uploaded") from None
        return dict(zip(lines, held))

    def _adopt(self, flight: Flight) -> list[Sent]:
        """The batches an earlier run sent with some of these requests and left open: wait for those."""
        out = []
        for record in self.records.open_for(self.endpoint, flight.waiting):
            if record.batch_id is None:  # recorded, but was it created before that run stopped?
                found = self.api.find(record.file_id) if record.file_id else None
                if found is None:
                    self.records.forget(record)
                    continue
                self.records.created(record, found["id"])
            mine = len(record.open.intersection(flight.waiting))
            self.say(f"batch {record.batch_id} (sent earlier) holds {mine} of these requests: waiting for it "
                     "instead of sending them again")
            out.append(Sent(record))
        return out

    def _upload(self, flight: Flight, keys: list[str]) -> None:
        """``keys`` as new batches (added to ``flight.sent`` as each is created): one request file
        each, split only at the provider's limits."""
        for part in self._parts(keys):
            record = self.records.start(self.endpoint, part)
            try:
                path = self.spool.write(part, f"requests-{record.row}.jsonl")
                size = os.path.getsize(path)
                self.records.uploaded(record, self.api.upload(path))
                batch = self.api.create(record.file_id, record.digest)
            except BaseException as exc:
                if not isinstance(exc, RetryableError) or record.file_id is None:
                    self.records.forget(record)
                raise self._no_batch_api(exc) if isinstance(exc, EndpointRefused) else exc
            self.records.created(record, batch["id"])
            self.engine.stats.add(batches=1)
            flight.sent.append(Sent(record, batch))
            self.say(f"sent {len(part)} requests as batch {batch['id']} ({size / 1e6:.1f} MB request file)")

    def _no_batch_api(self, exc: EndpointRefused) -> EndpointRefused:
        if exc.status in (404, 405):
            return EndpointRefused(f"{exc}; this endpoint may have no Batch API (drop --batch)", exc.status)
        return exc

    def _parts(self, keys: list[str]) -> list[list[str]]:
        """``keys`` in request files within ``max_bytes`` and ``max_lines`` each."""
        parts, part, size = [], [], 0
        for key in keys:
            line = self.spool.lines[key].size
            if part and (size + line > self.max_bytes or len(part) >= self.max_lines):
                parts.append(part)
                part, size = [], 0
            part.append(key)
            size += line
        return parts + ([part] if part else [])

    def _wait(self, sent: list[Sent], progress: bool) -> None:
        """Poll until every batch is final; a progress line on stderr; the budget's deadline stops it."""
        delay, started, shown = self.poll[0], time.monotonic(), None
        while True:
            for s in sent:
                if not s.final:
                    s.batch = self.api.retrieve(s.record.batch_id)
            line = _progress(sent, time.monotonic() - started)
            if progress and line != shown:
                _show(line, done=all(s.final for s in sent))
                shown = line
            running = [s.record.batch_id for s in sent if not s.final]
            if not running:
                return
            left = self.engine.budget.seconds_left()
            if left is not None and left <= delay:
                raise BudgetExceeded(f"deadline reached while batch {', '.join(running)} runs at the provider: "
                                     "rerun the same command to collect it (it is not paid again)")
            time.sleep(delay)
            delay = min(delay * POLL_GROWTH, self.poll[1])

    # -- answers ----------------------------------------------------------------------------------
    def _collect(self, sent: Sent, flight: Flight) -> None:
        """Take a finished batch's answers and errors for the requests waiting; close its lines."""
        batch = sent.batch
        if batch.get("id") and batch["id"] not in self.batch_ids:
            self.batch_ids.append(batch["id"])
        if sent.status == "failed":
            self.records.close(sent.record, list(sent.record.open))
            flight.refusal = flight.refusal or refusal_of(batch)
            return
        lines = self._lines(batch)
        ours = [k for k in sent.record.open if k in flight.waiting]
        for key in ours:
            self._take(key, lines.get(key), sent.status, flight)
        self.records.close(sent.record, ours)
        others = [k for k in sent.record.open if k not in flight.waiting]
        unanswered = {k for k in others if not _answered(lines.get(k))}
        self.records.close(sent.record, unanswered | self.engine.answered(others))

    def _lines(self, batch: dict) -> dict:
        """A finished batch's lines by custom id (an answer wins over an error for the same id);
        results the provider no longer has count as no answer (their requests are sent again)."""
        lines = {}
        for file_id in (batch.get("error_file_id"), batch.get("output_file_id")):
            if file_id:
                try:
                    found = self.api.lines(file_id)
                except EndpointRefused as exc:
                    self.say(f"cannot read the results of batch {batch.get('id')} ({exc})")
                    continue
                lines.update((str(line.get("custom_id")), line) for line in found)
        return lines

    def _take(self, key: str, line: dict | None, status: str, flight: Flight) -> None:
        """One request's outcome in a finished batch: accepted (charged, validated, cached), or
        an error judged by :mod:`.outcomes` (the request waits for the next batch, or stops the run)."""
        try:
            body = _answer(line, status)
        except (RetryableError, EndpointRefused) as exc:
            flight.errors[key] = exc
            if verdict_of(exc) is not None and not verdict_of(exc).retry:
                flight.refusal = flight.refusal or exc
            return
        item = flight.waiting[key]
        reservation = flight.held.pop(key)
        try:
            body = self.engine.transport.check(body)
            answer = self.engine.accept(key, item.request, reservation, body, item.validate, batch=True)
        except (RetryableError, EndpointRefused) as exc:  # answered, so maybe billed
            if not reservation.settled:  # (an unusable answer was charged by accept already)
                self.engine.spending.settle(reservation)
            flight.errors[key] = exc
            if not verdict_of(exc).retry:
                flight.refusal = flight.refusal or exc
            return
        self.answers[key] = answer
        self.engine.stats.add(batched=1)
        del flight.waiting[key]

    def _again(self, flight: Flight) -> None:
        """After a round: stop on a refusal or on requests that failed too often; else hold a new
        reservation for each request whose last attempt was billed, and say what is sent again."""
        if flight.refusal is not None:
            raise flight.refusal
        if not flight.waiting:
            return
        for key in flight.waiting:
            flight.tries[key] += 1
        worst = max(flight.tries[k] for k in flight.waiting)
        if worst >= self.engine.max_attempts:
            last = next((flight.errors[k] for k in flight.waiting if k in flight.errors), "no answer")
            raise ModelError(f"{len(flight.waiting)} requests went unanswered by {worst} batches in a row; "
                             f"last error: {last}")
        for key in [k for k in flight.waiting if k not in flight.held]:
            try:
                flight.held[key] = self.engine.spending.reserve(flight.waiting[key].request, batch=True)
            except BudgetExceeded as exc:
                raise BudgetExceeded(f"sending again what the last batch did not answer: {exc}") from None
        states = ", ".join(sorted({f"{s.record.batch_id} {s.status}" for s in flight.sent}))
        self.say(f"{len(flight.waiting)} requests have no answer yet (batch {states}): sending them again "
                 "as a new batch")

    def _end(self, flight: Flight) -> None:
        """Give back the reservations not used; those of requests still at the provider count as spent."""
        self.in_flight = [s.record.batch_id for s in flight.sent if not s.final]
        running = set().union(*(s.record.open for s in flight.sent if not s.final))
        for key, reservation in flight.held.items():
            if key in running:
                self.engine.spending.settle(reservation)
            else:
                self.engine.spending.release(reservation)
        flight.held.clear()


def _answered(line: dict | None) -> bool:
    response = (line or {}).get("response") or {}
    return response.get("status_code") == 200 and isinstance(response.get("body"), dict)


def _answer(line: dict | None, status: str) -> dict:
    """The body of an answered line; else the error its outcome makes (not billed)."""
    if line is None:
        raise client_failed(f"no answer in the batch (it ended {status})")
    response = line.get("response") or {}
    code = response.get("status_code")
    if code == 200 and isinstance(response.get("body"), dict):
        return response["body"]
    if isinstance(code, int) and code != 200:
        body = response.get("body")
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise status_error(code, str(message or "the request failed in the batch")[:300])
    error = line.get("error") or {}
    raise client_failed(f"{error.get('code') or 'no answer'}: {str(error.get('message') or '')[:200]}")


def _progress(sent: list[Sent], seconds: float) -> str:
    """One line: the batches' states and how many of their requests are done."""
    counts = [s.batch.get("request_counts") or {} for s in sent]
    total = sum(int(c.get("total") or len(s.record.open)) for c, s in zip(counts, sent))
    done = sum(int(c.get("completed") or 0) for c in counts)
    failed = sum(int(c.get("failed") or 0) for c in counts)
    states = ", ".join(f"{s.record.batch_id} {s.status}" for s in sent)
    return (f"batch {states}: {done}/{total} answered" + (f", {failed} failed" if failed else "")
            + f" ({int(seconds) // 60}m {int(seconds) % 60:02d}s)")


def _show(line: str, done: bool) -> None:
    """The progress line on stderr: rewritten in place on a terminal, else one line per change."""
    if sys.stderr.isatty():
        print(f"\r\033[K{line}", end="\n" if done else "", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)
