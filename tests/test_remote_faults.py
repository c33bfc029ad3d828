"""Hostile endpoints and careless input (issue #14), over real loopback HTTP.

Every test asserts what the *server* counted: paid requests <= --queries, tokens <= --max-tokens
and cost <= --max-cost; a failure is one line on stderr (exit 2), no traceback, nothing written.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import MODEL, Hostile, completion, sane
from terminal import interruptible

from blackbox.cli.main import main

pytestmark = pytest.mark.network
BLACKBOX = str(Path(sys.executable).parent / "blackbox")


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("OPENAI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return dict(os.environ)


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
    return path


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def saliency(capsys, srv, image, *extra, queries=32):
    """A remote map; banzhaf, whose masks are distinct on this small grid, so requests are queries."""
    return cli(capsys, "saliency", image, "--model", f"openai:{MODEL}", "--base-url", srv.url, "--target", "cat",
               "--queries", queries, "--grid", 4, "--method", "banzhaf", "--resolution", 32, "--no-progress", *extra)


def one_line(err: str, *words):
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("blackbox: warning")]
    assert len(lines) == 1 and lines[0].startswith("blackbox: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def within(srv, queries=None, tokens=None, cost=None):
    """The targets, counted by the server."""
    if queries is not None:
        assert srv.paid <= queries, (srv.paid, queries)
    if tokens is not None:
        assert srv.tokens <= tokens, (srv.tokens, tokens)
    if cost is not None:
        assert srv.cost <= cost + 1e-12, (srv.cost, cost)


# -- 1. the timeout is a deadline; --deadline; Ctrl-C ---------------------------------------------------
def slow_loris(h, request, number):
    h.trickle(seconds=30)


def test_timeout_is_a_wall_clock_deadline_against_a_slow_loris(capsys, image):
    with Hostile(slow_loris) as srv:
        t0 = time.monotonic()
        code, _, err = saliency(capsys, srv, image, "--timeout", 1, "--max-attempts", 2)
        elapsed = time.monotonic() - t0
        assert code == 2 and elapsed < 5, elapsed  # 2 attempts of 1 s (+ backoff), not 60 s of trickle
        one_line(err, "no answer within 1 s")
        within(srv, queries=32)


def test_run_deadline_cuts_requests_in_flight_and_keeps_the_partial_map(capsys, image, tmp_path):
    with Hostile(slow_loris) as srv:
        t0 = time.monotonic()
        code, _, err = saliency(capsys, srv, image, "--timeout", 60, "--deadline", 1.5)
        assert code == 2 and time.monotonic() - t0 < 3
        one_line(err, "deadline reached")

    def slow(h, request, number):
        time.sleep(0.1)
        sane(h, request, number)
    with Hostile(slow) as srv:
        npy = tmp_path / "map.npy"
        code, out, err = saliency(capsys, srv, image, "--deadline", 4, "--concurrency", 8, "--queries", 400,
                                  "--save-map", npy, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["stopped"] and "deadline" in report["stopped"] and 0 < report["queries_used"] < 399
        assert npy.exists()
        within(srv, queries=400)


@pytest.mark.slow
def test_ctrl_c_against_a_slow_loris_ends_the_process_within_2_seconds(image, env):
    with Hostile(slow_loris) as srv:
        proc = subprocess.Popen(interruptible([BLACKBOX, "saliency", str(image), "--model", f"openai:{MODEL}",
                                                "--base-url", srv.url, "--target", "cat", "--queries", "32",
                                                "--resolution", "32", "--grid", "4", "--no-progress"]), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        end = time.monotonic() + 30
        while srv.requests == 0 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)  # the probe is being trickled now
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    print(f"Ctrl-C to exit: {elapsed:.2f} s")
    assert elapsed < 2.0, elapsed
    assert proc.returncode == 130
    text = err.decode()
    assert "Traceback" not in text and "rerun the same command to resume" in text


# -- 2. --queries caps every billable request; the dry run is exact -------------------------------------
def no_logprobs(h, request, number):
    h.answer(completion(request, logprobs=False))


def flaky_logprobs(h, request, number):
    h.answer(completion(request, logprobs=number % 3 != 0))  # every third answer lacks logprobs (paid)


@pytest.mark.parametrize("scoring", ["frequency", "confidence"])
def test_queries_cap_samples_probe_and_dry_run_is_exact(capsys, image, scoring):
    with Hostile(no_logprobs) as srv:
        code, out, err = saliency(capsys, srv, image, "--queries", 64, "--dry-run", "--json", "--scoring", scoring)
        assert code == 0, err
        plan = json.loads(out)
        assert srv.requests == 0 and plan["would_send"] <= 64
        code, out, err = saliency(capsys, srv, image, "--queries", 64, "--json", "--scoring", scoring)
        assert code == 0, err
        assert srv.paid == srv.requests == plan["would_send"]  # exactly what the dry run said
        within(srv, queries=64)


def test_queries_cap_the_auto_fallback_and_unusable_retries(capsys, image):
    with Hostile(no_logprobs) as srv:  # the probe finds no logprobs: 5 samples per query
        code, out, err = saliency(capsys, srv, image, "--queries", 64, "--json")
        assert code == 0, err
        assert json.loads(out)["usage"]["budget"]["queries"] == srv.paid <= 64
        assert "no logprobs" in err
    with Hostile(flaky_logprobs) as srv:  # unusable answers are paid and retried, within the cap
        code, out, err = saliency(capsys, srv, image, "--queries", 48, "--json", "--seed", 3)
        within(srv, queries=48)
        assert code in (0, 2) and "Traceback" not in err
        if code == 0:
            report = json.loads(out)
            assert report["usage"]["unusable"] > 0 and report["stopped"]


# -- 3. decompression bombs ---------------------------------------------------------------------------
def png_bomb(path: Path, side: int) -> Path:
    """A valid greyscale PNG of side x side black pixels, a few hundred KB on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png", 12000)


