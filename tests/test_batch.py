"""Half price: the Batch API end to end over loopback HTTP (`blackbox serve`'s ModelServer with the
fault fixture's counters), and the dry run's two prices.

What the fault server counts is what a provider bills: every full answer, by request body (a body
answered twice is paid twice), whether it was asked alone or as a line of a batch.
"""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openai
import pytest

from blackbox.adapters.remote.cache import ResponseCache
from blackbox.adapters.remote.engine import QueryEngine
from blackbox.adapters.remote.openai_transport import OpenAITransport
from blackbox.adapters.remote.openai_vision import openai_vision_model
from blackbox.adapters.remote.pricing import PriceTable
from blackbox.cli.main import main
from blackbox.errors import InputError
from blackbox.queries import Budget
from blackbox.saliency import Saliency
from blackbox.saliency.pipeline import explain_image
from fault_server import BrightnessScorer, FaultPlan, FaultServer
from terminal import interruptible
from test_remote_cli import _wait_for, env  # noqa: F401 - env: the fixture (own cache folder, no OpenAI variables)

pytestmark = pytest.mark.network
MODEL = "batch-vision"
BLACKBOX = str(Path(sys.executable).parent / "blackbox")


@pytest.fixture
def servers():
    started = []

    def make(**settings):
        faults = FaultPlan(**settings.pop("faults", {}))
        srv = FaultServer(scorer=BrightnessScorer(), model_id=MODEL, faults=faults, **settings).start()
        started.append(srv)
        return srv
    yield make
    for srv in started:
        srv.stop()


def photo(seed=0, size=32):
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def model_on(srv, cache: Path, budget=None, **options):
    """The vision model on ``srv`` with its own cache file (a fresh one: a first run)."""
    return openai_vision_model(f"openai:{MODEL}", base_url=srv.url, resolution=16, budget=budget,
                               cache=ResponseCache(cache), backoff=0.01, max_wait=0.5, **options)


def saliency_map(srv, cache: Path, batch: bool, queries=41, seed=0, image=None, cap=None, **options):
    """``(map, usage)`` of one photo, sent one by one or batched (``cap``: the budget's queries)."""
    with model_on(srv, cache, Budget(max_queries=cap or queries)) as model:
        done = explain_image(model, photo() if image is None else image, target="cat", queries=queries, seed=seed,
                             explainer=Saliency.from_options(**{"grid": 3, "method": "banzhaf", **options}),
                             batch=batch)
        return done.result.map, model.usage()


# -- one map ----------------------------------------------------------------------------------------
def test_a_batched_map_is_the_synchronous_map_and_a_rerun_pays_nothing(servers, tmp_path, capsys):
    srv, one_by_one = servers(), servers()
    alone, _ = saliency_map(one_by_one, tmp_path / "alone.sqlite", batch=False)
    assert one_by_one.counters.answered == 41  # the probe + 40 map queries
    batched, usage = saliency_map(srv, tmp_path / "batched.sqlite", batch=True)
    assert np.array_equal(alone, batched)
    assert srv.counters.answered == 41 and srv.counters.duplicate_paid == 0
    assert srv.batch_sizes() == [40]  # the probe alone (its answer shapes the requests), the map as one batch
    assert usage["budget"]["queries"] == 41 and usage["batched"] == 40 and usage["batches"] == 1
    assert usage["batch_ids"] == list(srv.batches.batches) and usage["cache_hits"] == 0
    assert "sent 40 requests as batch" in capsys.readouterr().err
    again, usage = saliency_map(srv, tmp_path / "batched.sqlite", batch=True)
    assert np.array_equal(alone, again) and srv.counters.answered == 41 and srv.batch_sizes() == [40]
    assert usage["budget"]["queries"] == 0 and usage["cache_hits"] == 41


def test_explain_takes_batch_and_a_local_model_refuses_it(servers, tmp_path, model):
    import blackbox

    srv = servers()
    with model_on(srv, tmp_path / "c.sqlite") as remote:
        result = blackbox.explain(photo() / 255.0, remote, "cat", queries=21, grid=3, method="banzhaf", batch=True)
    assert result.queries == 20 and srv.batch_sizes() == [20]
    with pytest.raises(InputError, match="no batch interface"):
        blackbox.explain(photo() / 255.0, model, queries=21, grid=3, batch=True)


@pytest.mark.parametrize("design,stages", [({"focus": 0.3}, 2), ({"refine": True}, 2),
                                           ({"space": "pixel", "method": "ig", "allocator": "neyman", "blocks": 3,
                                             "rounds": 3}, 3)])
