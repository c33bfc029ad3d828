"""The Batch API of ``blackbox serve``: request files and batches on loopback, as OpenAI's.

Routes: ``POST /v1/files`` (multipart: ``purpose=batch`` and ``file``), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``POST /v1/batches`` (``input_file_id``, ``endpoint``,
``completion_window``, ``metadata``), ``GET /v1/batches`` (newest first; ``limit``, ``after``),
``GET /v1/batches/{id}`` and ``POST /v1/batches/{id}/cancel``.

A batch runs in a thread of its own and moves ``validating`` -> ``in_progress`` -> ``finalizing``
-> ``completed`` (``failed`` when its file does not validate, ``expired`` past its window,
``cancelling`` -> ``cancelled`` when cancelled), counting ``request_counts`` as it goes. Each line
is answered by the server's own :meth:`~.serve.ModelServer.answer` (the code path of a synchronous
request, with the server's latency per line); answers with status 200 go to the output file,
the others to the error file, as OpenAI writes them. A line not answered when the batch ends
(expired, cancelled) gets an error line with code ``batch_expired`` or ``batch_cancelled``.

Everything is held in memory and bounded: 200 MB and 50,000 lines per request file (OpenAI's
limits), 1 GB of files in all, 1,000 batches.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

MAX_FILE_BYTES = 200 << 20
MAX_STORED_BYTES = 1 << 30
MAX_LINES = 50_000
MAX_BATCHES = 1000
WINDOW = 24 * 3600          # seconds: the only completion window, "24h"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


@dataclass
class StoredFile:
    id: str
    purpose: str
    filename: str
    data: bytes
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


@dataclass
class Batch:
    """One batch's state; :meth:`card` is the batch object OpenAI returns."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict | None
    created: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating"
    counts: dict = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    times: dict = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list = field(default_factory=list)
    cancel: bool = False

    def move(self, status: str) -> None:
        self.status = status
        self.times[f"{status}_at"] = int(time.time())

    def card(self) -> dict:
        at = {k: self.times.get(f"{k}_at") for k in ("in_progress", "finalizing", "completed", "failed",
                                                     "expired", "cancelling", "cancelled")}
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "input_file_id": self.input_file_id,
                "completion_window": "24h", "status": self.status, "created_at": self.created,
                "expires_at": self.created + WINDOW, **{f"{k}_at": v for k, v in at.items()},
                "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "errors": {"object": "list", "data": self.errors} if self.errors else None,
                "request_counts": dict(self.counts), "metadata": self.metadata}


class Refused(Exception):
    """A request this service answers with an error (status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def split_multipart(content_type: str, raw: bytes) -> dict:
    """``{name: (filename or None, bytes)}`` from a ``multipart/form-data`` body (Refused if malformed)."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise Refused(400, "a multipart body needs a boundary")
    fields = {}
    for part in raw.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, sep, body = part.partition(b"\r\n\r\n")
        if not sep or not body.endswith(b"\r\n"):
            raise Refused(400, "malformed multipart body")
        disposition = next((h for h in head.decode("utf-8", "replace").split("\r\n")
                            if h.lower().startswith("content-disposition:")), "")
        params = dict(p.strip().partition("=")[::2] for p in disposition.split(";")[1:])
        name = params.get("name", "").strip('"')
        filename = params["filename"].strip('"') if "filename" in params else None
        fields[name] = (filename, body[:-2])
    return fields


