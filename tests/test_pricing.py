"""Image tokens and costs against OpenAI's vision pricing guide, and the dry run that adds them up.

The worked examples are the guide's own (see the sources cited in adapters/remote/pricing.py).
The dry runs go through the CLI in-process against a closed loopback port: nothing is sent.
"""
from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest

from blackbox.adapters.remote.pricing import (PriceTable, default_token_estimate, image_tokens, patch_count,
                                              request_tokens, tile_count)
from blackbox.errors import InputError

# -- the guide's worked examples ---------------------------------------------------------------


@pytest.mark.parametrize("width,height,detail,tokens", [
    (1024, 1024, "high", 765),    # -> 768 x 768, 4 tiles: 85 + 4 x 170
    (2048, 4096, "high", 1105),   # -> 1024 x 2048 -> 768 x 1536, 6 tiles
    (4096, 8192, "low", 85),      # low detail: the base, whatever the size
    (500, 500, "high", 255),      # one tile; small images are not scaled up
    (513, 500, "high", 425),      # two tiles
    (513, 513, "high", 765),      # four tiles
])
def test_gpt_4o_tiles_match_the_guide(width, height, detail, tokens):
    assert image_tokens("gpt-4o", width, height, detail) == tokens
    assert image_tokens("gpt-4o-2024-08-06", width, height, detail) == tokens  # dated snapshots
    assert image_tokens("gpt-4.1", width, height, detail) == tokens            # 4.1 bills tiles too


def test_gpt_4o_mini_bills_33x_the_tokens_of_gpt_4o():
    assert image_tokens("gpt-4o-mini", 4096, 8192, "low") == 2833
    assert image_tokens("gpt-4o-mini", 512, 512, "high") == 2833 + 5667
    assert image_tokens("gpt-4o-mini", 1024, 1024, "high") == 2833 + 4 * 5667
    # the same money per image as gpt-4o at its launch price ($5/M; the tokens are 33x cheaper)
    mini = PriceTable().cost("gpt-4o-mini", image_tokens("gpt-4o-mini", 512, 512, "low"), 0)
    assert mini == pytest.approx(85 * 5.00 / 1e6, rel=0.01)


def test_patches_match_the_guide():
    assert patch_count(1024, 1024) == 1024        # 32 x 32 patches, under the 1536 cap
    assert patch_count(1800, 2400) == 1452        # 57 x 75 = 4275 -> shrink -> 33 x 44
    assert patch_count(2400, 1800) == 1452
    assert patch_count(2048, 768) == 1536         # exactly at the cap
    assert patch_count(512, 341) == 16 * 11
    assert patch_count(1, 100_000) <= 1536        # extreme aspect: never zero, never over the cap
    assert image_tokens("gpt-4.1-mini", 1024, 1024, "low") == 1659   # ceil(1024 x 1.62)
    assert image_tokens("gpt-4.1-nano", 1024, 1024, "high") == 2520  # ceil(1024 x 2.46)
    assert image_tokens("o4-mini", 1800, 2400) == 2498                # ceil(1452 x 1.72)
    # the detail option does not change a patch-billed image
    assert image_tokens("gpt-4.1-mini", 512, 512, "low") == image_tokens("gpt-4.1-mini", 512, 512, "high") == 415


def test_other_tile_families_auto_detail_unknown_sizes_and_models():
    assert image_tokens("gpt-5", 1024, 1024, "high") == 70 + 4 * 140
    assert image_tokens("o3", 1024, 1024, "low") == 75
    assert image_tokens("computer-use-preview", 1024, 1024, "high") == 65 + 4 * 129
    assert image_tokens("gpt-4o", 1024, 1024, "auto") == 765              # auto may mean high
    assert image_tokens("gpt-4o", None, None, "high") == 85 + 8 * 170      # worst case: 768 x 2048
    assert image_tokens("gpt-4.1-mini", None, None) == 2489                # the whole patch budget
    assert image_tokens("llava-1.6", 512, 512, "low") == 1105              # no rule: generous
    assert tile_count(768, 2048) == 8
    with pytest.raises(InputError, match="unknown image detail"):
        image_tokens("gpt-4o", 512, 512, "medium")