def test_designs_in_stages_send_one_batch_per_stage(servers, tmp_path, design, stages):
    """Later queries depend on earlier answers: each stage is a batch of its own, and the map is
    the synchronous one (the later stages were drawn from the real answers, not placeholders)."""
    srv, one_by_one = servers(), servers()
    alone, _ = saliency_map(one_by_one, tmp_path / "alone.sqlite", batch=False, queries=61, **design)
    paid_alone = one_by_one.counters.answered
    batched, usage = saliency_map(srv, tmp_path / "batched.sqlite", batch=True, queries=61, **design)
    assert np.array_equal(alone, batched)
    assert len(srv.batch_sizes()) == stages and sum(srv.batch_sizes()) == paid_alone - 1
    assert srv.counters.answered == paid_alone and srv.counters.duplicate_paid == 0
    assert usage["budget"]["queries"] == paid_alone


def test_many_images_send_one_batch_per_stage_for_the_whole_folder(servers, tmp_path):
    from blackbox.many import explain_many

    srv, one_by_one = servers(), servers()
    images = {f"p{i}": photo(i) for i in range(3)}
    options = dict(queries=41, targets="cat", grid=3, method="banzhaf", focus=0.3, progress=False)
    with model_on(one_by_one, tmp_path / "alone.sqlite") as model:
        alone = explain_many(images, model, **options)
    paid_alone = one_by_one.counters.answered
    with model_on(srv, tmp_path / "batched.sqlite") as model:
        batched = explain_many(images, model, batch=True, **options)
        with pytest.raises(InputError, match="serial executor"):
            explain_many(images, model, batch=True, executor="pool", **options)
    assert len(srv.batch_sizes()) == 2 and sum(srv.batch_sizes()) == paid_alone - 1  # one probe
    assert srv.counters.answered == paid_alone and srv.counters.duplicate_paid == 0
    for a, b in zip(alone, batched):
        assert b.status == "done" and np.array_equal(a.map, b.map)
    assert sum(r.details["paid"] for r in batched) == srv.counters.answered  # the probe in the first image


# -- what goes wrong ----------------------------------------------------------------------------------
def test_a_batch_that_expires_half_done_resends_only_the_missing_half(servers, tmp_path, capsys):
    srv = servers(faults={"expire_batches": (20,)})
    alone, _ = saliency_map(servers(), tmp_path / "alone.sqlite", batch=False)
    batched, usage = saliency_map(srv, tmp_path / "batched.sqlite", batch=True)
    assert np.array_equal(alone, batched)
    assert srv.batch_sizes() == [40, 20] and srv.counters.duplicate_paid == 0 and srv.counters.answered == 41
    assert usage["budget"]["queries"] == 41
    assert "20 requests have no answer yet" in capsys.readouterr().err


def test_failed_and_unusable_lines_are_sent_again_and_paid_once(servers, tmp_path):
    """Lines answered 429 or 500 (not billed) and answers without logprobs (billed, unusable) are
    judged as synchronous attempts are: sent again in a new batch until answered."""
    srv = servers(faults={"rate_limit": 0.15, "server_error": 0.1, "missing_logprobs": 0.1, "retry_after": 0.01,
                          "first": (None,)})  # the probe gets its logprobs (else the scoring would change)
    alone, _ = saliency_map(servers(), tmp_path / "alone.sqlite", batch=False)
    batched, usage = saliency_map(srv, tmp_path / "batched.sqlite", batch=True, cap=80)
    assert np.array_equal(alone, batched)
    sizes = srv.batch_sizes()
    faults = srv.counters.faults
    assert len(sizes) >= 2 and sizes[0] == 40 and srv.counters.duplicate_paid == 0
    assert usage["budget"]["queries"] == 41 + faults["missing_logprobs"]  # the unusable answers were paid too
    assert usage["unusable"] == faults["missing_logprobs"]