class BatchService:
    """The files and batches of one server; ``server`` answers lines (``answer(route, raw)``),
    sets the pace (``latency``) and says when a batch has run out of time (``batch_expired``)."""

    def __init__(self, server):
        self.server = server
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self.lock = threading.Lock()
        self.closing = threading.Event()

    # -- files --------------------------------------------------------------------------------
    def upload(self, content_type: str, raw: bytes) -> tuple[int, dict]:
        """``POST /v1/files``: keep a request file (purpose ``batch``) within the bounds."""
        fields = split_multipart(content_type, raw)
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose != "batch":
            raise Refused(400, f"this server keeps files for purpose 'batch' only, not {purpose!r}")
        if "file" not in fields:
            raise Refused(400, "the upload has no 'file' part")
        filename, data = fields["file"]
        if len(data) > MAX_FILE_BYTES:
            raise Refused(413, f"a request file may hold {MAX_FILE_BYTES >> 20} MB at most")
        with self.lock:
            if sum(len(f.data) for f in self.files.values()) + len(data) > MAX_STORED_BYTES:
                raise Refused(413, f"this server holds {MAX_STORED_BYTES >> 30} GB of files at most")
            stored = StoredFile(f"file-{secrets.token_hex(12)}", purpose, filename or "upload.jsonl", data)
            self.files[stored.id] = stored
        return 200, stored.card()

    def _find(self, table: dict, key: str, what: str):
        with self.lock:
            found = table.get(key)
        if found is None:
            raise Refused(404, f"No such {what} object: {key}")
        return found

    def file(self, file_id: str) -> StoredFile:
        return self._find(self.files, file_id, "File")

    def _store(self, name: str, data: bytes) -> str:
        """A result file the server writes (not counted against uploads)."""
        stored = StoredFile(f"file-{secrets.token_hex(12)}", "batch_output", name, data)
        with self.lock:
            self.files[stored.id] = stored
        return stored.id

    # -- batches ------------------------------------------------------------------------------
    def create(self, raw: bytes) -> tuple[int, dict]:
        """``POST /v1/batches``: a batch over an uploaded file, started in a thread of its own."""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise Refused(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the request body must be a JSON object")
        if body.get("endpoint") not in ENDPOINTS:
            raise Refused(400, f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if body.get("completion_window") != "24h":
            raise Refused(400, "completion_window must be '24h'")
        self.file(str(body.get("input_file_id")))
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else None
        with self.lock:
            if len(self.batches) >= MAX_BATCHES:
                raise Refused(429, f"this server holds {MAX_BATCHES} batches at most")
            batch = Batch(f"batch_{secrets.token_hex(12)}", body["input_file_id"], body["endpoint"], metadata)
            self.batches[batch.id] = batch
        threading.Thread(target=self._run, args=(batch,), name=f"blackbox-{batch.id}", daemon=True).start()
        return 200, batch.card()

    def batch(self, batch_id: str) -> Batch:
        return self._find(self.batches, batch_id, "Batch")

    def listing(self, query: str) -> tuple[int, dict]:
        """``GET /v1/batches``: newest first, a page of ``limit`` after the batch ``after``."""
        params = parse_qs(query)
        limit = min(max(int((params.get("limit") or ["20"])[0] or 20), 1), 100)
        after = (params.get("after") or [None])[0]
        with self.lock:
            cards = [b.card() for b in sorted(self.batches.values(), key=lambda b: (b.created, b.id), reverse=True)]
        if after:
            ids = [c["id"] for c in cards]
            cards = cards[ids.index(after) + 1:] if after in ids else []
        page = cards[:limit]
        return 200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None, "has_more": len(cards) > limit}

    def cancel(self, batch_id: str) -> tuple[int, dict]:
        """``POST /v1/batches/{id}/cancel``: a running batch stops before its next line."""
        batch = self.batch(batch_id)
        with self.lock:
            if batch.status in ("validating", "in_progress", "finalizing"):
                batch.cancel = True
                batch.move("cancelling")
            card = batch.card()
        return 200, card

    # -- running a batch ------------------------------------------------------------------------
    def _lines(self, batch: Batch) -> list[dict]:
        """The request file's lines, validated (raises Refused with the reason the batch fails)."""
        text = self.file(batch.input_file_id).data.decode("utf-8", "replace")
        lines, ids = [], set()
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                raise Refused(400, f"line {number} is not JSON") from None
            if not isinstance(line, dict) or not isinstance(line.get("body"), dict) or line.get("method") != "POST":
                raise Refused(400, f"line {number} needs method POST and a JSON body")
            if line.get("url") != batch.endpoint or not line.get("custom_id") or line["custom_id"] in ids:
                raise Refused(400, f"line {number}: url must be {batch.endpoint} and custom_id unique")
            ids.add(line["custom_id"])
            lines.append(line)
        if not lines or len(lines) > MAX_LINES:
            raise Refused(400, f"a batch holds 1 to {MAX_LINES} requests, this file {len(lines)}")
        return lines

    def _run(self, batch: Batch) -> None:
        """Validate, answer every line in turn, write the result files."""
        try:
            lines = self._lines(batch)
        except Refused as exc:
            with self.lock:
                batch.errors = [{"code": "invalid_request", "message": str(exc), "line": None, "param": None}]
                batch.move("failed")
            return
        with self.lock:
            batch.counts["total"] = len(lines)
            if not batch.cancel:
                batch.move("in_progress")
        out, errors = [], []
        for number, line in enumerate(lines):
            if self.closing.is_set() or batch.cancel or self.server.batch_expired(batch, number):
                end = "cancelled" if batch.cancel else "expired"
                errors += [_error_line(rest, f"batch_{end}") for rest in lines[number:]]
                return self._finish(batch, out, errors, end)
            status, payload = self._answer(batch, line)
            (out if status == 200 else errors).append(_result_line(line, status, payload))
            with self.lock:
                batch.counts["completed" if status == 200 else "failed"] += 1
        self._finish(batch, out, errors, "completed")

    def _answer(self, batch: Batch, line: dict) -> tuple[int, object]:
        """One line answered as the same request sent alone would be."""
        if self.server.latency:
            time.sleep(self.server.latency)
        try:
            reply = self.server.answer(batch.endpoint, json.dumps(line["body"]).encode())
        except Exception as exc:  # noqa: BLE001 - one line's failure must not stop the batch
            return 500, {"error": {"message": f"the server failed on this request ({type(exc).__name__})",
                                   "type": "server_error", "code": None}}
        return reply.status, reply.payload

    def _finish(self, batch: Batch, out: list, errors: list, end: str) -> None:
        """Write the output and error files, then move to the final status ``end``."""
        with self.lock:
            if end == "completed":
                batch.move("finalizing")
        output = self._store(f"{batch.id}_output.jsonl", _jsonl(out)) if out else None
        error = self._store(f"{batch.id}_error.jsonl", _jsonl(errors)) if errors else None
        with self.lock:
            batch.output_file_id, batch.error_file_id = output, error
            batch.move(end)


def _result_line(line: dict, status: int, payload) -> dict:
    return {"id": f"batch_req_{secrets.token_hex(8)}", "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": f"req_{secrets.token_hex(8)}", "body": payload},
            "error": None}