@pytest.mark.slow
def test_a_decompression_bomb_is_refused_fast_in_little_memory(bomb, env, tmp_path):
    assert bomb.stat().st_size < 1_000_000
    # measured from a small parent: a child forked from this (large) test process would
    # inherit its resident size in ru_maxrss
    probe = ("import os, subprocess, sys, time; t0 = time.monotonic(); p = subprocess.Popen(sys.argv[1:], "
             "stderr=subprocess.PIPE); err = p.stderr.read(); _, status, usage = os.wait4(p.pid, 0); "
             "print(os.waitstatus_to_exitcode(status), time.monotonic() - t0, usage.ru_utime + usage.ru_stime, "
             "usage.ru_maxrss / 1024); sys.stderr.write(err.decode())")
    proc = subprocess.run([sys.executable, "-c", probe, BLACKBOX, "saliency", str(bomb), "--out",
                           str(tmp_path / "o.png"), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=60)
    code, elapsed, cpu, peak_mb = proc.stdout.split()
    err = proc.stderr
    print(f"bomb: {float(elapsed):.2f} s wall, {float(cpu):.2f} s CPU, peak {float(peak_mb):.0f} MB")
    # CPU time is what the process spends (2 s of wall time needs an idle machine; the wall time
    # includes Python's start-up)
    assert int(code) == 2 and float(cpu) < 2.0 and float(elapsed) < 10 and float(peak_mb) < 500
    assert "12000x12000" in err and "Traceback" not in err and not (tmp_path / "o.png").exists()


def test_a_bomb_posted_to_blackbox_serve_is_refused(bomb):
    import base64

    import httpx2

    from blackbox.adapters.remote.serve import ModelServer
    from fault_server import BrightnessScorer

    srv = ModelServer(scorer=BrightnessScorer()).start()
    try:
        url = "data:image/png;base64," + base64.b64encode(bomb.read_bytes()).decode()
        body = {"model": "efficientnet-lite0", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Is there a cat in this image?"}, {"type": "image_url", "image_url": {"url": url}}]}]}
        t0 = time.monotonic()
        r = httpx2.post(srv.url + "/chat/completions", json=body, timeout=10)
        assert r.status_code == 400 and "megapixels" in r.json()["error"]["message"] and time.monotonic() - t0 < 2
    finally:
        srv.stop()


def test_load_image_reads_16_bit_and_refuses_huge_images(tmp_path, monkeypatch):
    from PIL import Image

    from blackbox.errors import InputError
    from blackbox.images import load_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I;16")
    img = load_image(tmp_path / "deep.png")
    np.testing.assert_allclose(img[:, :, 0], ramp / 65535.0, atol=1e-6)  # not clipped to white
    assert 0.45 < img.mean() < 0.55
    monkeypatch.setenv("BLACKBOX_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="64x64 pixels"):
        load_image(tmp_path / "deep.png")


# -- 4. validate before caching; never cache what cannot be scored ------------------------------------
@pytest.mark.parametrize("poison", ["NaN", "Infinity", "1e308"])
def test_poisoned_logprobs_are_never_cached(capsys, image, tmp_path, poison):
    def poisoned(h, request, number):
        raw = json.dumps(completion(request)).replace('"logprob": ', f'"logprob": {poison}, "x": ', 1)
        h.pay({"prompt_tokens": 100, "completion_tokens": 1})
        h.json(200, None, raw=raw.encode())

    with Hostile(poisoned) as srv:
        code, _, err = saliency(capsys, srv, image, "--max-attempts", 2)
        assert code == 2
        one_line(err, "log-probabilities" if poison == "1e308" else f"{poison} is not a JSON number")
        within(srv, queries=32)
    cache = tmp_path / "cache" / "remote" / "queries.sqlite"
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0
    with Hostile(sane) as srv:  # the rerun against a sane endpoint works
        code, _, err = saliency(capsys, srv, image)
        assert code == 0, err


def test_prompt_tuning_path_rejects_nan_logprobs(tmp_path):
    """The completions path (discrete prompt tuning) validates through the transport too."""
    from blackbox.adapters.remote.engine import QueryEngine
    from blackbox.adapters.remote.openai_transport import OpenAITransport
    from blackbox.errors import ModelError
    from blackbox.queries import Budget

    def nan_completion(h, request, number):
        h.pay({"prompt_tokens": 5, "completion_tokens": 1})
        h.json(200, None, raw=b'{"choices": [{"text": " bird", "logprobs": {"tokens": [" bird"], '
                              b'"token_logprobs": [NaN], "top_logprobs": [{" bird": NaN, " dog": -1.0}]}}],'
                              b' "usage": {"prompt_tokens": 5, "completion_tokens": 1}}')

    with Hostile(nan_completion) as srv:
        engine = QueryEngine(OpenAITransport(base_url=srv.url, kind="completions"), budget=Budget(max_queries=10),
                             cache=True, max_attempts=2, backoff=0.01)
        with pytest.raises(ModelError, match="failed 2 attempt"):
            engine.map([{"model": MODEL, "prompt": "x", "max_tokens": 1, "logprobs": 5}])
        assert engine.budget.queries == srv.paid == 2 and engine.cache.stats()["entries"] == 0
        engine.close()


# -- 5. a corrupt cache is repaired from the CLI ----------------------------------------------------------
def test_workers_opening_a_new_cache_or_ledger_at_once_all_get_it(tmp_path):
    # the first opens of a new file race to switch it to WAL; SQLite answers the losers "database
    # is locked" at once (no busy wait), which used to fail a fresh --executor pool run
    from blackbox.adapters.remote.cache import ResponseCache
    from blackbox.many.ledger import SQLiteLedger

    errors, opened = [], []

    def open_both(folder: Path, barrier: threading.Barrier, i: int) -> None:
        barrier.wait()
        try:
            cache = ResponseCache(folder / "queries.sqlite", timeout=10)
            cache.put(f"k{i}", {"body": {"i": i}})
            opened.append(cache)
            SQLiteLedger(folder / "ledger.sqlite", max_queries=10, timeout=10)
        except Exception as exc:
            errors.append(exc)

    for trial in range(60):
        folder = tmp_path / str(trial)
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=open_both, args=(folder, barrier, i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for cache in opened:
        cache.close()
    assert not errors, errors[0]
    assert ResponseCache(tmp_path / "0" / "queries.sqlite").stats()["entries"] == 4


def test_a_corrupt_cache_is_a_clear_error_and_cache_clear_repairs_it(capsys, image, tmp_path):
    with Hostile(sane) as srv:
        assert saliency(capsys, srv, image)[0] == 0
        cache = tmp_path / "cache" / "remote" / "queries.sqlite"
        # a damaged page in the middle of the table
        with sqlite3.connect(cache) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(cache.read_bytes())
        assert len(data) > 3 * 4096
        data[4096 + 100:3 * 4096] = os.urandom(2 * 4096 - 100)
        cache.write_bytes(bytes(data))
        code, _, err = saliency(capsys, srv, image, "--seed", 2)
        assert code == 2
        one_line(err, "blackbox cache clear")
        code, out, err = cli(capsys, "cache", "clear")
        assert code == 0 and "damaged" in out, err
        for extra in cache.parent.glob("queries.sqlite-*"):
            extra.unlink()
        cache.write_bytes(b"SQLite format 3\x00" + os.urandom(484))  # a truncated, garbled file
        code, _, err = cli(capsys, "cache", "info")
        assert code == 2
        one_line(err, "blackbox cache clear")
        assert cli(capsys, "cache", "clear")[0] == 0
        assert saliency(capsys, srv, image, "--seed", 2)[0] == 0


# -- 6. token and money caps hold when usage exceeds every estimate ----------------------------------------
def growing(h, request, number):
    h.answer(completion(request, prompt_tokens=150 + 40 * number))  # billed more and more


def lavish(h, request, number):
    h.answer(completion(request, prompt_tokens=3000))  # far more than any estimate, from the start


@pytest.mark.parametrize("behaviour", [growing, lavish])
def test_token_and_money_caps_hold_against_growing_usage(capsys, image, behaviour):
    with Hostile(behaviour) as srv:
        code, out, err = saliency(capsys, srv, image, "--queries", 400, "--max-tokens", 60000, "--json",
                                  "--concurrency", 16)
        assert code in (0, 2), err
        within(srv, queries=400, tokens=60000)
    with Hostile(behaviour) as srv:
        code, out, err = saliency(capsys, srv, image, "--queries", 400, "--max-cost", 0.02, "--json",
                                  "--concurrency", 16)
        assert code in (0, 2), err
        within(srv, queries=400, cost=0.02)


# -- 7. empty maps are errors -------------------------------------------------------------------------------
def test_no_empty_map_is_reported_as_success(capsys, image, tmp_path):
    out, npy = tmp_path / "o.png", tmp_path / "o.npy"
    with Hostile(sane) as srv:
        code, _, err = saliency(capsys, srv, image, "--blocks", 16, "--queries", 16, "--out", out)
        assert code == 2 and srv.requests == 0
        one_line(err, "16 blocks need at least 32 queries")
        # a token cap that admits the probe and not one batch of the map
        code, _, err = saliency(capsys, srv, image, "--max-tokens", 1500, "--out", out, "--save-map", npy)
        assert code == 2
        one_line(err, "no map to write", "tokens")
        within(srv, tokens=1500)
    assert not out.exists() and not npy.exists()


# -- 9. bounded response size -----------------------------------------------------------------------------
def test_a_huge_answer_is_cut_off_and_never_stored(capsys, image, tmp_path):
    import resource

    def huge(h, request, number):
        h.flood(50)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Hostile(huge) as srv:
        code, _, err = saliency(capsys, srv, image, "--max-attempts", 2)
        assert code == 2
        one_line(err, "larger than 4 MB")
        within(srv, queries=32)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb
    cache = tmp_path / "cache" / "remote" / "queries.sqlite"
    assert not cache.exists() or cache.stat().st_size < 1 << 20


# -- 10. tracebacks and late checks ---------------------------------------------------------------------------
def late_check_cases(tmp_path, image):
    folder = tmp_path / "folder"
    folder.mkdir()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"url": "http://127.0.0.1:9/score", "request": {"i": "{image_data_url}"},
                                "score_path": "s", "resolution": "abc"}))
    return {
        "negative seed": (["--seed", "-1"], "must be >= 0"),
        "unknown picture format": (["--out", tmp_path / "x.xyz"], "cannot write the overlay as .xyz"),
        "out is a folder": (["--out", folder], "it is a folder"),
        "map is a folder": (["--save-map", folder], "it is a folder"),
        "out ends with a separator": (["--out", f"{tmp_path}/new/"], "it is a folder"),
        "resolution too large": (["--resolution", 100000], "resolution must be a whole number from 1 to 4096"),
        "zero timeout": (["--timeout", 0], "must be > 0"),
        "out overwrites the input": (["--out", image], "is the input image"),
        "out and map on one path": (["--out", tmp_path / "same.png", "--save-map", tmp_path / "same.png"],
                                    "same file"),
        "spec resolution abc": (["--model", f"http:{spec}"], "resolution must be a whole number"),
    }


def test_bad_options_fail_before_the_first_query(capsys, image, tmp_path):
    with Hostile(sane) as srv:
        for case, (extra, message) in late_check_cases(tmp_path, image).items():
            try:
                code, _, err = saliency(capsys, srv, image, *extra)
            except SystemExit as exc:  # argparse
                code, err = exc.code, capsys.readouterr().err
            assert code == 2, case
            assert message in err and "Traceback" not in err, (case, err)
            assert srv.requests == 0, case  # nothing was paid
        assert not (tmp_path / "x.xyz").exists() and not (tmp_path / "same.png").exists()
        assert not (tmp_path / "new").exists() and not os.listdir(tmp_path / "folder")


def test_cache_dir_that_is_a_file_and_serve_port_out_of_range(capsys, image, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "afile"))
    with Hostile(sane) as srv:
        code, _, err = saliency(capsys, srv, image)
        assert code == 2 and srv.requests == 0
        one_line(err, "BLACKBOX_CACHE_DIR")
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "99999"])
    assert info.value.code == 2 and "a port is 0..65535" in capsys.readouterr().err
    code, _, err = cli(capsys, "serve", "--host", "0.0.0.0")
    assert code == 2
    one_line(err, "--require-key-env")