def test_a_cap_that_cannot_hold_the_batch_refuses_before_upload(servers, tmp_path, env, capsys):
    from PIL import Image

    srv = servers()
    Image.fromarray(photo()).save(tmp_path / "p.png")
    code = main(["saliency", str(tmp_path / "p.png"), "--model", f"openai:{MODEL}", "--base-url", srv.url,
                 "--target", "cat", "--queries", "41", "--grid", "3", "--method", "banzhaf", "--resolution", "16", "--batch",
                 "--max-tokens", "3000", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was uploaded" in err and len(err.strip().splitlines()) == 1, err
    assert srv.batches.files == {} and srv.counters.answered == 1  # the probe only


def test_the_dry_run_prints_both_prices_and_a_batch_costs_half(tmp_path, env, capsys, coffee_png):
    """1000 gpt-4o-mini queries at low detail (the issue's figure): the batched run pays half
    (the probe is sent alone at the full price)."""
    code = main(["saliency", str(coffee_png), "--model", "gpt-vision", "--target", "espresso", "--dry-run",
                 "--batch", "--json", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    ratio = report["estimated_batch_cost"] / report["estimated_cost"]
    assert 0.45 <= ratio <= 0.55 and report["batch_ratio"] == pytest.approx(ratio, abs=1e-4)
    assert report["estimated_cost"] == pytest.approx(0.43, abs=0.01)  # the synchronous figure
    code = main(["saliency", str(coffee_png), "--model", "gpt-vision", "--target", "espresso", "--dry-run",
                 "--queries", "20", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "sent one by one" in text and "through the Batch API, 0.5" in text


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_run_stopped_while_its_batch_runs_collects_it_when_run_again(servers, tmp_path, env, sig):
    """Killed while polling: the batch goes on at the provider; the same command run again finds
    it (recorded in the query cache) and waits for it: every request is paid exactly once."""
    from PIL import Image

    srv = servers(latency=0.05)
    Image.fromarray(photo()).save(tmp_path / "p.png")
    args = [BLACKBOX, "saliency", tmp_path / "p.png", "--model", f"openai:{MODEL}", "--base-url", srv.url,
            "--target", "cat", "--queries", "61", "--grid", "3", "--method", "banzhaf", "--resolution", "16",
            "--batch", "--json"]
    proc = subprocess.Popen(interruptible(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _wait_for(lambda: srv.counters.answered >= 15), "the batch never got going"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and srv.counters.answered < 50
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"still runs at the provider" in err and b"Traceback" not in err
    out = subprocess.run(list(map(str, args)), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sent earlier" in out.stderr and "waiting for it instead of sending them again" in out.stderr
    report = json.loads(out.stdout)
    [size] = srv.batch_sizes()  # one batch, collected by the second run: nothing sent again
    assert srv.counters.answered == 1 + size and srv.counters.duplicate_paid == 0  # + the probe
    assert report["usage"]["budget"]["queries"] == report["usage"]["batched"] == size  # the probe was cached
    again = subprocess.run(list(map(str, args)), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["usage"]["budget"]["queries"] == 0
    assert srv.counters.answered == 1 + size


# -- the engine alone (an evaluation pass: a fixed set of requests scored at once) ---------------------
def test_an_evaluation_pass_sends_its_requests_as_one_batch(servers, tmp_path):
    from blackbox.adapters.remote.image_model import png_data_url

    srv = servers()
    prices = PriceTable({MODEL: {"input": 1.0, "output": 2.0, "batch": 0.5}})
    requests = [{"model": MODEL, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 2,
                 "messages": [{"role": "user", "content": [
                     {"type": "text", "text": "Is there a cat in this image? Answer Yes or No."},
                     {"type": "image_url", "image_url": {"url": png_data_url(photo(i, 8))}}]}]} for i in range(6)]

    def engine(cache, **kw):
        return QueryEngine(OpenAITransport(base_url=srv.url), cache=ResponseCache(cache), model=MODEL, prices=prices,
                           **kw)
    with engine(tmp_path / "a.sqlite", dry_run=True) as dry:
        dry.map(requests, batch=True)
        assert dry.stats.estimated_batch_cost == pytest.approx(dry.stats.estimated_cost / 2)
    with engine(tmp_path / "a.sqlite") as alone:
        one_by_one = alone.map(requests)
    with engine(tmp_path / "b.sqlite", budget=Budget(max_queries=6)) as batched:
        answers = batched.map(requests, batch=True)
        assert [a.body["choices"] for a in answers] == [a.body["choices"] for a in one_by_one]
        assert batched.budget.cost == pytest.approx(alone.budget.cost / 2) and batched.budget.queries == 6
        assert batched.map(requests, batch=True)[0].body == answers[0].body and srv.batch_sizes() == [6]


# -- blackbox serve's Batch API --------------------------------------------------------------------------
def _client(srv):
    return openai.OpenAI(api_key="no-key", base_url=srv.url, max_retries=0)


def _line(i, model=MODEL, label="cat"):
    from blackbox.adapters.remote.image_model import png_data_url

    body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "text", "text": f"Is there a {label} in this image?"},
        {"type": "image_url", "image_url": {"url": png_data_url(photo(i, 8))}}]}]}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def _jsonl(lines) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def test_serve_runs_batches_as_openai_does(servers):
    srv = servers(latency=0.02)
    client = _client(srv)
    lines = [_line(i) for i in range(20)] + [_line(99, model="no-such-model")]
    upload = client.files.create(file=("in.jsonl", _jsonl(lines), "application/jsonl"), purpose="batch")
    assert client.files.retrieve(upload.id).bytes == len(_jsonl(lines).getvalue())
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    seen = {batch.status}
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.02)
        batch = client.batches.retrieve(batch.id)
        seen.add(batch.status)
    assert batch.status == "completed" and {"validating", "in_progress"} & seen
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (21, 20, 1)
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).content.splitlines()]
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).content.splitlines()]
    assert sorted(line["custom_id"] for line in out) == sorted(f"r{i}" for i in range(20))
    assert all(line["response"]["status_code"] == 200 and line["response"]["body"]["choices"] for line in out)
    assert errors[0]["custom_id"] == "r99" and errors[0]["response"]["status_code"] == 404
    assert srv.counters.answered == 20  # each line answered (and counted) like a request sent alone
    assert [b.id for b in client.batches.list(limit=5)] == [batch.id]