def _error_line(line: dict, code: str) -> dict:
    message = ("This request could not be executed before the completion window expired." if code == "batch_expired"
               else "This request was not executed because the batch was cancelled.")
    return {"id": f"batch_req_{secrets.token_hex(8)}", "custom_id": line["custom_id"], "response": None,
            "error": {"code": code, "message": message}}


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)


def route_of(path: str) -> tuple[str, list[str], str]:
    """``(route kind, ids, query)`` for a Batch API path: kind is ``files``, ``file``,
    ``content``, ``batches``, ``batch``, ``cancel`` or ``""`` (not a Batch API path)."""
    parts = urlsplit(path)
    segments = [s for s in parts.path.split("/") if s]
    if segments[:1] == ["v1"]:
        segments = segments[1:]
    kinds = {("files",): "files", ("batches",): "batches"}
    if tuple(segments) in kinds:
        return kinds[tuple(segments)], [], parts.query
    if len(segments) == 2 and segments[0] in ("files", "batches"):
        return ("file" if segments[0] == "files" else "batch"), [segments[1]], parts.query
    if len(segments) == 3 and (segments[0], segments[2]) in (("files", "content"), ("batches", "cancel")):
        return ("content" if segments[0] == "files" else "cancel"), [segments[1]], parts.query
    return "", [], parts.query
