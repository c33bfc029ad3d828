"""llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on 127.0.0.1, for the benchmark.

The recipe that holds up on a shared 2-core machine: 2 threads for decoding *and* for prompt
processing (``--n_threads_batch`` defaults to every core whatever ``--n_threads`` says) and
``OMP_WAIT_POLICY=PASSIVE`` (the wheel uses OpenMP; threads that spin while waiting made prompt
processing 2-5x slower when other processes held the cores). One server slot: requests are sent one
at a time, and consecutive requests that share a prefix (an instruction and its demonstrations)
reuse its computed keys and values.

``with LlamaServer(model) as server: server.base_url`` starts it, waits until it answers and stops
it (the whole process group) on the way out, also on errors and Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from blackbox.errors import InputError, ModelError


def answering(base_url: str, timeout: float = 2.0) -> bool:
    """True when an OpenAI-compatible server answers ``GET <base_url>/models``."""
    try:
        return httpx2.get(f"{base_url}/models", timeout=timeout).status_code == 200
    except httpx2.HTTPError:
        return False


class LlamaServer:
    """One ``python -m llama_cpp.server`` process serving ``model`` as ``alias`` on loopback."""

    def __init__(self, model: Path, alias: str, *, port: int = 8790, threads: int = 2, n_ctx: int = 4096,
                 log: Path | None = None, start_timeout: float = 300.0):
        self.model, self.alias, self.port = Path(model), alias, int(port)
        self.threads, self.n_ctx = int(threads), int(n_ctx)
        self.log = Path(log) if log is not None else None
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)]

    def start(self) -> "LlamaServer":
        """Start the server and wait until it answers; refuses a port something already answers on."""
        if answering(self.base_url):
            raise InputError(f"something already answers on {self.base_url}: pass it as --base-url, or pick "
                             "another --port")
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
        out = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelError(f"llama.cpp's server exited with code {self.process.returncode} while starting"
                                 + (f" (see {self.log})" if self.log else ""))
            if answering(self.base_url):
                return
            time.sleep(1.0)
        self.stop()
        raise ModelError(f"llama.cpp's server did not answer within {self.start_timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
