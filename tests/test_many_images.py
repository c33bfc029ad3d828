"""Many images in one call: executors agree, a shared cap holds across workers (counted by the
server), a killed worker loses nothing finished and pays nothing twice, a run resumes.

Real parts only: the embedded model, ``blackbox serve``'s ModelServer on 127.0.0.1 (counting what
it answers: tests/fault_server.py), spawned process pools and one local Ray cluster for the whole
session (``ray.init(num_cpus=2)``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import blackbox
from blackbox.adapters import model_spec
from blackbox.adapters.remote.serve import ClassifierScorer
from blackbox.errors import InputError
from blackbox.sample_images import load_sample
from fault_server import FaultServer
from terminal import interruptible

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")
SMALL = dict(grid=6, seed=3)
EXECUTORS = ["pool", pytest.param("ray", marks=pytest.mark.slow)]
BLACKBOX = str(Path(sys.executable).parent / "blackbox")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four bundled photos as PNG files, shrunk to 256 px so a worker's round trip is short."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(load_sample(name)).resize((256, 256), Image.BICUBIC).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs, loopback, no dashboard) for every test that needs it."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'blackbox-lr[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning",
             _node_ip_address="127.0.0.1")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # KillOnce travels by value
    yield ray
    ray.shutdown()


def executor_ready(name, request):
    if name == "ray":
        request.getfixturevalue("ray_cluster")
    return name


@pytest.fixture
def server(model, tmp_path, monkeypatch):
    """`blackbox serve` in-process on 127.0.0.1 (the stand-in for a paid endpoint), a fresh
    query cache, and the server's own count of what it answered."""
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    srv = FaultServer(scorer=ClassifierScorer(model)).start()
    yield srv
    srv.stop()


def served(srv) -> dict:
    with urllib.request.urlopen(srv.url + "/stats") as r:
        return json.load(r)


def remote_spec(srv, **options):
    return model_spec("openai:efficientnet-lite0", base_url=srv.url, concurrency=4, **options)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_every_executor_gives_the_serial_maps(executor, request, model, photos):
    serial = blackbox.explain_many(photos, model, queries=64, progress=False, **SMALL)
    other = blackbox.explain_many(photos, model_spec(), queries=64, progress=False,
                                  executor=executor_ready(executor, request), workers=2, **SMALL)
    assert [r.name for r in serial] == [r.name for r in other] == sorted(PHOTOS)
    workers = {r.details["worker"] for r in other}
    assert len(workers) == 2 and os.getpid() not in {int(w.split(":")[1]) for w in workers}
    for a, b in zip(serial, other):
        assert a.status == b.status == "done"
        assert (a.target_label, a.top5, a.queries) == (b.target_label, b.top5, 64)
        np.testing.assert_array_equal(a.map, b.map)
        np.testing.assert_array_equal(a.stderr, b.stderr)
    assert serial.spent["queries"] == other.spent["queries"] == 4 * 64


def test_each_image_is_explained_as_explain_would_alone(model, photos):
    batch = blackbox.explain_many(photos, model, queries=64, targets={"coffee": "tea cup"}, progress=False,
                                  faithfulness=6, **SMALL)
    alone = blackbox.explain(str(photos / "coffee.png"), model, target="tea cup", queries=64, **SMALL)
    coffee = batch["coffee"]
    assert coffee.target_label == "tea cup" and batch["chelsea"].target_label == batch["chelsea"].top5[0][0]
    np.testing.assert_array_equal(coffee.map, alone.map)
    np.testing.assert_array_equal(coffee.full_map, alone.full_map)
    assert coffee.faithfulness["queries"] == 2 * 7
    assert batch.spent["queries"] == 4 * (64 + 14)
    assert "deletion" in batch.table() and "<table>" in batch._repr_html_()


@pytest.mark.network
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_shared_query_cap_holds_across_workers(executor, request, server, photos):
    # 4 images x 96 queries (chunks of 64 + 32) under a cap of 200: per-worker budgets would
    # let 2 workers spend 384 between them; the shared ledger stops them at 200
    budget = blackbox.Budget(max_queries=200)
    batch = blackbox.explain_many(photos, remote_spec(server), queries=96, targets="espresso", budget=budget,
                                  executor=executor_ready(executor, request), workers=2, progress=False, **SMALL)
    stats = served(server)
    assert stats["duplicate_paid"] == 0
    assert 0 < stats["answered"] == batch.spent["queries"] <= 200  # one counter: billable requests
    assert budget.queries == batch.spent["queries"] and batch.spent["tokens"] > 0
    statuses = [r.status for r in batch]
    assert statuses.count("done") >= 1 and set(statuses) - {"done"} <= {"stopped", "pending"}
    assert batch.interrupted and "budget exhausted" in batch.interrupted