# -- 11. blackbox serve under abuse ----------------------------------------------------------------------
@pytest.fixture
def served():
    from blackbox.adapters.remote.serve import ModelServer
    from fault_server import BrightnessScorer

    srv = ModelServer(scorer=BrightnessScorer(), api_key="sk-serve-key-0123456789").start()
    yield srv
    srv.stop()


def raw_http(srv, data: bytes, wait: float = 5.0) -> bytes:
    import socket

    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                chunks.append(part)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_serve_refuses_abuse_without_tracebacks(served, capfd, monkeypatch):
    import socket

    import blackbox.adapters.remote.serve as serve_module

    auth = b"Authorization: Bearer sk-serve-key-0123456789\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + auth

    def status(answer: bytes) -> int:
        return int(answer.split(b" ", 2)[1]) if answer else 0

    assert status(raw_http(served, head + b"Content-Length: 99999999999\r\n\r\n")) == 413
    assert status(raw_http(served, head + b"Content-Length: -1\r\n\r\n")) == 400
    assert status(raw_http(served, head + b"Content-Length: abc\r\n\r\n")) == 400
    assert status(raw_http(served, head.replace(b"application/json", b"text/plain") + b"Content-Length: 2\r\n\r\n{}")) == 415
    assert status(raw_http(served, head.replace(b"Host: 127.0.0.1", b"Host: evil.example") +
                           b"Content-Length: 2\r\n\r\n{}")) == 403
    assert status(raw_http(served, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")) == 401
    # a lying Content-Length: the connection is dropped after the socket timeout, not held forever
    monkeypatch.setattr(serve_module.Handler, "timeout", 0.5)
    t0 = time.monotonic()
    raw_http(served, head + b"Content-Length: 100\r\n\r\n{\"a\":", wait=5)
    assert time.monotonic() - t0 < 3
    # a flood of idle connections holds at most MAX_CONNECTIONS threads, each for the socket
    # timeout: a real request gets through within a second or so
    idle = [socket.create_connection(served.server_address[:2]) for _ in range(80)]
    try:
        for s in idle:
            s.sendall(head + b"Content-Length: 100\r\n\r\n")
        t0 = time.monotonic()
        answered = 0
        while time.monotonic() - t0 < 5 and not answered:
            answered = status(raw_http(served, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                       b"Connection: close\r\n" + auth + b"\r\n", wait=2))
        assert answered == 200 and time.monotonic() - t0 < 3
        assert threading.active_count() < 100
    finally:
        for s in idle:
            s.close()
    assert "Traceback" not in capfd.readouterr().err


# -- the fuzz test ----------------------------------------------------------------------------------------
def test_fuzz_malformed_images_never_escape_as_tracebacks(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from PIL import Image

    from blackbox.errors import InputError
    from blackbox.images import decode_image

    import io as _io

    seeds = []
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "I;16"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "F")):
        buf = _io.BytesIO()
        Image.new(mode, (9, 7)).save(buf, format=fmt)
        seeds.append(buf.getvalue())

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(seeds), st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
           st.integers(0, 4000))
    def check(seed, flips, cut):
        data = bytearray(seed)
        for pos, value in flips:
            if pos < len(data):
                data[pos] = value
        data = bytes(data[:max(cut, 8)])
        try:
            arr = decode_image(_io.BytesIO(data), "fuzz", limit=1_000_000)
        except InputError:
            return
        assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[2] == 3
        assert np.all(np.isfinite(arr)) and arr.min() >= 0 and arr.max() <= 1

    check()


