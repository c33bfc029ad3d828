"""What one attempt's outcome means: send it again or stop, and whether the endpoint may have billed it.

Every part that meets an attempt's outcome (the transports, the answer validators, the engine's
retry loop, and any other way of sending the same requests) asks this module, so the rules live
in one table:

======================================================  ============  ============
what happened                                           verdict       maybe billed
======================================================  ============  ============
HTTP 408, 409, 429 or 5xx (``Retry-After`` honoured)    retry         no
any other HTTP error (400, 401, 403, 404, 422...)       refused       no
a 200 whose JSON is an error object                     refused       no
no connection (refused, or no connect in time)          retry         no
the client failed otherwise (an SDK error)              retry         no
sent, then no answer in time or the connection lost     retry         yes
an answer cut off at the size limit                     retry         yes
malformed JSON, the wrong shape, invalid logprobs       retry         yes
an answer a validator cannot use                        retry         yes
======================================================  ============  ============

A refusal stops the run at once (retrying cannot help). A verdict travels as the exception the
engine's retry loop reads: :class:`~blackbox.errors.RetryableError` (``maybe_billed``,
``retry_after``) or :class:`~blackbox.errors.EndpointRefused`; any other error also stops the
run. An attempt that may have been billed is charged at its reservation; one that cannot have
been keeps its reservation for the retry. :func:`retry_delay` is the one rule for how long to
wait before the next attempt.
"""
from __future__ import annotations

import enum
import random
import time
from email.utils import parsedate_to_datetime
from typing import Mapping

import httpx2

from blackbox.errors import EndpointRefused, ModelError, RetryableError

from .http_limits import RequestLimits, parse_json

RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx: the endpoint may answer next time
REFUSAL_HINTS = {401: "check the API key (--api-key-env / OPENAI_API_KEY)",
                 403: "the key has no access to this model or endpoint",
                 404: "check --base-url and the model name",
                 400: "the endpoint rejected the request"}


class Verdict(enum.Enum):
    """What an attempt's outcome means: ``retry`` (another attempt may succeed) and ``billed``
    (the endpoint may have charged for this one)."""

    RETRY = (True, False)        # nothing reached the model, or the endpoint asked to come back
    RETRY_PAID = (True, True)    # the model may have worked on it; the answer is lost or unusable
    REFUSED = (False, False)     # the endpoint will not do it: stop the run

    @property
    def retry(self) -> bool:
        return self.value[0]

    @property
    def billed(self) -> bool:
        return self.value[1]


def status_verdict(status: int) -> Verdict:
    """The verdict on an HTTP error status."""
    return Verdict.RETRY if status in RETRY_STATUSES or status >= 500 else Verdict.REFUSED


def verdict_of(error: BaseException) -> Verdict | None:
    """The verdict an error carries; None for an error that is no attempt's outcome (it stops the run)."""
    if isinstance(error, RetryableError):
        return Verdict.RETRY_PAID if error.maybe_billed else Verdict.RETRY
    if isinstance(error, EndpointRefused):
        return Verdict.REFUSED
    return None


def should_retry(error: BaseException) -> bool:
    """The retry predicate of every retry loop."""
    verdict = verdict_of(error)
    return verdict is not None and verdict.retry


def retry_delay(error: BaseException | None, attempt: int, backoff: float, max_wait: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...): the endpoint's
    ``Retry-After`` when it gave one, else exponential backoff with jitter; at most ``max_wait``."""
    after = getattr(error, "retry_after", None)
    if after is not None:
        return min(after, max_wait)
    expo = backoff * (2 ** (attempt - 1))
    return min(max_wait, expo + random.uniform(0, backoff))


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


# -- the errors that carry a verdict ----------------------------------------------------------------
def _error(verdict: Verdict, message: str, status: int | None = None,
           retry_after: float | None = None) -> ModelError:
    if verdict.retry:
        return RetryableError(message, status=status, retry_after=retry_after, maybe_billed=verdict.billed)
    return EndpointRefused(message, status)


def status_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> ModelError:
    """The error for an HTTP error status (``message``: the endpoint's own, without secrets);
    ``headers`` may carry ``Retry-After``."""
    verdict = status_verdict(status)
    if verdict.retry:
        after = retry_after_seconds(headers.get("retry-after")) if headers is not None else None
        return _error(verdict, f"HTTP {status}: {message}", status, after)
    hint = REFUSAL_HINTS.get(status, "")
    return _error(verdict, f"the endpoint refused the request (HTTP {status}): {message}"
                  + (f"; {hint}" if hint else ""), status)


def no_answer(exc: BaseException | None, limits: RequestLimits, timeout: float) -> ModelError:
    """The error for an attempt that got no answer (``exc``: httpx's exception): billed unless
    the connection was never made."""
    if limits.too_large:
        return _error(Verdict.RETRY_PAID, f"the answer is larger than {limits.max_bytes >> 20} MB; it was cut off")
    if isinstance(exc, httpx2.TimeoutException):
        connected = not isinstance(exc, httpx2.ConnectTimeout)
        return _error(Verdict.RETRY_PAID if connected else Verdict.RETRY, f"no answer within {timeout:g} s (timeout)")
    sent = not isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout))
    return _error(Verdict.RETRY_PAID if sent else Verdict.RETRY, f"connection error ({type(exc).__name__})")


def client_failed(message: str) -> ModelError:
    """The error for a request the client library failed on without an HTTP answer."""
    return _error(Verdict.RETRY, f"request failed: {message}")


def parse_answer(raw: str | bytes):
    """An answer's JSON; malformed JSON (NaN and Infinity too) raises a paid, retryable error."""
    try:
        return parse_json(raw)
    except ValueError as exc:
        raise _error(Verdict.RETRY_PAID, f"the endpoint answered malformed JSON ({str(exc)[:80]}; "
                                         f"{len(raw)} bytes)") from None


def unusable(reason: str) -> ModelError:
    """The error for an answer that arrived (so may be paid) and cannot be used: retried, never cached."""
    return _error(Verdict.RETRY_PAID, reason)


def refused(reason: str) -> ModelError:
    """The error for an answer in which the endpoint refuses the request."""
    return _error(Verdict.REFUSED, reason)