# -- requests ----------------------------------------------------------------------------------
def _png_url(width, height):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat(model, url, detail, text="Is there a cat in this image? Answer Yes or No.", max_tokens=1):
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url, "detail": detail}}]}]}


def test_request_estimate_reads_the_image_size_and_detail_sent():
    big, small = _png_url(1024, 1024), _png_url(512, 256)
    parts = request_tokens(_chat("gpt-4o", big, "high"))
    assert parts["images"] == [765] and parts["output"] == 1
    assert 13 <= parts["text"] <= 30  # 13 tokens of question + chat framing, counted generously
    assert request_tokens(_chat("gpt-4o", big, "low"))["images"] == [85]
    assert request_tokens(_chat("gpt-4.1-mini", small, "low"))["images"] == [math.ceil(16 * 8 * 1.62)]
    # a stand-in URL is sized by the caller; unknown stand-ins count at the worst case
    stand_in = _chat("gpt-4o", "blackbox-image-sha256:abc", "high")
    assert request_tokens(stand_in, {"blackbox-image-sha256:abc": (512, 384)}.get)["images"] == [255]
    assert request_tokens(stand_in)["images"] == [1445]
    # the Responses API shape, several images, n > 1
    responses = {"model": "gpt-4o-mini", "max_output_tokens": 5, "n": 2, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": small, "detail": "low"},
        {"type": "input_image", "image_url": big, "detail": "high"}]}]}
    parts = request_tokens(responses)
    assert parts["images"] == [2833, 2833 + 4 * 5667] and parts["output"] == 10
    assert default_token_estimate(responses) == parts["text"] + sum(parts["images"]) + 10


def test_reservations_price_prompt_and_output_tokens_apart():
    from blackbox.adapters.remote.engine import QueryEngine

    class Closed:
        endpoint = "http://127.0.0.1:9/v1/chat/completions"

        def send(self, request, timeout):  # pragma: no cover - never called in a dry run
            raise AssertionError("sent")

    engine = QueryEngine(Closed(), cache=False, model="gpt-4o-mini", dry_run=True)
    try:
        request = _chat("gpt-4o-mini", _png_url(512, 512), "low", max_tokens=100)
        engine.map([request])
        tokens = default_token_estimate(request)
        assert engine.stats.estimated_tokens == tokens
        # 0.15 $/M for the prompt, 0.60 $/M for at most 100 output tokens (not 0.60 for all)
        assert engine.stats.estimated_cost == pytest.approx(((tokens - 100) * 0.15 + 100 * 0.60) / 1e6)
    finally:
        engine.close()


# -- the dry run from the CLI --------------------------------------------------------------------
QUESTION_TOKENS = 13 + 3 + 3  # "Is there a espresso in this image? Answer Yes or No." + chat framing


