"""The remote query engine over real loopback HTTP: faults, retries, budget, cache, concurrency.

The server is ``blackbox serve``'s ModelServer with injected faults and counters
(tests/fault_server.py) and a cheap deterministic scorer (the mean brightness of the image), so
these tests exercise the HTTP/engine path fast; the embedded-model path is covered in
test_remote_cli.py.
"""
from __future__ import annotations

import json
import multiprocessing
import socket
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx2
import numpy as np
import pytest

from blackbox.adapters.remote.cache import ResponseCache
from blackbox.adapters.remote.engine import QueryEngine, request_key
from blackbox.adapters.remote.http_limits import RequestLimits
from blackbox.adapters.remote.http_model import HTTPTransport
from blackbox.adapters.remote.outcomes import (Verdict, no_answer, retry_after_seconds, retry_delay, status_error,
                                               unusable, verdict_of)
from blackbox.adapters.remote.spending import SlowStart, Spending
from blackbox.adapters.remote.pricing import PriceTable
from blackbox.errors import EndpointRefused, RetryableError
from blackbox.adapters.remote.openai_transport import OpenAITransport
from blackbox.adapters.remote.image_model import png_data_url
from blackbox.adapters.remote.openai_vision import OpenAIVisionModel, yes_logprob, yes_no_logodds
from blackbox.adapters.remote.serve import ModelServer
from blackbox.errors import BudgetExceeded, InputError, ModelError
from blackbox.queries import Budget, QueryRunner
from fault_server import BrightnessScorer, FaultPlan, FaultServer
from hostile import Hostile

pytestmark = pytest.mark.network
MODEL = "test-vision"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server_factory():
    servers = []

    def make(latency=0.0, api_key=None, no_logprobs=False, **faults):
        srv = FaultServer(scorer=BrightnessScorer(), model_id=MODEL, latency=latency, api_key=api_key,
                          no_logprobs=no_logprobs, faults=FaultPlan(**faults)).start()
        servers.append(srv)
        return srv
    yield make
    for srv in servers:
        srv.stop()


def vision(srv, budget=None, cache=True, warn=None, **engine):
    transport = OpenAITransport(base_url=srv.url, api_key_env="BLACKBOX_TEST_KEY")
    eng = QueryEngine(transport, budget=budget, cache=ResponseCache() if cache else None, model=MODEL,
                      prices=PriceTable({MODEL: {"input": 1.0, "output": 2.0}}),
                      **{"concurrency": 8, "backoff": 0.01, "max_wait": 1.0, **engine})
    return OpenAIVisionModel(MODEL, eng, resolution=16, warn=warn or (lambda m: None))


def images(n, seed=0, size=16):
    rng = np.random.default_rng(seed)
    return np.round(rng.random((n, size, size, 3)) * 255).astype(np.float32) / 255


def truth(imgs, scoring="logodds"):
    """What the server's scorer gives for each image (after the PNG round trip, which is exact):
    log p, and the default score log p - log(1 - p)."""
    log_p = -1.0 + 0.98 * imgs.astype(np.float64).reshape(len(imgs), -1).mean(axis=1)
    return log_p if scoring == "logprob" else log_p - np.log1p(-np.exp(log_p))


def test_yes_logprob_sums_case_and_whitespace_variants():
    top = [{"token": "Yes", "logprob": np.log(0.5)}, {"token": " yes", "logprob": np.log(0.2)},
           {"token": "No", "logprob": np.log(0.25)}, {"token": "YES.", "logprob": np.log(0.05)}]
    assert yes_logprob(top) == pytest.approx(np.log(0.75))
    # 'yes' absent: bounded by the smallest listed probability and by the leftover mass
    assert yes_logprob([{"token": "No", "logprob": np.log(0.9)}, {"token": "no", "logprob": np.log(0.08)}]) \
        == pytest.approx(np.log(0.02))


