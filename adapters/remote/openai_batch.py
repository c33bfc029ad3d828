"""OpenAI's Batch API through the official SDK: upload a request file, create, poll, read, cancel.

Every call goes through the transport's client (``max_retries=0``, the key held by the client
only) and its judge (:meth:`.openai_transport.OpenAITransport.judged`), and is retried by tenacity
as :mod:`.outcomes` says (429, 5xx, timeouts, connection errors; a refusal stops at once). None of
these calls is billed: what a batch costs is the usage its answers report.

Creating a batch twice would pay twice, so a ``create`` whose answer was lost (sent, then no
answer) first looks for a batch made from the same request file (:meth:`OpenAIBatchAPI.find`)
before it tries again.
"""
from __future__ import annotations

import os
from typing import Callable

from blackbox.errors import ModelError, RetryableError

from .outcomes import parse_answer, refused, retry_delay, should_retry

MAX_OUTPUT_BYTES = 1 << 30   # an output file: 50,000 answers with logprobs are far less
FIND_LIMIT = 1000            # batches listed (newest first) when looking for one made from a file
UPLOAD_RATE = 1 << 20        # bytes a second an upload is given at least, on top of the timeout


class OpenAIBatchAPI:
    """Files and batches of one OpenAI-compatible endpoint (``transport``: an
    :class:`~.openai_transport.OpenAITransport`); each call at most ``max_attempts`` attempts."""

    def __init__(self, transport, *, max_attempts: int = 6, backoff: float = 0.5, max_wait: float = 60.0,
                 timeout: float = 60.0):
        self.transport = transport
        self.client = transport.client
        self.max_attempts, self.backoff, self.max_wait, self.timeout = max_attempts, backoff, max_wait, timeout
        self.url = "/v1/chat/completions" if transport.kind == "chat" else "/v1/completions"

    def _retried(self, what: str, call: Callable, timeout: float | None = None, max_bytes: int | None = None,
                 again: Callable[[], dict | None] | None = None):
        """``call(timeout)`` under the transport's judge, retried per :mod:`.outcomes`; before a
        retry, ``again()`` may find that the failed attempt took effect (its result ends the loop)."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        timeout = timeout or self.timeout
        retrying = Retrying(stop=stop_after_attempt(self.max_attempts), retry=retry_if_exception(should_retry),
                            reraise=True, wait=lambda state: retry_delay(
                                state.outcome.exception() if state.outcome else None, state.attempt_number,
                                self.backoff, self.max_wait))
        try:
            for attempt in retrying:
                with attempt:
                    if again is not None and attempt.retry_state.attempt_number > 1:
                        done = again()
                        if done is not None:
                            return done
                    with self.transport.judged(timeout, max_bytes):
                        return call(timeout)
        except RetryableError as exc:
            raise ModelError(f"the Batch API failed to {what} {self.max_attempts} time(s) in a row; "
                             f"last error: {exc}") from None

    def upload(self, path: str) -> str:
        """Upload a JSONL request file (purpose ``batch``); its file id."""
        size = os.path.getsize(path)

        def call(timeout):
            with open(path, "rb") as fh:
                return self.client.files.create(file=(os.path.basename(path), fh, "application/jsonl"),
                                                purpose="batch", timeout=timeout).id
        return self._retried("upload the request file", call, self.timeout + size / UPLOAD_RATE)

    def create(self, file_id: str, digest: str) -> dict:
        """A batch over an uploaded request file (``digest`` goes in its metadata)."""
        def call(timeout):
            return self.client.batches.create(input_file_id=file_id, endpoint=self.url, completion_window="24h",
                                              metadata={"blackbox": digest[:64]}, timeout=timeout).model_dump()
        return self._retried("create a batch", call, again=lambda: self._maybe_created(file_id))

    def _maybe_created(self, file_id: str) -> dict | None:
        """After a create that failed: the batch it may have made anyway (None if none or unknown)."""
        try:
            return self.find(file_id)
        except ModelError:
            return None

    def find(self, file_id: str) -> dict | None:
        """The newest batch made from request file ``file_id`` (among the last FIND_LIMIT), or None."""
        def call(timeout):
            for seen, batch in enumerate(self.client.batches.list(limit=100, timeout=timeout)):
                if batch.input_file_id == file_id:
                    return batch.model_dump()
                if seen + 1 >= FIND_LIMIT:
                    break
            return None
        return self._retried("list batches", call)

    def retrieve(self, batch_id: str) -> dict:
        return self._retried("read a batch's status", lambda timeout: self.client.batches.retrieve(
            batch_id, timeout=timeout).model_dump())

    def cancel(self, batch_id: str) -> dict:
        return self._retried("cancel a batch", lambda timeout: self.client.batches.cancel(
            batch_id, timeout=timeout).model_dump())

    def lines(self, file_id: str) -> list[dict]:
        """The JSON lines of an output or error file (a line that is not a JSON object is skipped:
        its request counts as unanswered and is sent again)."""
        def call(timeout):
            return self.client.files.content(file_id, timeout=timeout).content
        raw = self._retried("download a result file", call, max_bytes=MAX_OUTPUT_BYTES)
        out = []
        for text in raw.splitlines():
            if text.strip():
                try:
                    line = parse_answer(text)
                except RetryableError:
                    continue
                if isinstance(line, dict):
                    out.append(line)
        return out


def refusal_of(batch: dict) -> Exception:
    """The error for a batch the provider refused as a whole (status ``failed``: its file did not validate)."""
    errors = (batch.get("errors") or {}).get("data") or []
    said = "; ".join(str(e.get("message") or e.get("code")) for e in errors[:3] if isinstance(e, dict))
    return refused(f"the provider refused batch {batch.get('id')} ({said or 'no reason given'})")

