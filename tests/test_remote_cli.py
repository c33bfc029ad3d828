"""The whole remote path through the CLI over loopback HTTP: `blackbox serve`, keys, budgets, resume.

Runs are in-process (``blackbox.cli.main.main``) unless the test is about the process itself
(killed with SIGKILL or Ctrl-C, the `blackbox serve` command).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from blackbox.adapters.remote.serve import ClassifierScorer
from blackbox.cli.main import main
from fault_server import BrightnessScorer, FaultServer
from terminal import interruptible

pytestmark = pytest.mark.network
BLACKBOX = str(Path(sys.executable).parent / "blackbox")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The environment of a run: its own cache folder, no OpenAI variables (in-process and for
    subprocesses alike)."""
    for name in [k for k in os.environ if k.startswith("OPENAI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    e = dict(os.environ)
    e.update(TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return e


@pytest.fixture
def servers():
    started = []

    def make(scorer=None, **settings):
        srv = FaultServer(scorer=scorer or BrightnessScorer(), **settings).start()
        started.append(srv)
        return srv
    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def square_png(tmp_path_factory, coffee_original):
    from PIL import Image

    path = tmp_path_factory.mktemp("remote") / "coffee224.png"
    Image.fromarray(coffee_original).resize((224, 224), Image.BICUBIC).save(path)
    return path


def cli(capsys, *args):
    """``blackbox ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def random_png(path, size, seed):
    from PIL import Image

    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def remote_args(image, url, *extra):
    """The remote CLI run; banzhaf (distinct masks on small grids) unless a method is given, so the
    counts below are the requests of the map and the probe."""
    method = [] if "--method" in extra else ["--method", "banzhaf"]
    return ["saliency", image, "--model", "openai:efficientnet-lite0", "--base-url", url, "--target", "espresso",
            "--no-progress", *method, *extra]


@pytest.mark.slow
def test_remote_map_through_the_served_model_matches_the_local_map(coffee_png, env, tmp_path, model, servers, capsys):
    """The served model describes its view (the classifier's centre crop), so the remote map of
    the coffee photo is the local map: the same images, the same scores (log P(Yes) = log p)."""
    from blackbox.images import load_image
    from blackbox.saliency.metrics import spearman
    from blackbox.saliency import saliency

    srv = servers(scorer=ClassifierScorer(model))
    code, out, err = cli(capsys, *remote_args(coffee_png, srv.url, "--queries", 129, "--grid", 7, "--json",
                                              "--method", "quarters", "--scoring", "logprob",
                                              "--save-map", tmp_path / "remote.npy"))
    assert code == 0, err
    report = json.loads(out)
    # the probe asks for the photo, the map's first query: answered once, so 128 requests are paid
    assert report["queries_used"] == 128 and report["usage"]["budget"]["queries"] == 128
    assert report["provenance"]["scoring"] == "logprob" and report["provenance"]["view"]["kind"] == "center_crop"
    assert report["provenance"]["system_fingerprint"] == ["blackbox-serve-0.1.0"]
    remote = np.load(tmp_path / "remote.npy")
    original = load_image(coffee_png)
    view = model.view(*original.shape[:2])
    local = saliency(model.score_fn(model.resolve_target("espresso")), view.to_working(original), queries=128,
                     grid=7, seed=0)
    rho = spearman(view.to_original(local.map).ravel(), remote.ravel())
    assert rho > 0.99, rho


def _wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def run(args, env, timeout=120):
    return subprocess.run([BLACKBOX, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_without_paying_twice(square_png, env, servers, sig):
    srv = servers(latency=0.05)  # the brightness scorer: this test is about payments, not the model
    args = remote_args(square_png, srv.url, "--queries", 161, "--grid", 5, "--concurrency", 4, "--json",
                       "--resolution", 64)
    proc = subprocess.Popen(interruptible([BLACKBOX, *args]), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert _wait_for(lambda: srv.counters.answered >= 40), "the run never got going"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"rerun the same command to resume" in stderr
        assert b"Traceback" not in stderr
    first = srv.counters.answered
    assert first < 161
    out = run(args, env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["queries_used"] == 160
    dup = srv.counters.duplicate_paid
    if sig == signal.SIGINT:
        # Ctrl-C: requests in flight finish and are cached, so nothing is paid twice
        assert dup == 0
    else:
        # SIGKILL: only answers in flight at the moment of the kill can be lost (at most concurrency)
        assert dup <= 4
    assert report["usage"]["cache_hits"] >= first - dup
    assert srv.counters.answered == 161 + dup


def test_wrong_key_is_a_clear_error_and_keys_never_leak(tmp_path, env, servers, capsys, monkeypatch):
    right, wrong = "sk-right-0123456789abcdefXYZ", "sk-wrong-9876543210fedcbaQRS"
    srv = servers(api_key=right)
    image = random_png(tmp_path / "img.png", 40, seed=0)
    args = ["saliency", image, "--model", "openai:efficientnet-lite0", "--base-url", srv.url, "--target", "cat",
            "--queries", 64, "--grid", 4, "--method", "banzhaf", "--resolution", 32, "--no-progress",
            "--api-key-env", "MY_KEY"]
    monkeypatch.setenv("MY_KEY", right)
    ok = cli(capsys, *args)
    assert ok[0] == 0, ok[2]
    assert "remote usage: 63 requests paid" in ok[1]  # the probe + 62 map queries: within --queries 64
    assert srv.counters.answered == 63
    monkeypatch.setenv("MY_KEY", wrong)
    bad = cli(capsys, *args, "--seed", 1)
    assert bad[0] == 2
    lines = bad[2].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blackbox: error:") and "401" in lines[0] and "API key" in lines[0]
    assert srv.counters.by_status[401] == 2  # the model card and the probe; no retries on a refused key
    files = list((tmp_path / "cache").rglob("*"))
    blobs = b"".join(p.read_bytes() for p in files if p.is_file())
    assert len(blobs) > 0
    for secret in (right, wrong):
        for text in ok[1:] + bad[1:]:
            assert secret not in text
        assert secret.encode() not in blobs
    # the cache command sees the entries and clears them: 63 answers, and the 62 map answers
    # again under the keys of the points that rendered them (a rerun renders no image)
    code, out, _ = cli(capsys, "cache", "info", "--json")
    assert json.loads(out)["entries"] == 63 + 62
    assert "cleared 125" in cli(capsys, "cache", "clear")[1]


def test_budget_cap_dry_run_and_http_endpoint(tmp_path, env, servers, capsys):
    srv = servers()
    image = random_png(tmp_path / "img.png", 48, seed=1)
    base = ["saliency", image, "--model", "openai:efficientnet-lite0", "--base-url", srv.url, "--target", "cat",
            "--queries", 200, "--grid", 4, "--method", "banzhaf", "--resolution", 32, "--no-progress"]
    code, out, err = cli(capsys, *base, "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["would_send"] == 199 and plan["already_cached"] == 0 and srv.counters.requests == 0
    code, out, err = cli(capsys, *base, "--json")
    assert code == 0, err
    assert srv.counters.requests == srv.counters.answered == plan["would_send"]  # the dry run was exact
    code, out, err = cli(capsys, *base, "--max-tokens", 12000, "--json", "--save-map", tmp_path / "m.npy",
                         "--seed", 1)
    assert code == 0, err
    report = json.loads(out)
    assert report["stopped"] and "tokens" in report["stopped"]
    assert report["usage"]["budget"]["tokens"] <= 12000 and 0 < report["queries_used"] < 198
    assert (tmp_path / "m.npy").exists()  # results are kept
    # a dry run now knows what is cached
    code, out, _ = cli(capsys, *base, "--dry-run", "--json", "--seed", 1)
    again = json.loads(out)
    assert again["already_cached"] >= report["usage"]["sent"] - 1
    # the generic JSON endpoint: URL, request template, score path
    spec = tmp_path / "endpoint.json"
    spec.write_text(json.dumps({"url": srv.url + "/score", "request": {"image": "{image_data_url}", "label": "{target}"},
                                "score_path": "result.log_prob", "resolution": 32}))
    code, out, err = cli(capsys, "saliency", image, "--model", f"http:{spec}", "--target", "cat", "--queries", 64,
                         "--grid", 4, "--no-progress", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["queries_used"] == 64 and report["usage"]["sent"] == 64
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"url": srv.url + "/score", "request": {"image": "{image_data_url}", "label": "{target}"},
                                  "score_path": "result.nope", "resolution": 32}))
    code, _, err = cli(capsys, "saliency", image, "--model", f"http:{broken}", "--target", "cat", "--queries", 64,
                       "--no-progress")
    assert code == 2 and "score path 'result.nope' not found" in err