def test_logodds_is_yes_minus_no_with_a_floor_for_the_missing_side():
    top = [{"token": "Yes", "logprob": np.log(0.6)}, {"token": "no", "logprob": np.log(0.3)},
           {"token": " No", "logprob": np.log(0.05)}]
    assert yes_no_logodds(top) == pytest.approx(np.log(0.6 / 0.35))
    # a saturated model: log P(yes) is ~0 for every image, the log-odds still tell them apart
    sure = [{"token": "Yes", "logprob": np.log(0.999)}, {"token": "No", "logprob": np.log(0.0009)}]
    surer = [{"token": "Yes", "logprob": np.log(0.9999)}, {"token": "No", "logprob": np.log(0.00009)}]
    assert yes_no_logodds(surer) - yes_no_logodds(sure) == pytest.approx(np.log(10), abs=0.01)
    # 'no' missing: bounded by the smallest listed probability and the leftover mass (0.01)
    assert yes_no_logodds([{"token": "Yes", "logprob": np.log(0.95)}, {"token": "The", "logprob": np.log(0.04)}]) \
        == pytest.approx(np.log(0.95 / 0.01))
    # both words listed with probability ~0 still give a finite score
    tiny = [{"token": "Yes", "logprob": -1e308}, {"token": "maybe", "logprob": 0.0}]
    assert np.isfinite(yes_no_logodds(tiny))