@dataclass
class KillOnce:
    """A model description whose model SIGKILLs its own worker process once, right before its
    ``calls``-th batch of queries (so nothing is in flight), the first time any worker gets there."""

    spec: object
    flag: str
    calls: int
    remote = True

    def build(self, **kwargs):
        model = self.spec.build(**kwargs)
        score_fn, count = model.score_fn, [0]

        def killing_score_fn(target, kind="logprob"):
            fn = score_fn(target, kind)

            def wrapped(images):
                count[0] += 1
                if count[0] == self.calls:
                    try:
                        os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))
                        os.kill(os.getpid(), signal.SIGKILL)
                    except FileExistsError:
                        pass
                return fn(images)
            wrapped.__dict__.update(fn.__dict__)  # still metered (fn.budget) and keyed like the original
            return wrapped
        model.score_fn = killing_score_fn
        return model

    def make_cache(self):
        return self.spec.make_cache()

    def describe(self):
        return self.spec.describe()


@pytest.mark.network
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_killed_worker_loses_no_finished_image_and_pays_nothing_twice(executor, request, server, photos,
                                                                         tmp_path):
    # 129 requests = the probe + 128 map queries = 2 batches of 64 per image; a worker dies before
    # its 4th batch, i.e. half-way through its second image, whose first 64 answers are already
    # paid and cached. Each worker process probes the endpoint once, on its first image: the probe
    # asks for the photo, which is also the map's first query, so it is paid once.
    flag = tmp_path / "killed"
    spec = KillOnce(remote_spec(server), str(flag), calls=4)
    batch = blackbox.explain_many(photos, spec, queries=129, targets="espresso", out_dir=tmp_path / "out",
                                  executor=executor_ready(executor, request), workers=2, progress=False, **SMALL)
    assert flag.exists(), "no worker was killed"
    assert [r.status for r in batch] == ["done"] * 4 and {r.queries for r in batch} == {128}
    stats = served(server)
    assert stats["duplicate_paid"] == 0  # every query paid once: the retried image's first half came from the cache
    assert stats["answered"] == 4 * 128
    assert sum(r.details["paid"] for r in batch) == stats["answered"] - 64
    assert sum(r.details["cached"] for r in batch) >= 64
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.npz")) == sorted(PHOTOS)
    assert batch.spent["queries"] == stats["answered"]  # the ledger counted each paid request once


@pytest.mark.network
def test_an_interrupted_run_resumes_from_its_folder_without_paying_twice(server, photos, tmp_path):
    # Ctrl-C: the answers in flight still arrive and are cached before the process exits (a
    # kill -9 would lose those, and only those)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    out = tmp_path / "out"
    args = [BLACKBOX, "saliency", str(photos), "--out-dir", str(out), "--model", "openai:efficientnet-lite0",
            "--base-url", server.url, "--target", "espresso", "--queries", "129", "--grid", "6",
            "--seed", "3", "--no-progress", "--no-overlays"]  # the probe + 128 map queries per image
    run = subprocess.Popen(interruptible(args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.json")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None, run.stderr.read()
        run.send_signal(signal.SIGINT)
        assert run.wait(30) == 130
    finally:
        run.kill()
        run.wait(10)
    finished = sorted(p.stem for p in out.glob("*.json") if p.stem != "summary")
    assert 1 <= len(finished) < 4
    again = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["done"] == 4 and summary["resumed"] == len(finished)
    assert json.loads((out / "summary.json").read_text())["done"] == 4
    stats = served(server)
    # every map query paid once (each run's probe asked for its first image's photo, a map query too)
    assert stats["duplicate_paid"] == 0 and stats["answered"] == 4 * 128


def test_a_results_folder_is_resumed_and_guarded(model, photos, tmp_path):
    out = tmp_path / "out"
    first = blackbox.explain_many([photos / "coffee.png"], model, queries=32, out_dir=out, progress=False, **SMALL)
    both = blackbox.explain_many(photos, model, queries=32, out_dir=out, progress=False, **SMALL)
    assert both["coffee"].resumed and not both["chelsea"].resumed
    np.testing.assert_array_equal(both["coffee"].map, first["coffee"].map)
    assert both.spent["queries"] == 3 * 32  # the coffee map was not paid again
    with pytest.raises(InputError, match="other settings.*queries"):
        blackbox.explain_many(photos, model, queries=48, out_dir=out, progress=False, **SMALL)
    with pytest.raises(InputError, match="model description"):
        blackbox.explain_many(photos, model, queries=32, executor="pool")
    # above 1000 queries the smoothness prior fades: such runs say so, so that a folder of maps
    # made before it faded refuses to mix with new ones (one clear error) instead of resuming
    from blackbox.many.run import run_settings

    assert "prior_fades_above" not in run_settings({}, 1000, {}, None)
    assert run_settings({}, 4000, {}, None)["prior_fades_above"] == 1000
    assert run_settings({}, 1000, {}, None)["method"] == "quarters"  # the default, named: another default is not reused
    assert run_settings({}, 1000, {"method": "banzhaf"}, None)["method"] == "banzhaf"


def test_bad_inputs_are_one_clear_error(model, photos, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        blackbox.explain_many(tmp_path / "empty", model, queries=32)
    with pytest.raises(InputError, match="image not found"):
        blackbox.explain_many([photos / "nope.png"], model, queries=32)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    batch = blackbox.explain_many([tmp_path / "broken.png", photos / "coffee.png"], model, queries=32,
                                  progress=False, **SMALL)
    assert [r.status for r in batch] == ["failed", "done"] and "not an image" in batch["broken"].error
