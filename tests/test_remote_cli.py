"""The whole remote path through the CLI over loopback HTTP: `blackbox serve`, keys, budgets, resume."""
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

from blackbox.adapters.remote.serve import BrightnessScorer, FaultPlan, ModelServer

pytestmark = pytest.mark.network
BLACKBOX = str(Path(sys.executable).parent / "blackbox")


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    e.update(BLACKBOX_CACHE_DIR=str(tmp_path / "cache"), TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
             TRANSFORMERS_OFFLINE="1")
    return e


@pytest.fixture
def servers():
    started = []

    def make(scorer=None, **faults):
        srv = ModelServer(scorer=scorer or BrightnessScorer(), faults=FaultPlan(**faults)).start()
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


def run(args, env, timeout=120):
    return subprocess.run([BLACKBOX, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def remote_args(image, url, *extra):
    return ["saliency", image, "--model", "openai:efficientnet-lite0", "--base-url", url, "--target", "espresso",
            "--no-progress", *extra]


@pytest.mark.slow
def test_saliency_through_blackbox_serve_matches_the_local_map(square_png, env, tmp_path, model):
    from blackbox.images import ImageView, load_image
    from blackbox.metrics import spearman
    from blackbox.saliency import saliency

    serve = subprocess.Popen([BLACKBOX, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        assert "efficientnet-lite0" in line, line
        url = line.split(" on ")[1].split()[0]
        out = run(remote_args(square_png, url, "--queries", 128, "--grid", 5, "--json",
                              "--save-map", tmp_path / "remote.npy"), env)
    finally:
        serve.terminate()
        serve.wait(10)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["queries_used"] == 128
    assert report["provenance"]["scoring"] == "logprob"
    assert report["provenance"]["system_fingerprint"] == ["blackbox-serve-0.1.0"]
    assert report["usage"]["sent"] + report["usage"]["cache_hits"] == 129  # + the capability probe
    remote = np.load(tmp_path / "remote.npy")
    # the same working view (whole image at 224) and grid, scored locally: log p(espresso), which is
    # exactly what the server reports as log P("Yes")
    image = load_image(square_png)
    view = ImageView.full(224, 224, 224)
    local = saliency(model.score_fn(model.resolve_target("espresso")), view.to_working(image), queries=128,
                     grid=5, seed=0)
    rho = spearman(view.to_original(local.map).ravel(), remote.ravel())
    print(f"rank correlation remote vs local map: {rho:.4f}")
    assert rho > 0.95


def _wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_without_paying_twice(square_png, env, servers, sig):
    srv = servers(latency=0.05)  # the brightness scorer: this test is about payments, not the model
    args = remote_args(square_png, srv.url, "--queries", 160, "--grid", 5, "--concurrency", 4, "--json",
                       "--resolution", 64)
    proc = subprocess.Popen([BLACKBOX, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _wait_for(lambda: srv.counters.answered >= 40), "the run never got going"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
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


def test_wrong_key_is_a_clear_error_and_keys_never_leak(tmp_path, env, servers):
    right, wrong = "sk-right-0123456789abcdefXYZ", "sk-wrong-9876543210fedcbaQRS"
    srv = servers(api_key=right)
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(image)
    args = ["saliency", image, "--model", "openai:efficientnet-lite0", "--base-url", srv.url, "--target", "cat",
            "--queries", 64, "--grid", 4, "--resolution", 32, "--no-progress", "--api-key-env", "MY_KEY"]
    ok = run(args, {**env, "MY_KEY": right})
    assert ok.returncode == 0, ok.stderr
    assert "remote usage: 65 requests paid" in ok.stdout
    bad = run(args + ["--seed", "1"], {**env, "MY_KEY": wrong})
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blackbox: error:") and "401" in lines[0] and "API key" in lines[0]
    assert srv.counters.by_status[401] == 1  # no retries on a refused key
    files = list((tmp_path / "cache").rglob("*"))
    blobs = b"".join(p.read_bytes() for p in files if p.is_file())
    assert len(blobs) > 0
    for secret in (right, wrong):
        for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
            assert secret not in text
        assert secret.encode() not in blobs
    # the cache command sees the entries and clears them
    info = run(["cache", "info", "--json"], env)
    assert json.loads(info.stdout)["entries"] == 65
    assert "cleared 65" in run(["cache", "clear"], env).stdout


def test_budget_cap_dry_run_and_http_endpoint(tmp_path, env, servers):
    srv = servers()
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(1).random((48, 48, 3)) * 255).astype(np.uint8)).save(image)
    base = ["saliency", image, "--model", "openai:efficientnet-lite0", "--base-url", srv.url, "--target", "cat",
            "--queries", 200, "--grid", 4, "--resolution", 32, "--no-progress"]
    dry = run(base + ["--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["would_send"] == 201 and plan["already_cached"] == 0 and srv.counters.requests == 0
    capped = run(base + ["--max-tokens", 12000, "--json", "--save-map", tmp_path / "m.npy"], env)
    assert capped.returncode == 0, capped.stderr
    report = json.loads(capped.stdout)
    assert report["stopped"] and "tokens" in report["stopped"]
    assert report["usage"]["budget"]["tokens"] <= 12000 and 0 < report["queries_used"] < 200
    assert (tmp_path / "m.npy").exists()  # results are kept
    assert srv.counters.answered == report["usage"]["sent"]
    # a dry run now knows what is cached
    again = json.loads(run(base + ["--dry-run", "--json"], env).stdout)
    assert again["already_cached"] >= report["usage"]["sent"] - 1
    # the generic JSON endpoint: URL, request template, score path
    spec = tmp_path / "endpoint.json"
    spec.write_text(json.dumps({"url": srv.url + "/score", "request": {"image": "{image_data_url}", "label": "{target}"},
                                "score_path": "result.log_prob", "resolution": 32}))
    out = run(["saliency", image, "--model", f"http:{spec}", "--target", "cat", "--queries", 64, "--grid", 4,
               "--no-progress", "--json"], env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["queries_used"] == 64 and report["usage"]["sent"] == 64
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"url": srv.url + "/score", "request": {"image": "{image_data_url}", "label": "{target}"},
                                  "score_path": "result.nope", "resolution": 32}))
    bad = run(["saliency", image, "--model", f"http:{broken}", "--target", "cat", "--queries", 64, "--no-progress"], env)
    assert bad.returncode == 2 and "score path 'result.nope' not found" in bad.stderr