def test_scores_match_the_server_and_requests_run_concurrently(server_factory):
    srv = server_factory(latency=0.05)
    model = vision(srv)
    x = images(32)
    fn = model.score_fn(model.resolve_target("cat"))
    values = fn(x)
    np.testing.assert_allclose(values, truth(x), atol=1e-6)
    assert model.scoring == "logodds" and model.capabilities["top_logprobs"] == 2
    assert srv.counters.max_in_flight >= 4  # concurrency really happened
    # the probe asked about the first image, so the batch found that answer in the cache
    assert srv.counters.answered == 32 and srv.counters.duplicate_paid == 0
    u = model.usage()
    assert u["sent"] == 32 and u["attempts"] == 32 and u["cache_hits"] == 1
    # tokens and cost settled from the reported usage
    assert u["budget"]["tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0
    assert u["cost"] == pytest.approx((u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1e6)
    model.close()


def test_429_with_retry_after_is_honoured_and_every_attempt_counted(server_factory):
    srv = server_factory(first=("rate_limit",), retry_after=0.6, rate_limit=0.2, seed=3)
    model = vision(srv)
    t0 = time.perf_counter()
    model.engine.submit(model.request(png_data_url(images(1, seed=5)[0]), "cat", "logodds"))
    assert time.perf_counter() - t0 >= 0.55  # waited the server's Retry-After, not the 10 ms backoff
    x = images(40, seed=1)
    values = model.score_fn(model.resolve_target("cat"))(x)
    np.testing.assert_allclose(values, truth(x), atol=1e-6)
    s = model.engine.stats
    assert srv.counters.by_status[429] >= 2
    assert s.attempts == srv.counters.requests  # every HTTP attempt counted, none hidden in the SDK
    assert s.retries == s.failed_attempts == srv.counters.by_status[429]
    assert srv.counters.duplicate_paid == 0
    model.close()


def test_500_retried_then_gives_up_after_max_attempts(server_factory):
    srv = server_factory(first=("server_error",) * 2)
    model = vision(srv, max_attempts=3)
    x = images(1)
    np.testing.assert_allclose(model.score_fn(model.resolve_target("cat"))(x), truth(x), atol=1e-6)
    assert srv.counters.by_status[500] == 2
    model.close()
    always = server_factory(server_error=1.0)
    model = vision(always, max_attempts=3)
    with pytest.raises(ModelError, match="failed 3 attempt"):
        model.engine.submit({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert always.counters.requests == 3 and model.engine.stats.attempts == 3
    assert model.engine.budget.tokens == 0  # 5xx answers are not billed
    model.close()


def test_timeouts_are_retried_and_charged(server_factory):
    srv = server_factory(first=("slow",), slow_seconds=1.5)
    budget = Budget(max_tokens=100_000)
    model = vision(srv, budget=budget, timeout=0.5)
    x = images(2)
    np.testing.assert_allclose(model.score_fn(model.resolve_target("cat"))(x), truth(x), atol=1e-6)
    s = model.engine.stats
    assert s.maybe_billed == 1 and s.retries >= 1
    # the timed-out attempt may have been billed, so it is charged at its reservation
    assert budget.tokens > s.prompt_tokens + s.completion_tokens
    model.close()


def test_malformed_json_and_missing_logprobs_are_retried_not_cached(server_factory):
    srv = server_factory(first=("malformed", "missing_logprobs"))
    model = vision(srv)
    x = images(1)
    # the probe itself hits both faults: the malformed answer is retried, the answer without
    # logprobs would look like "no logprobs"; scoring pinned to logprob rejects and retries it
    model.scoring = "logprob"
    np.testing.assert_allclose(model.score_fn(model.resolve_target("cat"))(x), truth(x, "logprob"), atol=1e-6)
    s = model.engine.stats
    assert s.unusable == 1 and s.failed_attempts == 2 and s.sent == 1
    # both faulty answers were 200s, so they may have been billed: three paid requests in all
    assert model.engine.budget.queries == 3
    cached = ResponseCache().stats()["entries"]
    assert cached == 1
    model.close()


def test_endpoint_without_logprobs_falls_back_with_a_warning(server_factory):
    srv = server_factory(no_logprobs=True)
    warnings = []
    model = vision(srv, warn=warnings.append)
    model.samples = 3
    x = images(4)
    values = model.score_fn(model.resolve_target("cat"))(x)
    assert model.scoring == "confidence" and warnings and "no logprobs" in warnings[0]
    expected = np.log((np.round(100 * np.exp(truth(x, "logprob"))) + 0.5) / 101)
    np.testing.assert_allclose(values, expected, atol=1e-6)
    # 3 replicas per image are distinct cache entries (not collapsed) plus the probe
    assert srv.counters.answered == 4 * 3 + 1
    model.close()


def test_wrong_key_stops_at_once_with_a_clear_message(server_factory, monkeypatch):
    secret = "sk-test-WRONG-0123456789abcdef"
    srv = server_factory(api_key="sk-right-key-000000000000")
    monkeypatch.setenv("BLACKBOX_TEST_KEY", secret)
    model = vision(srv)
    with pytest.raises(EndpointRefused) as info:
        model.score_fn(model.resolve_target("cat"))(images(8))
    message = str(info.value)
    assert "401" in message and "API key" in message and secret not in message
    assert srv.counters.requests == 1  # no retry on 401
    model.close()


def test_budget_cap_mid_run_stops_before_overspending(server_factory):
    srv = server_factory()
    cap = 9000
    budget = Budget(max_queries=400, max_tokens=cap)
    model = vision(srv, budget=budget, concurrency=4)
    fn = model.score_fn(model.resolve_target("cat"))
    runner = QueryRunner(fn, budget=budget, batch_size=16)
    from blackbox.saliency import saliency

    result = saliency(runner, images(1, size=16)[0], queries=400, grid=4, seed=0)
    assert result.stopped and "tokens" in result.stopped
    assert 0 < result.queries < 400 and np.all(np.isfinite(result.cells))
    assert budget.tokens <= cap
    answered = srv.counters.answered
    assert model.engine.stats.sent == answered and srv.counters.duplicate_paid == 0
    with pytest.raises(BudgetExceeded):
        fn(images(16, seed=9))
    assert srv.counters.requests == answered  # nothing more was sent
    model.close()


def test_rerun_pays_nothing_and_replicas_are_not_collapsed(server_factory):
    srv = server_factory()
    x = images(20)
    m1 = vision(srv)
    v1 = m1.score_fn(m1.resolve_target("cat"))(x)
    paid = srv.counters.answered
    m1.close()
    m2 = vision(srv)  # a new process would see the same file
    m2.scoring, m2.capabilities = "logodds", {"probed": False}
    v2 = m2.score_fn(m2.resolve_target("cat"))(x)
    assert np.array_equal(v1, v2) and srv.counters.answered == paid and m2.engine.stats.cache_hits == 20
    assert m2.engine.budget.queries == 0  # cached answers are not billable
    reqs, prepare = m2._requests(x[:1], "cat", "logodds")
    m2.engine.map(reqs * 3, [0, 0, 1], prepare=prepare)  # replica 1 is a deliberate repeat
    assert srv.counters.answered == paid + 1
    m2.close()


def test_dry_run_sends_nothing_and_estimates(server_factory):
    srv = server_factory()
    model = vision(srv, dry_run=True)
    model.choose_scoring(images(1)[0], "cat")
    values = model.score_fn(model.resolve_target("cat"))(images(10))
    assert np.all(values == 0) and srv.counters.requests == 0
    assert model.engine.stats.would_send == 11 and model.engine.stats.estimated_tokens > 0
    model.close()


def test_the_engine_counts_every_billable_request_and_refuses_a_batch_that_does_not_fit(server_factory):
    srv = server_factory()
    budget = Budget(max_queries=5)
    model = vision(srv, budget=budget)
    reqs, prepare = model._requests(images(8), "cat", "logodds")
    with pytest.raises(BudgetExceeded):
        model.engine.map(reqs, prepare=prepare)
    assert srv.counters.requests == 0 and budget.queries == 0  # nothing sent, nothing held
    model.engine.map(reqs[:5], prepare=prepare)
    assert budget.queries == 5 and srv.counters.answered == 5
    model.engine.map(reqs[:5], prepare=prepare)  # cached: costs no query
    assert budget.queries == 5
    model.close()


def test_requests_per_minute_limit_is_proactive(server_factory):
    srv = server_factory()
    model = vision(srv, rpm=600, cache=False)  # 10 requests per second, bucket of about one second
    model.scoring = "logprob"
    t0 = time.perf_counter()
    model.score_fn(model.resolve_target("cat"))(images(30, seed=4))
    assert time.perf_counter() - t0 >= 1.5  # 10 at once, then 20 more at 10 per second
    assert srv.counters.by_status[429] == 0 and srv.counters.answered == 30
    model.close()


def test_cost_cap_needs_a_price_and_the_price_table_is_user_editable(tmp_path, monkeypatch):
    prices = tmp_path / "prices.json"
    prices.write_text('{"my-model": {"input": 3, "output": 4}}')
    table = PriceTable.load(str(prices))
    assert table.cost("my-model", 1_000_000, 0) == 3.0
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")  # dated snapshot
    monkeypatch.setenv("BLACKBOX_PRICES", str(prices))
    assert PriceTable.load().price("my-model")["output"] == 4.0
    bad = tmp_path / "bad.json"
    bad.write_text('{"m": {"input": "x"}}')
    with pytest.raises(InputError, match="numeric"):
        PriceTable.load(str(bad))
    transport = OpenAITransport(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(InputError, match="no price"):
        QueryEngine(transport, budget=Budget(max_cost=1.0), model="unpriced-model")


def _writer(path, start, n):
    cache = ResponseCache(path)
    for i in range(start, start + n):
        cache.put(f"k{i}", {"body": {"i": i}})


def test_cache_survives_concurrent_writer_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 200, 200)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    cache = ResponseCache(path)
    got = cache.get_many([f"k{i}" for i in range(600)])
    assert len(got) == 600 and got["k599"]["body"]["i"] == 599
    assert cache.clear() == 600 and cache.stats()["entries"] == 0


def test_one_counter_the_runner_adopts_the_engine_budget_and_every_billable_attempt_counts(server_factory):
    srv = server_factory(first=("rate_limit", "server_error", "missing_logprobs"), retry_after=0.01)
    budget = Budget(max_queries=10)
    model = vision(srv, budget=budget)
    fn = model.score_fn(model.resolve_target("cat"))
    assert fn.budget is budget
    with pytest.raises(InputError, match="own Budget"):
        QueryRunner(fn, budget=Budget(max_queries=10))
    runner = QueryRunner(fn, batch_size=4)  # adopts the engine's budget, counts nothing itself
    assert runner.budget is budget
    model.scoring = "logodds"
    runner(images(4))
    # 429 and 500 are not billable; the answer without logprobs was paid and retried
    assert srv.counters.by_status[429] == srv.counters.by_status[500] == 1
    assert budget.queries == 5 and srv.counters.answered == 4 and runner.record.queries == 4
    runner(images(4))  # cached: nothing billable
    assert budget.queries == 5
    with pytest.raises(BudgetExceeded):  # 6 more requests do not fit in the 5 left: nothing is sent
        fn(images(6, seed=3))
    assert srv.counters.requests == 7 and budget.queries == 5
    model.close()


def test_the_server_describes_its_view_and_price_in_its_model_card(model, tmp_path):
    """`blackbox serve` is not special-cased: the client learns the embedded classifier's view
    (centre crop at 224) and its zero price (with the Batch API's share) from the model card."""
    from blackbox.adapters.remote.openai_vision import openai_vision_model
    from blackbox.adapters.remote.pricing import DEFAULT_PRICES
    from blackbox.adapters.remote.serve import ClassifierScorer

    assert "efficientnet-lite0" not in DEFAULT_PRICES
    srv = ModelServer(scorer=ClassifierScorer(model)).start()
    try:
        remote = openai_vision_model("openai:efficientnet-lite0", base_url=srv.url, cache=False,
                                     budget=Budget(max_cost=0.01))  # a money cap needs a price: the card's
        assert remote.view(400, 600) == model.view(400, 600)
        assert remote.engine.prices.price("efficientnet-lite0") == {"input": 0.0, "output": 0.0, "batch": 0.5}
        assert remote.provenance()["view"]["kind"] == "center_crop" and remote.provenance()["model_card"]
        remote.close()
        wider = openai_vision_model("openai:efficientnet-lite0", base_url=srv.url, cache=False, resolution=320)
        assert wider.view(400, 600).size == (320, 320)  # the user's resolution wins, the crop stays
        wider.close()
    finally:
        srv.stop()
    other = ModelServer(scorer=BrightnessScorer(), model_id=MODEL).start()  # describes no view
    try:
        plain = openai_vision_model(f"openai:{MODEL}", base_url=other.url, cache=False)
        assert plain.view(400, 600).size == (341, 512) and plain.view_rule.kind == "full"
        plain.close()
    finally:
        other.stop()


def test_a_cached_rerun_renders_no_image_and_pays_nothing(server_factory, monkeypatch):
    """Map queries reach a remote model as keyed inputs (keys from the points that render them):
    a rerun finds every answer by key, so no image is rendered, encoded or hashed again."""
    from blackbox.saliency.spaces import MaskSpace
    from blackbox.saliency import saliency

    srv = server_factory()
    image = images(1, seed=11, size=32)[0]
    first = vision(srv)
    a = saliency(QueryRunner(first.score_fn(first.resolve_target("cat")), batch_size=16), image,
                 queries=96, grid=4, seed=0, method="banzhaf")
    first.close()
    paid = srv.counters.answered
    assert paid == 96 and srv.counters.duplicate_paid == 0  # the probe asked about the first image
    renders = []
    original = MaskSpace.render
    monkeypatch.setattr(MaskSpace, "render", lambda self, *a, **k: renders.append(1) or original(self, *a, **k))
    again = vision(srv)
    again.scoring = "logodds"
    b = saliency(QueryRunner(again.score_fn(again.resolve_target("cat")), batch_size=16), image,
                 queries=96, grid=4, seed=0, method="banzhaf")
    assert renders == [] and srv.counters.answered == paid and again.engine.budget.queries == 0
    np.testing.assert_array_equal(a.cells, b.cells)
    again.close()


# -- one judge for every outcome of an attempt (outcomes.py) -------------------------------------------
RETRY, RETRY_PAID, REFUSED = Verdict.RETRY, Verdict.RETRY_PAID, Verdict.REFUSED


def both_transports(url: str):
    return [OpenAITransport(base_url=url, kind="completions"), HTTPTransport(f"{url}/score")]


def failure_of(transport, request: dict, timeout: float = 5.0):
    with pytest.raises(ModelError) as info:
        transport.send(request, timeout)
    return info.value


def test_every_http_status_gets_its_verdict_through_both_transports():
    def answer_status(h, request, number):
        h.json(request["status"], {"error": {"message": f"no ({request['status']})"}}, headers={"Retry-After": "7"})

    with Hostile(answer_status) as srv:
        for transport in both_transports(srv.url):
            for status in (400, 401, 403, 404, 405, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529):
                error = failure_of(transport, {"status": status})
                retried = status in (408, 409, 429) or status >= 500
                assert verdict_of(error) is (RETRY if retried else REFUSED), (transport, status)
                assert error.status == status and f"no ({status})" in str(error)
                if retried:  # the endpoint says when to come back
                    assert error.retry_after == 7.0
                else:
                    assert "refused" in str(error)
            assert "API key" in str(failure_of(transport, {"status": 401}))
            transport.close()


def test_every_way_of_getting_no_answer_gets_its_verdict():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for transport in both_transports(f"http://127.0.0.1:{port}/v1"):
        error = failure_of(transport, {})
        assert verdict_of(error) is RETRY and "connection error" in str(error)  # nothing was sent
        transport.close()

    def behave(h, request, number):
        if request["do"] == "hang":
            time.sleep(2)
        elif request["do"] == "hang up":
            h.connection.shutdown(socket.SHUT_RDWR)
        else:
            h.flood(5)

    with Hostile(behave) as srv:
        for transport in both_transports(srv.url):
            # the deadline passes before a connection is made: a connect timeout, nothing sent
            error = failure_of(transport, {"do": "hang"}, timeout=1e-6)
            assert verdict_of(error) is RETRY and "timeout" in str(error)
            error = failure_of(transport, {"do": "hang"}, timeout=0.3)  # sent, never answered
            assert verdict_of(error) is RETRY_PAID and "no answer within 0.3 s" in str(error)
            error = failure_of(transport, {"do": "hang up"})
            assert verdict_of(error) is RETRY_PAID and "connection error" in str(error)
            error = failure_of(transport, {"do": "flood"})
            assert verdict_of(error) is RETRY_PAID and "larger than 4 MB" in str(error)
            transport.close()


@pytest.mark.parametrize("exc, verdict", [
    (httpx2.ConnectError("refused"), RETRY), (httpx2.ConnectTimeout("slow"), RETRY),
    (httpx2.ReadTimeout("slow"), RETRY_PAID), (httpx2.WriteTimeout("slow"), RETRY_PAID),
    (httpx2.PoolTimeout("busy"), RETRY_PAID),  # a timeout in an unclear phase counts on the safe side
    (httpx2.ReadError("reset"), RETRY_PAID), (httpx2.WriteError("reset"), RETRY_PAID),
    (httpx2.RemoteProtocolError("closed"), RETRY_PAID)])
def test_every_httpx_failure_class_gets_its_verdict(exc, verdict):
    assert verdict_of(no_answer(exc, RequestLimits(0.0, 1 << 20), 1.0)) is verdict
    cut_off = RequestLimits(0.0, 1 << 20, received=(1 << 20) + 1, too_large=True)
    assert verdict_of(no_answer(exc, cut_off, 1.0)) is RETRY_PAID


def test_every_unusable_answer_gets_its_verdict():
    def answer_raw(h, request, number):
        h.pay(None)
        h.json(200, None, raw=request["raw"].encode())

    chat = {"choices": [{"message": {"content": "Yes"}, "logprobs": {"content": [
        {"token": "Yes", "logprob": -0.1, "top_logprobs": [{"token": "Yes", "logprob": -0.1}]}]}}]}
    lying = {"choices": [{"text": "x", "logprobs": {"token_logprobs": [0.5]}}]}
    cases = {  # raw answer: (OpenAI transport's verdict, HTTP transport's verdict, what the message says)
        "{oops": (RETRY_PAID, RETRY_PAID, "malformed JSON"),
        '{"choices": [{"logprobs": {"token_logprobs": [NaN]}}]}': (RETRY_PAID, RETRY_PAID, "NaN is not a JSON number"),
        "[1, 2]": (RETRY_PAID, RETRY_PAID, "JSON"),
        '{"id": "x"}': (RETRY_PAID, None, "without 'choices'"),
        '{"error": {"message": "quota"}}': (REFUSED, None, "answered with an error"),
        json.dumps(lying): (RETRY_PAID, None, "not finite and <= 0"),
        json.dumps(chat): (None, None, ""),
    }
    with Hostile(answer_raw) as srv:
        for i, transport in enumerate(both_transports(srv.url)):
            for raw, expected in cases.items():
                if expected[i] is None:  # usable: the answer itself comes back
                    assert transport.send({"raw": raw}, 5.0) == json.loads(raw)
                    continue
                error = failure_of(transport, {"raw": raw})
                assert verdict_of(error) is expected[i] and expected[2] in str(error), (transport, raw)
            transport.close()


def test_retry_after_and_the_one_delay_rule():
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("nan") is None and retry_after_seconds("soon") is None and retry_after_seconds("") is None
    in_30s = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after_seconds(in_30s) <= 30
    # the endpoint's Retry-After wins, up to max_wait; else exponential backoff with up to `backoff` of jitter
    assert retry_delay(status_error(429, "", {"retry-after": "3"}), 1, 0.5, 60.0) == 3.0
    assert retry_delay(status_error(429, "", {"retry-after": "300"}), 1, 0.5, 60.0) == 60.0
    for attempt in (1, 2, 3, 6):
        expo = 0.5 * 2 ** (attempt - 1)
        delays = [retry_delay(status_error(503, "", None), attempt, 0.5, 10.0) for _ in range(50)]
        assert all(min(expo, 10.0) <= d <= min(expo + 0.5, 10.0) for d in delays)


def test_a_validator_rejection_is_paid_retried_and_never_cached():
    """A validator may raise a plain RetryableError: the answer arrived, so it is charged."""
    def sane(h, request, number):
        h.answer({"choices": [{"text": " x"}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

    def reject(request, body):
        raise RetryableError("not what I asked for")

    with Hostile(sane) as srv:
        budget = Budget(max_queries=10)
        engine = QueryEngine(OpenAITransport(base_url=srv.url, kind="completions"), budget=budget, cache=True,
                             max_attempts=3, backoff=0.01, validate=reject)
        with pytest.raises(ModelError, match="failed 3 attempt.*not what I asked for"):
            engine.submit({"model": MODEL, "prompt": "x", "max_tokens": 1})
        assert budget.queries == srv.paid == 3 and budget.tokens == 3 * 6
        assert engine.stats.unusable == 3 and engine.cache.stats()["entries"] == 0
        engine.close()


# -- the spending side on its own (any way of sending reuses it) ------------------------------------------
def test_spending_holds_the_worst_case_and_learns_from_what_is_billed():
    budget = Budget(max_queries=3, max_tokens=10_000)
    spending = Spending(budget, PriceTable({"m": {"input": 1.0, "output": 2.0}}), "m",
                        token_estimate=lambda request: 100, window=SlowStart(8))
    requests = [{"model": "m", "prompt": "x", "max_tokens": 1}] * 4
    with pytest.raises(BudgetExceeded):
        spending.reserve_all(requests)  # four do not fit in three queries: nothing is held
    assert budget.remaining == 3
    held = spending.reserve_all(requests[:3])
    assert [r.tokens for r in held] == [100] * 3 and spending.capped
    first = spending.charge(held[0], requests[0], (50, 1))  # within its reservation
    assert not first.overshoot and first.cost == pytest.approx((50 * 1.0 + 1 * 2.0) / 1e6)
    assert budget.tokens == 51 and spending.window.size == 2
    assert spending.bound(requests[1]) == int(1.25 * 50) + 16 + 1  # learnt from the first bill
    spending.top_up(held[1], requests[1])
    assert held[1].tokens == 100  # the bound fell: nothing more is held
    second = spending.charge(held[1], requests[1], (200, 1))  # 201 tokens billed on 100 reserved
    assert second.overshoot and spending.window.size == 1
    grown = int(2 * 200 / 50 * 200) + 16 + 1  # twice the growth seen, times the largest prompt
    assert spending.bound(requests[2]) == grown
    spending.top_up(held[2], requests[2])
    assert held[2].tokens == grown
    spending.settle(held[2])  # maybe billed, no usage known: charged at its reservation
    spending.release(held[2])  # already settled: nothing given back
    assert budget.tokens == 51 + 201 + grown and budget.queries == 3
    assert budget.cost == pytest.approx((50 + 2 + 200 + 2) / 1e6 + held[2].cost)


def test_an_answer_got_outside_the_send_loop_is_charged_and_cached_like_any_other():
    """What a batch sender needs: reserve, then hand the engine an answer to accept."""
    transport = OpenAITransport(base_url="http://127.0.0.1:9/v1", kind="completions")
    budget = Budget(max_queries=2)
    engine = QueryEngine(transport, budget=budget, cache=True, model=MODEL,
                         prices=PriceTable({MODEL: {"input": 1.0, "output": 2.0}}))
    request = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    body = transport.check({"choices": [{"text": " y"}], "usage": {"prompt_tokens": 7, "completion_tokens": 1}})
    key = request_key(transport.endpoint, request)
    first, second = engine.spending.reserve_all([request, request])
    response = engine.accept(key, request, first, body)
    assert (response.prompt_tokens, response.completion_tokens) == (7, 1) and budget.tokens == 8
    assert engine.lookup([request])[0].body == body and engine.stats.sent == 1

    def reject(request, body):
        raise unusable("no")

    with pytest.raises(ModelError) as info:
        engine.accept("other", request, second, body, reject)
    assert verdict_of(info.value) is RETRY_PAID and budget.queries == 2 and engine.stats.unusable == 1
    assert engine.cache.get_many(["other"]) == {}
    engine.close()