@pytest.fixture(scope="module")
def photo_512(tmp_path_factory):
    """A 512 x 128 noise banner, sent as is (512 px is the default resolution; small keeps the test fast)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("pricing") / "photo.png"
    Image.fromarray((rng.random((128, 512, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("model,detail,image", [
    ("gpt-4o-mini", "low", 2833), ("gpt-4o-mini", "high", 2833 + 5667),
    ("gpt-4o", "low", 85), ("gpt-4o", "high", 85 + 170),
])
def test_dry_run_of_1000_queries_costs_what_the_guide_says(photo_512, tmp_path, monkeypatch, capsys,
                                                             model, detail, image):
    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent")
    name = "gpt-vision" if model == "gpt-4o-mini" else f"openai:{model}"
    code = main(["saliency", str(photo_512), "--model", name, "--target", "espresso", "--queries", "1000",
                 "--detail", detail, "--dry-run", "--json", "--no-progress", "--base-url", "http://127.0.0.1:9/v1"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert 990 <= plan["would_send"] <= 1001  # the 1000 queries' budget, the capability probe included
    price = PriceTable().price(model)
    # the bill by the guide's formula: each query sends one image, the question and gets 1 token back
    per_request = ((image + QUESTION_TOKENS) * price["input"] + 1 * price["output"]) / 1e6
    assert plan["estimated_cost"] == pytest.approx(1000 * per_request, rel=0.10)
    assert plan["estimated_cost"] / plan["would_send"] >= per_request  # a reservation never falls short


def test_a_dry_run_needs_no_key_and_opens_no_connection(photo_512, tmp_path, monkeypatch, capsys):
    """Previewing the bill of the default endpoint (api.openai.com) before any key is set up: the
    dry run connects nowhere (every socket connect fails the test) and prints the cost."""
    import socket

    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError("the dry run tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    code = main(["saliency", str(photo_512), "--model", "gpt-vision", "--target", "espresso", "--queries", "200",
                 "--dry-run", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and not attempts
    assert "per request, image detail low" in out and "$" in out
    # a real run still asks for the key, in one line
    assert main(["saliency", str(photo_512), "--model", "gpt-vision", "--target", "espresso", "--queries", "10",
                 "--no-progress"]) == 2
    assert "no API key" in capsys.readouterr().err and not attempts


# -- what is sent, over loopback -----------------------------------------------------------------
def _brightness(data_url: str) -> float:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean() / 255)


class _BillingServer:
    """A loopback chat endpoint that records each request and bills it as OpenAI's guide says."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from blackbox.adapters.remote.pricing import data_url_size

        self.requests: list[dict] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.requests.append(body)
                image = body["messages"][0]["content"][1]["image_url"]
                tokens = image_tokens(body["model"], *data_url_size(image["url"]), image["detail"]) + QUESTION_TOKENS
                yes = 0.1 + 0.8 * _brightness(image["url"])  # the answer depends on the image
                top = [{"token": "Yes", "logprob": math.log(yes)}, {"token": "No", "logprob": math.log(1 - yes)}]
                answer = {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [{
                    "index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Yes"},
                    "logprobs": {"content": [{"token": "Yes", "logprob": top[0]["logprob"], "top_logprobs": top}]}}],
                    "usage": {"prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1}}
                raw = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def billing_server():
    srv = _BillingServer()
    yield srv
    srv.stop()


def test_detail_is_sent_and_a_money_cap_holds_at_the_billed_image_price(photo_512, tmp_path, monkeypatch, capsys,
                                                                        billing_server):
    from blackbox.adapters.remote.pricing import data_url_size
    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    per_query = ((8500 + QUESTION_TOKENS) * 0.15 + 0.60) / 1e6  # gpt-4o-mini, detail high, 512 x 128
    cap = round(150.5 * per_query, 6)  # room for the probe and two batches of 64 requests
    code = main(["saliency", str(photo_512), "--model", "gpt-vision", "--target", "espresso", "--queries", "200",
                 "--grid", "4", "--method", "banzhaf", "--detail", "high", "--max-cost", str(cap), "--json", "--no-progress",
                 "--concurrency", "4", "--base-url", billing_server.url])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    sent = billing_server.requests
    assert {r["messages"][0]["content"][1]["image_url"]["detail"] for r in sent} == {"high"}
    assert {data_url_size(r["messages"][0]["content"][1]["image_url"]["url"]) for r in sent} == {(512, 128)}
    assert report["stopped"] and "cost" in report["stopped"]
    spent = report["usage"]["budget"]["cost"]
    assert spent <= cap and spent == pytest.approx(len(sent) * per_query)
    assert len(sent) == 129  # probe + 2 x 64: the third batch's reservation would pass the cap