def test_fuzz_malformed_answers_never_overspend_or_write_on_failure(capsys, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from PIL import Image

    image = tmp_path / "fuzz.png"
    Image.fromarray((np.random.default_rng(5).random((24, 24, 3)) * 255).astype(np.uint8)).save(image)
    numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                        st.just("1e308"), st.none(), st.text(max_size=4))
    top = st.lists(st.fixed_dictionaries({"token": st.sampled_from(["Yes", "No", " yes", "", "x"]),
                                          "logprob": numbers}), max_size=4)
    answer = st.one_of(
        st.fixed_dictionaries({"choices": st.just([{"message": {"content": "Yes"}, "logprobs": None}])}),
        st.builds(lambda t, u: {"choices": [{"message": {"content": "Yes"},
                                             "logprobs": {"content": [{"token": "Yes", "logprob": -0.1,
                                                                       "top_logprobs": t}]}}],
                                "usage": {"prompt_tokens": u, "completion_tokens": 1}}, top, numbers),
        st.dictionaries(st.text(max_size=5), numbers, max_size=3),
        st.text(max_size=30))
    status = st.sampled_from([200, 200, 200, 400, 401, 404, 429, 500, 503])
    state = {}

    def fuzzed(h, request, number):
        code, body = state["plan"][(number - 1) % len(state["plan"])]
        raw = body if isinstance(body, str) else json.dumps(body, allow_nan=True)
        if code == 200:
            h.pay(None)
        h.json(code, None, raw=raw.encode(), headers={"Retry-After": "0"})

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(status, answer), min_size=1, max_size=6))
    def check(plan):
        state["plan"] = plan
        out = tmp_path / "fuzz-map.npy"
        if out.exists():
            out.unlink()
        with Hostile(fuzzed) as srv:
            code, _, err = saliency(capsys, srv, image, "--queries", 12, "--max-attempts", 2, "--no-cache",
                                    "--save-map", out, "--grid", 2, "--timeout", 5)
            assert code in (0, 2) and "Traceback" not in err, err
            assert srv.paid <= 12
            if code != 0:
                assert not out.exists()

    check()