def test_serve_cancels_refuses_bad_files_and_cross_site_uploads(servers):
    import httpx2

    srv = servers(latency=0.05)
    client = _client(srv)
    upload = client.files.create(file=("in.jsonl", _jsonl([_line(i) for i in range(30)]), "application/jsonl"),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert _wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 3, 20)
    assert client.batches.cancel(batch.id).status == "cancelling"
    assert _wait_for(lambda: client.batches.retrieve(batch.id).status == "cancelled", 20)
    done = client.batches.retrieve(batch.id)
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).content.splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert len(errors) + done.request_counts.completed == 30
    bad = client.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "x"}\n'), "application/jsonl"),
                              purpose="batch")
    failed = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert _wait_for(lambda: client.batches.retrieve(failed.id).status == "failed", 20)
    assert client.batches.retrieve(failed.id).errors.data[0].message
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n"), "application/jsonl"), purpose="assistants")
    # a web page can post a form across sites, but not with an Authorization header
    form = httpx2.post(f"{srv.url}/files", files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "batch"})
    assert form.status_code == 401 and sum(f.purpose == "batch" for f in srv.batches.files.values()) == 2
    plain = httpx2.post(f"{srv.url}/files", content=b"purpose=batch", headers={
        "Authorization": "Bearer x", "Content-Type": "text/plain"})
    assert plain.status_code == 415


# -- flex and the price table -----------------------------------------------------------------------------
class Recording(FaultServer):
    """The fault server, keeping every request body it answers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def answer(self, route, raw):
        self.seen.append(json.loads(raw))
        return super().answer(route, raw)


def test_flex_is_sent_at_its_tier_priced_at_its_share_and_cached_as_any_answer(tmp_path):
    srv = Recording(scorer=BrightnessScorer(), model_id=MODEL,
                    price={"input": 1.0, "output": 2.0, "batch": 0.5, "flex": 0.5}).start()
    try:
        def run(tier):
            with model_on(srv, tmp_path / "c.sqlite", Budget(), service_tier=tier) as model:
                images = np.stack([photo(0, 16), photo(1, 16)]) / 255.0
                return model.score_fn(model.resolve_target("cat"))(images), model.usage()
        flex, usage = run("flex")
        assert all(body.get("service_tier") == "flex" for body in srv.seen) and len(srv.seen) == 2  # probe + 1
        full = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
        assert usage["budget"]["cost"] == pytest.approx(full / 2)
        standard, usage = run(None)
        assert np.array_equal(flex, standard) and len(srv.seen) == 2 and usage["budget"]["queries"] == 0
    finally:
        srv.stop()
    with pytest.raises(InputError, match="no flex rate for gpt-4o-mini"):
        openai_vision_model("gpt-vision", dry_run=True, service_tier="flex", cache=False)


def test_the_price_table_knows_each_models_batch_share(tmp_path):
    table = PriceTable()
    assert table.discount("gpt-4o-mini", "batch") == 0.5 and table.discount("gpt-4o-mini", "flex") is None
    assert table.discount("o4-mini-2025-04-16", "flex") == 0.5
    assert table.cost("gpt-4o-mini", 1000, 10, "batch") == pytest.approx(table.cost("gpt-4o-mini", 1000, 10) / 2)
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"mine": {"input": 1, "output": 2, "batch": 0.4}}))
    table.update_from(str(path))
    assert table.cost("mine", 10, 0, "batch") == pytest.approx(4e-6) and table.cost("mine", 10, 0, "flex") == 1e-5
    path.write_text(json.dumps({"mine": {"input": 1, "output": 2, "batch": 2}}))
    with pytest.raises(InputError, match="share"):
        table.update_from(str(path))
