"""One wall-clock deadline and one size limit per HTTP request, under httpx2 (and the openai SDK).

httpx's timeouts are per operation: a server that trickles one byte a second never trips a
30-second read timeout. Here every socket operation of a request (connect, TLS, each send, each
receive) gets at most the time left until the request's deadline, so connect + send + read end
by it, however the server paces its bytes; and the bytes received for one request are counted,
so an answer larger than the limit is cut off instead of read whole into memory.

Usage (the transports do this for every attempt)::

    client = limited_client(max_connections=16)           # an httpx2.Client
    with request_limits(seconds=30, max_bytes=4 << 20) as limits:
        response = client.post(...)                        # or an SDK call on that client
    limits.too_large                                       # the answer was cut off at max_bytes

The limits live in a thread-local, so concurrent requests in worker threads are independent.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass

import httpcore2
import httpx2
from httpcore2._backends.base import NetworkBackend, NetworkStream  # the documented extension point
from httpcore2._backends.sync import SyncBackend

MAX_RESPONSE_BYTES = 4 << 20  # a chat answer with logprobs is a few KB; anything near this is hostile
_CHUNK = 64 << 10
_local = threading.local()


@dataclass
class RequestLimits:
    deadline: float            # time.monotonic() by which the request must be over
    max_bytes: int
    received: int = 0
    too_large: bool = False


@contextlib.contextmanager
def request_limits(seconds: float, max_bytes: int = MAX_RESPONSE_BYTES):
    """Limit every HTTP request this thread makes inside the block to ``seconds`` of wall time
    in all and ``max_bytes`` received."""
    limits = RequestLimits(time.monotonic() + seconds, max_bytes)
    _local.limits = limits
    try:
        yield limits
    finally:
        _local.limits = None


def _time_left(timeout: float | None, error: type[Exception]) -> float | None:
    limits = getattr(_local, "limits", None)
    if limits is None:
        return timeout
    left = limits.deadline - time.monotonic()
    if left <= 0:
        raise error("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _LimitedStream(NetworkStream):
    def __init__(self, inner: NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, _time_left(timeout, httpcore2.ReadTimeout))
        limits = getattr(_local, "limits", None)
        if limits is not None:
            limits.received += len(data)
            if limits.received > limits.max_bytes:
                limits.too_large = True
                raise httpcore2.ReadError(f"the answer is larger than {limits.max_bytes} bytes")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:  # in chunks, so a server that reads slowly cannot hold a send past the deadline
            self._inner.write(bytes(view[:_CHUNK]), _time_left(timeout, httpcore2.WriteTimeout))
            view = view[_CHUNK:]

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> NetworkStream:
        return _LimitedStream(self._inner.start_tls(ssl_context, server_hostname,
                                                    _time_left(timeout, httpcore2.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class LimitedBackend(NetworkBackend):
    """httpcore's synchronous socket backend with the thread's request limits applied."""

    def __init__(self):
        self._inner = SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None) -> NetworkStream:
        return _LimitedStream(self._inner.connect_tcp(host, port, _time_left(timeout, httpcore2.ConnectTimeout),
                                                      local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None) -> NetworkStream:  # pragma: no cover
        return _LimitedStream(self._inner.connect_unix_socket(path, _time_left(timeout, httpcore2.ConnectTimeout),
                                                              socket_options))

    def sleep(self, seconds: float) -> None:  # pragma: no cover
        self._inner.sleep(seconds)


def limited_client(max_connections: int = 64, headers: dict | None = None) -> httpx2.Client:
    """An ``httpx2.Client`` whose connections obey :func:`request_limits` (no redirects followed
    to other hosts' credentials: httpx2 never forwards auth headers across origins)."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = httpx2.HTTPTransport(limits=limits)
    # httpx takes no network backend: give its connection pool ours (it opens every connection)
    transport._pool._network_backend = LimitedBackend()
    return httpx2.Client(transport=transport, headers=headers or {})


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str | bytes):
    """``json.loads`` that refuses NaN and Infinity (Python accepts them; no endpoint should send
    them, and a cached NaN would poison every rerun). Raises ValueError."""
    return json.loads(text, parse_constant=_no_constant)
