"""Discrete prompt tuning over a real OpenAI-compatible server: llama.cpp serving SmolLM2 on loopback.

Needs ``llama-cpp-python[server]`` (a ~10 minute source build): ``make llama-server-test``
installs it and runs this file. Without it the test is skipped and says so.
"""
import importlib.util
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from blackbox.adapters.api_prompting import CompletionLabelScorer

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_label_logprobs_are_read_from_top_logprobs_with_case_and_space_variants():
    scorer = CompletionLabelScorer(engine=None, model="m", label_words=[" dog", " bird", " fish"])
    body = {"choices": [{"logprobs": {"top_logprobs": [{" dog": -0.5, "Dog": -2.0, " bird": -1.5, "the": -4.0}]}}]}
    lp = scorer.read(body)
    assert lp[0] == pytest.approx(np.logaddexp(-0.5, -2.0))
    assert lp[1] == -1.5
    assert lp[2] == pytest.approx(-4.0 - np.log(2))  # absent: below everything listed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed (a ~10 min build): run `make llama-server-test`")
    from blackbox.adapters.causal_lm import gguf_path

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--logits_all", "true",
                             "--n_ctx", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the llama.cpp server exited at start")
            try:
                if httpx.get(f"{base}/models", timeout=1.0).status_code == 200:
                    break
            except Exception:
                time.sleep(0.3)
        else:
            pytest.fail("the llama.cpp server did not come up within 60 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_discrete_prompt_tuning_through_llama_cpp_with_budget_and_cache(llama_server, tmp_path):
    from blackbox.adapters.remote.cache import ResponseCache
    from blackbox.adapters.remote.engine import QueryEngine
    from blackbox.adapters.remote.openai_transport import OpenAITransport
    from blackbox.adapters.text_tasks import imagenet_description_task
    from blackbox.discrete_prompt import tune_discrete_prompt
    from blackbox.queries import Budget

    task = imagenet_description_task(("bird", "dog", "fish"), per_class=4, max_words=10)

    def run(budget):
        engine = QueryEngine(OpenAITransport(base_url=llama_server, kind="completions"), budget=budget,
                             cache=ResponseCache(tmp_path / "cache.sqlite"), concurrency=2,
                             count_queries=True)
        scorer = CompletionLabelScorer(engine, "smollm2", task.label_words, top_k=20)
        result = tune_discrete_prompt(scorer, task, ["Animal", "Category", "Type", "Answer", "Class"],
                                      n_slots=2, steps=3, batch_size=2, queries_per_step=8,
                                      allocator="neyman", seed=0)
        return result, engine

    budget = Budget(max_queries=200)
    first, engine = run(budget)
    assert first.queries == 24 and budget.queries <= 200
    assert engine.stats.sent > 0 and np.isfinite(first.after["accuracy"])
    assert all(sum(h["allocation"]) == 8 for h in first.history)
    again, engine2 = run(Budget(max_queries=200))
    assert engine2.stats.sent == 0 and engine2.stats.cache_hits > 0  # the rerun paid nothing
    assert again.prompt == first.prompt
    with pytest.raises(Exception, match="budget"):
        engine3 = QueryEngine(OpenAITransport(base_url=llama_server, kind="completions"),
                              budget=Budget(max_queries=1), count_queries=True)
        CompletionLabelScorer(engine3, "smollm2", task.label_words)(["a", "b", "c"])


def test_end_of_text_answers_are_resent_with_min_tokens_and_a_refusal_is_a_clear_error():
    """llama.cpp lists no logprobs when the first token is the end of text: re-send with min_tokens=1."""
    from blackbox.errors import ModelError

    eot = {"choices": [{"text": "", "finish_reason": "stop", "logprobs": {"top_logprobs": []}}]}
    ok = {"choices": [{"text": "\n", "finish_reason": "length", "logprobs": {"top_logprobs": [{" dog": -1.0, "": -0.5}]}}]}

    class Engine:  # records the requests; answers like llama.cpp does
        def __init__(self, refuse=False):
            self.seen, self.refuse = [], refuse

        def map(self, requests):
            self.seen.append(requests)
            if self.refuse and any("min_tokens" in r for r in requests):
                raise ModelError("the endpoint refused the request (400): unknown field min_tokens")
            return [type("R", (), {"body": ok if "min_tokens" in r or "dog" in r["prompt"] else eot})()
                    for r in requests]

    engine = Engine()
    scorer = CompletionLabelScorer(engine, "m", [" dog", " fish"])
    lp = scorer(["a dog", "nothing"])
    assert lp.shape == (2, 2) and lp[1, 0] == -1.0
    assert [len(r) for r in engine.seen] == [2, 1] and engine.seen[1][0]["min_tokens"] == 1
    scorer(["more"])
    assert engine.seen[2][0]["min_tokens"] == 1  # remembered for later calls
    with pytest.raises(ModelError, match="refused the min_tokens=1 retry"):
        CompletionLabelScorer(Engine(refuse=True), "m", [" dog"])(["nothing"])


def test_cli_discrete_prompt_against_a_closed_port_fails_in_one_line(tmp_path):
    env = {**os.environ, "BLACKBOX_CACHE_DIR": str(tmp_path), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "blackbox.cli.main", "tune-prompt", "--model", "openai:m",
                           "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--max-attempts", "1",
                           "--per-class", "2", "--sentences", "1"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "connection" in proc.stderr.lower() and len(proc.stderr.strip().splitlines()) == 1


def test_cli_discrete_prompt_through_llama_cpp_then_a_free_rerun(llama_server, tmp_path):
    import json

    env = {**os.environ, "BLACKBOX_CACHE_DIR": str(tmp_path), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "blackbox.cli.main", "tune-prompt", "--model", "openai:smollm2",
           "--base-url", llama_server, "--per-class", "2", "--sentences", "1", "--steps", "2",
           "--batch-size", "2", "--queries-per-step", "6", "--allocator", "flops", "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["train_queries"] == 12 and report["task"]["test"] == 5
    assert 0 <= report["accuracy_after"] <= 1 and len(report["prompt"].split()) == 3
    assert report["usage"]["requests_paid"] >= 12 and report["usage"]["tokens"] > 0
    again = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env).stdout)
    assert again["usage"]["requests_paid"] == 0 and again["prompt"] == report["prompt"]
    # a token cap stops the run cleanly: the prompt learned so far is kept and the cap is never passed
    capped = subprocess.run(cmd + ["--no-cache", "--max-tokens", "300"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert capped.returncode == 0, capped.stderr
    report = json.loads(capped.stdout)
    assert "tokens cap is 300" in report["stopped"] and report["usage"]["tokens"] <= 300
    assert report["train_queries"] < 12 and len(report["prompt"].split()) == 3
