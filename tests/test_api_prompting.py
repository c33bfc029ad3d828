"""Discrete prompt tuning over real OpenAI-compatible servers on loopback: ``blackbox serve`` (the
embedded SmolLM2 on /v1/completions and /v1/chat/completions, always available) and llama.cpp's
server serving the same GGUF (needs ``llama-cpp-python[server]``, a ~10 minute source build:
``make llama-server-test`` installs it and runs this file; without it those tests are skipped).
"""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from blackbox.adapters.api_prompting import ChatLabelScorer, CompletionLabelScorer

pytestmark = [pytest.mark.network, pytest.mark.slow]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def test_label_logprobs_are_read_from_top_logprobs_with_case_and_space_variants():
    scorer = CompletionLabelScorer(engine=None, model="m", label_words=[" dog", " bird", " fish"])
    body = {"choices": [{"logprobs": {"top_logprobs": [{" dog": -0.5, "Dog": -2.0, " bird": -1.5, "the": -4.0}]}}]}
    lp = scorer.read(body)
    assert lp[0] == pytest.approx(np.logaddexp(-0.5, -2.0))
    assert lp[1] == -1.5
    assert lp[2] == pytest.approx(-4.0 - np.log(2))  # absent: below everything listed
    chat = ChatLabelScorer(engine=None, model="m", label_words=[" dog", " bird", " fish"])
    body = {"choices": [{"message": {"content": "Dog"}, "logprobs": {"content": [{"token": "Dog", "logprob": -0.4,
            "top_logprobs": [{"token": "Dog", "logprob": -0.4}, {"token": " dog", "logprob": -1.0},
                             {"token": "bird", "logprob": -2.0}]}]}}]}
    lp = chat.read(body)
    assert lp[0] == pytest.approx(np.logaddexp(-0.4, -1.0)) and lp[1] == -2.0 and lp[2] == pytest.approx(-2.0 - np.log(2))
    request = chat.request("Text\nThis is about a")
    assert request["messages"] == [{"role": "user", "content": "Text\nThis is about a"}]
    assert request["logprobs"] is True and request["top_logprobs"] == 20 and request["max_tokens"] == 1


def test_a_multi_token_label_is_scored_by_a_first_token_that_starts_no_other_label():
    scorer = CompletionLabelScorer(engine=None, model="m", label_words=["entertainment", "politics", "sport", "sports"])
    top = {" entert": -1.0, "Ent": -2.0, "pol": -1.5, " sport": -0.7, "s": -3.0, "e": -3.5, "the": -4.0}
    lp, listed = scorer.read_listed({"choices": [{"logprobs": {"top_logprobs": [top]}}]})
    assert lp[0] == pytest.approx(np.logaddexp(-1.0, -2.0)) and lp[1] == -1.5   # 'entert' + 'Ent'; 'pol'
    assert lp[2] == -0.7 and lp[3] == pytest.approx(-4.0 - np.log(2))          # 'sport' is a label itself
    assert listed == [True, True, True, False]   # one-letter tokens and shared prefixes count for nothing


def test_end_of_text_answers_are_resent_with_min_tokens_and_a_refusal_is_a_clear_error():
    """llama.cpp lists no logprobs when the first token is the end of text: re-send with min_tokens=1."""
    from blackbox.errors import ModelError

    eot = {"choices": [{"text": "", "finish_reason": "stop", "logprobs": {"top_logprobs": []}}]}
    ok = {"choices": [{"text": "\n", "finish_reason": "length", "logprobs": {"top_logprobs": [{" dog": -1.0, "": -0.5}]}}]}

    class Engine:  # records the requests; answers like llama.cpp does
        def __init__(self, refuse=False):
            self.seen, self.refuse = [], refuse

        def map(self, requests, batch=False):
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


# -- blackbox serve: the embedded SmolLM2 as a text endpoint --------------------------------------
@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("transformers")
    from blackbox.adapters.causal_lm import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="module")
def served(lm):
    from blackbox.adapters.remote.serve import ModelServer

    server = ModelServer(port=0).start()
    yield server
    server.stop()


def _post(url, body):
    import httpx2 as httpx

    return httpx.post(url, json=body, timeout=60)


def test_serve_answers_completions_and_chat_with_the_models_own_logprobs(served, lm):
    prompt = "The capital of France is"
    r = _post(f"{served.url}/completions", {"model": lm.name, "prompt": prompt, "max_tokens": 3, "temperature": 0,
                                            "logprobs": 5})
    assert r.status_code == 200
    body = r.json()
    choice = body["choices"][0]
    top = choice["logprobs"]["top_logprobs"][0]
    paris = lm.single_token(" Paris")
    own = lm.next_token_logprobs(np.zeros((1, 0, lm.embed_dim)), [prompt], [paris])[0, 0]
    assert len(top) == 5 and top[" Paris"] == pytest.approx(own, abs=1e-3)   # what the model itself says
    assert choice["logprobs"]["tokens"][0] == max(top, key=top.get)          # greedy at temperature 0
    assert body["usage"]["prompt_tokens"] == len(lm.tokenize(prompt)) and body["usage"]["completion_tokens"] == 3
    r = _post(f"{served.url}/chat/completions", {"model": lm.name, "max_tokens": 1, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Say yes."}],
                                                 "logprobs": True, "top_logprobs": 3})
    first = r.json()["choices"][0]["logprobs"]["content"][0]
    assert r.status_code == 200 and len(first["top_logprobs"]) == 3
    assert first["token"] == first["top_logprobs"][0]["token"] and first["logprob"] <= 0
    models = {m["id"] for m in __import__("httpx2").get(f"{served.url}/models").json()["data"]}
    assert {lm.name, "efficientnet-lite0"} <= models
    r = _post(f"{served.url}/completions", {"model": lm.name, "prompt": prompt, "max_tokens": 4, "temperature": 1.0,
                                            "seed": 7, "n": 3})
    choices = r.json()["choices"]
    alone = [_post(f"{served.url}/completions", {"model": lm.name, "prompt": prompt, "max_tokens": 4,
                                                 "temperature": 1.0, "seed": 7 + j}).json() for j in range(3)]
    assert [c["text"] for c in choices] == [a["choices"][0]["text"] for a in alone]  # answer j: seed + j
    assert [c["index"] for c in choices] == [0, 1, 2] and len({c["text"] for c in choices}) > 1
    assert r.json()["usage"]["prompt_tokens"] == len(lm.tokenize(prompt))            # the prompt billed once
    assert r.json()["usage"]["completion_tokens"] == sum(a["usage"]["completion_tokens"] for a in alone)
    for bad in ({"model": lm.name, "prompt": prompt, "n": 17}, {"model": lm.name, "prompt": ""},
                {"model": lm.name, "prompt": prompt, "logprobs": 99}):
        assert _post(f"{served.url}/completions", bad).status_code == 400
    assert _post(f"{served.url}/completions", {"model": "gpt-x", "prompt": prompt}).status_code == 404


def test_multi_token_labels_are_scored_by_all_their_tokens_over_completions(served, lm, tmp_path, monkeypatch):
    """--label-tokens all: a label's log-probability summed over its tokens, one continuation
    request per further token, equals what the model itself says of the whole label."""
    from blackbox.adapters.api_prompting import openai_prompt_endpoint
    from blackbox.errors import InputError
    from blackbox.prompts import Prompt

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path))
    labels = ["arthropod", "aquatic", "avian"]
    assert len(lm.tokenize(" arthropod")) == 2 and len(lm.tokenize(" aquatic")) == 1  # ' arthrop' + 'od'
    prompt = Prompt("Answer with one word: arthropod, aquatic or avian.",
                    [("A spider with eight legs.", "arthropod"), ("A trout in a river.", "aquatic"),
                     ("An eagle in the sky.", "avian")], template="{text}\nAnswer:")
    pairs = [(prompt, "A beetle under a stone."), (prompt, "A shark in the sea.")]
    endpoint = openai_prompt_endpoint(lm.name, labels, api="completions", base_url=served.url, label_tokens="all")
    first = openai_prompt_endpoint(lm.name, labels, api="completions", base_url=served.url)
    try:
        lp, lp1 = endpoint.label_scores(pairs).lp, first.label_scores(pairs).lp
        sent, sent_first = endpoint.engine.stats.sent, first.engine.stats.sent
    finally:
        endpoint.close()
        first.close()

    def own(targets):
        return np.array([-lm.nll(np.zeros((1, 0, lm.embed_dim)), [prompt.fill_completion(t)], [targets])[0]
                         for _, t in pairs])
    canonical = np.isclose(lp1[:, 0], own(" arthrop"), atol=2e-3)   # its first token ' arthrop' was listed
    assert canonical[0] and np.allclose(lp[canonical, 0], own(" arthropod")[canonical], atol=2e-3)  # the whole label
    assert np.all(lp1[canonical, 0] > lp[canonical, 0])      # its first token alone says more
    assert np.allclose(lp[:, 1:], lp1[:, 1:])                 # one-token labels: the same either way
    assert sent == len(pairs) + canonical.sum()                # one continuation request per example that needs it
    assert sent_first == 0                                     # the first-token requests are the same ones: cached
    with pytest.raises(InputError, match="needs /v1/completions"):
        openai_prompt_endpoint(lm.name, labels, api="chat", base_url=served.url, label_tokens="all")


def _review_rows():
    return [("I loved this film, it was wonderful", "positive"), ("A dull, boring and stupid story", "negative"),
            ("Brilliant acting and a happy end", "positive"), ("Terrible acting and a bad end", "negative"),
            ("What a delightful and moving movie", "positive"), ("What a tedious and painful movie", "negative"),
            ("Superb music and a lovely cast", "positive"), ("Awful music and a weak cast", "negative")]


def _reviews(tmp_path):
    rows = _review_rows()
    lines = [json.dumps({"text": t, "label": y}) + "\n" for t, y in rows]
    (tmp_path / "train.jsonl").write_text("".join(lines[:6]))
    (tmp_path / "test.jsonl").write_text("".join(lines[6:]))
    return ["--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl"),
            "--template", "Review: {text}\nIs the review positive or negative? Answer:"]


def test_cli_search_over_chat_saves_a_prompt_file_a_plain_openai_client_sends(served, lm, tmp_path, capsys,
                                                                                monkeypatch):
    """Sampled answers over /v1/chat/completions, end to end from the CLI on a JSONL data set the
    test writes: the prompt file, sent by a plain openai client, scores what the run says; the
    file evaluated again (--steps 0) pays nothing, edited by hand it is evaluated as written; a
    rerun pays nothing."""
    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    data = _reviews(tmp_path)
    saved = tmp_path / "prompt.json"
    cmd = ["tune-prompt", "--model", f"openai:{lm.name}", "--base-url", served.url, "--api", "chat", *data,
           "--reward", "sampled", "--samples", "2", "--shots", "1", "--propose", "1", "--steps", "2",
           "--batch-size", "2", "--queries-per-step", "8", "--save", str(saved), "--json", "--no-progress"]
    assert main(cmd) == 0
    report = json.loads(capsys.readouterr().out)
    s = report["search"]
    assert report["api"] == "chat" and s["reward"] == "sampled" and s["samples_per_prompt"] == 2
    assert report["train_queries"] == 16 and report["eval_queries"] == 4 and len(s["proposed"]) <= 1
    # n=2 answers come in one request (blackbox serve honours n): fewer requests than answers
    assert report["usage"]["requests_paid"] < 6 + 1 + 16 + 4
    file = json.loads(saved.read_text())
    assert file["labels"] == ["negative", "positive"] and file["messages"][-1]["role"] == "user"
    assert _sent_by_openai(served.url, file) == report["accuracy_after"]
    again = [c for c in cmd if c not in ("--save", str(saved))]
    again[again.index("--steps") + 1] = "0"
    assert main(again + ["--prompt", str(saved)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy_before"] == evaluated["accuracy_after"] == report["accuracy_after"]
    assert evaluated["usage"]["requests_paid"] == 0 and evaluated["train_queries"] == 0
    # a hand-edited file is evaluated as written: new requests, the accuracy the plain client measures
    edited = tmp_path / "edited.json"
    file["messages"] = [{"role": "system", "content": "Answer with one word: negative."}, file["messages"][-1]]
    edited.write_text(json.dumps(file))
    assert main(again + ["--prompt", str(edited)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["usage"]["requests_paid"] == 2 and evaluated["task"]["test"] == 2
    assert evaluated["accuracy_after"] == _sent_by_openai(served.url, file)
    assert main(cmd) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["requests_paid"] == 0   # all from the cache


def _sent_by_openai(url, file):
    """Held-out accuracy of a prompt file sent by a plain openai client as the README shows."""
    import openai

    from blackbox.prompts import normalise_answer

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    right = 0
    for text, label in _review_rows()[6:]:
        messages = file["messages"][:-1] + [{"role": "user",
                                             "content": file["messages"][-1]["content"].replace("{text}", text)}]
        answer = client.chat.completions.create(model=file["model"], messages=messages, max_tokens=file["max_tokens"],
                                                temperature=file["temperature"]).choices[0].message.content
        right += normalise_answer(answer.strip().splitlines()[0] if answer.strip() else "") == label
    return right / 2


@pytest.fixture(scope="module")
def five_way(tmp_path_factory):
    """A user's 5-way table: 34 training and 32 held-out ImageNet class descriptions (giveaway
    words masked) with labels the project never uses, written as JSONL."""
    from blackbox.tasks import imagenet_description_task

    task = imagenet_description_task(per_class=14, max_words=14, sentences=1, seed=3)
    names = ["avian", "canine", "aquatic", "reptile", "arthropod"]
    folder = tmp_path_factory.mktemp("five-way")
    for split, texts, labels, n in (("train", task.train_texts, task.train_labels, 34),
                                    ("test", task.test_texts, task.test_labels, 32)):
        rows = [json.dumps({"text": t, "label": names[y]}) + "\n" for t, y in zip(texts, labels)][:n]
        (folder / f"{split}.jsonl").write_text("".join(rows))
    return ["--train", str(folder / "train.jsonl"), "--test", str(folder / "test.jsonl")]


@pytest.fixture
def counting(lm):
    """blackbox serve's SmolLM2 behind the fault server, which counts every request it receives."""
    sys.path.insert(0, os.path.dirname(__file__))
    from fault_server import BrightnessScorer, FaultServer

    srv = FaultServer(port=0, scorer=BrightnessScorer()).start()
    yield srv
    srv.stop()


def test_a_chat_run_whose_answers_carry_no_signal_pays_only_its_probe(counting, lm, five_way, tmp_path, capsys,
                                                                     monkeypatch):
    """The issue's setting (word slots, no instruction naming the labels, no demonstrations) over
    chat: no label is ever listed and no sampled answer is a label. The run stops before its
    held-out evaluation and its training, in one line, having paid its probe: <= 40 requests
    counted at the server on a 32-row test set. A rerun pays nothing and stops the same way."""
    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "none.txt").write_text("")
    cmd = ["tune-prompt", "--model", f"openai:{lm.name}", "--base-url", counting.url, "--api", "chat", *five_way,
           "--steps", "20", "--shots", "0", "--instructions", str(tmp_path / "none.txt"), "--slots", "3",
           "--no-progress"]
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("blackbox: error: no signal")
    assert "0 of 8 probed examples" in err and "paid 16 requests" in err and "--api completions" in err
    assert counting.counters.requests == 16 <= 40
    assert main(cmd) == 2 and counting.counters.requests == 16   # the probe's answers are cached
    assert "paid 0 requests" in capsys.readouterr().err


def test_batch_sends_each_evaluation_pass_as_one_batch_with_the_synchronous_accuracy(counting, lm, tmp_path, capsys,
                                                                                     monkeypatch):
    """--batch: the held-out passes (before and after) go through serve's Batch API, one batch
    each, every query paid once (counted at the server); the training stays synchronous; the
    accuracy is the one the synchronous run measures; a rerun pays nothing and sends no batch."""
    from blackbox.cli.main import main

    cmd = ["tune-prompt", "--model", f"openai:{lm.name}", "--base-url", counting.url, "--api", "completions",
           *_reviews(tmp_path), "--steps", "2", "--batch-size", "2", "--queries-per-step", "4", "--shots", "1",
           "--probe", "4", "--json", "--no-progress"]
    runs = {}
    for batch in (True, False):
        monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / f"cache-{batch}"))
        assert main(cmd + ["--batch"] * batch) == 0
        runs[batch] = json.loads(capsys.readouterr().out)
        if batch:
            paid_batched = counting.counters.answered
            assert counting.counters.duplicate_paid == 0 and paid_batched == runs[True]["usage"]["requests_paid"]
    plain, batched = runs[False], runs[True]
    passes = 1 + (batched["prompt"] != "")  # the after pass is cached when nothing was learned
    assert counting.batch_sizes() == [2] * passes and batched["usage"]["batches"] == passes
    assert batched["usage"]["batched"] == 2 * passes and len(batched["usage"]["batch_ids"]) == passes
    for key in ("accuracy_before", "accuracy_after", "label_nll_before", "label_nll_after", "prompt", "train_queries"):
        assert batched[key] == plain[key], key
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache-True"))
    answered = counting.counters.answered
    assert main(cmd + ["--batch"]) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["requests_paid"] == 0
    assert counting.counters.answered == answered and len(counting.batch_sizes()) == passes


def test_select_keeps_the_best_of_the_last_steps_prompts_and_the_server_counts_what_it_paid(counting, lm, tmp_path,
                                                                                                capsys, monkeypatch):
    """--select 3: the last steps' distinct likeliest prompts (at most 3) are scored on 3 training
    rows and the best (the first on a tie) is the prompt kept and evaluated; every request the
    report counts reached the server once, and none beyond probe + training + selection +
    the two evaluation passes."""
    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    cmd = ["tune-prompt", "--model", f"openai:{lm.name}", "--base-url", counting.url, "--api", "completions",
           *_reviews(tmp_path), "--steps", "6", "--batch-size", "2", "--queries-per-step", "4", "--shots", "2",
           "--probe", "4", "--reward", "logprobs", "--lr", "1.0", "--select", "3", "--no-progress"]
    assert main(cmd + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    scored = report["search"]["selection"]
    assert 2 <= len(scored) <= 3 and all(r["queries"] == 3 for r in scored)
    best = max(range(len(scored)), key=lambda i: (scored[i]["accuracy"], -scored[i]["label_nll"], -i))
    assert report["prompt"] == scored[best]["prompt"]
    paid = report["usage"]["requests_paid"]
    assert paid == counting.counters.answered and counting.counters.duplicate_paid == 0
    assert paid <= 4 + report["train_queries"] + 3 * len(scored) + report["eval_queries"]
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "cache"))
    assert main(cmd) == 0 and counting.counters.answered == paid   # a rerun: all from the cache
    assert f"the last steps' {len(scored)} distinct prompts on 3 training rows" in capsys.readouterr().out


def test_an_interrupted_search_resumes_from_its_checkpoint_and_pays_only_new_steps(served, lm, tmp_path, capsys,
                                                                                   monkeypatch):
    from blackbox.cli.main import main

    base = ["tune-prompt", "--model", f"openai:{lm.name}", "--base-url", served.url, "--api", "completions",
            *_reviews(tmp_path), "--batch-size", "2", "--queries-per-step", "4", "--shots", "2", "--probe", "4",
            "--json", "--no-progress"]
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "straight"))
    assert main(base + ["--steps", "3"]) == 0
    straight = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path / "resumed"))
    ckpt = str(tmp_path / "run.npz")
    assert main(base + ["--steps", "1", "--checkpoint", ckpt]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(base + ["--steps", "3", "--checkpoint", ckpt]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["prompt_file"] == straight["prompt_file"] and resumed["train_queries"] == 12
    assert resumed["accuracy_after"] == straight["accuracy_after"]
    # the resumed run paid at most its two new steps and the final evaluation, not the probe or the first step again
    assert resumed["usage"]["requests_paid"] <= 2 * 4 + 2
    assert first["steps"] == 1 and resumed["steps"] == 3


def test_cli_discrete_prompt_against_a_closed_port_fails_in_one_line(tmp_path, capsys, monkeypatch):
    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path))
    code = main(["tune-prompt", "--model", "openai:m", "--base-url", f"http://127.0.0.1:{_free_port()}/v1",
                 "--max-attempts", "1", "--per-class", "2", "--sentences", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "connection" in err.lower() and len(err.strip().splitlines()) == 1


# -- llama.cpp's server ---------------------------------------------------------------------------
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
    import httpx2 as httpx

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


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_discrete_prompt_tuning_through_llama_cpp_with_budget_and_cache(llama_server, tmp_path, api):
    from blackbox.adapters.api_prompting import openai_label_scorer
    from blackbox.discrete_prompt import tune_discrete_prompt
    from blackbox.queries import Budget
    from blackbox.tasks import imagenet_description_task

    task = imagenet_description_task(("bird", "dog", "fish"), per_class=4, max_words=10)
    os.environ["BLACKBOX_CACHE_DIR"] = str(tmp_path)

    def run(budget):
        scorer = openai_label_scorer("smollm2", task.label_words, api=api, base_url=llama_server, budget=budget,
                                     concurrency=2)
        try:
            return tune_discrete_prompt(scorer, task, ["Animal", "Category", "Type", "Answer", "Class"], n_slots=2,
                                        steps=3, batch_size=2, queries_per_step=8, allocator="neyman", seed=0,
                                        budget=budget), scorer.engine
        finally:
            scorer.engine.close()

    try:
        budget = Budget(max_queries=200)
        first, engine = run(budget)
        # one counter: the engine counts the billable requests (training and evaluation) on the budget
        assert first.queries == 24 and budget.queries == engine.stats.sent <= 24 + 2 * 6 and budget.tokens > 0
        assert np.isfinite(first.after["accuracy"]) and all(sum(h["allocation"]) == 8 for h in first.history)
        again, engine2 = run(Budget(max_queries=200))
        assert engine2.stats.sent == 0 and engine2.stats.cache_hits > 0  # the rerun paid nothing
        assert again.learned == first.learned
        os.environ["BLACKBOX_CACHE_DIR"] = str(tmp_path / "fresh")
        capped = Budget(max_queries=12)
        short, _ = run(capped)
        assert short.steps < 3 and "budget" in short.stopped and capped.queries <= 12
    finally:
        del os.environ["BLACKBOX_CACHE_DIR"]


def test_cli_discrete_prompt_through_llama_cpp_with_a_token_cap(llama_server, tmp_path, capsys, monkeypatch):
    from blackbox.cli.main import main

    monkeypatch.setenv("BLACKBOX_CACHE_DIR", str(tmp_path))
    (tmp_path / "none.txt").write_text("")
    cmd = ["tune-prompt", "--model", "openai:smollm2", "--base-url", llama_server, "--per-class", "2",
           "--sentences", "1", "--steps", "2", "--batch-size", "2", "--queries-per-step", "6", "--allocator", "flops",
           "--slots", "3", "--shots", "0", "--instructions", str(tmp_path / "none.txt"), "--json", "--no-progress"]
    assert main(cmd) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_queries"] == 12 and report["task"]["test"] == 5 and report["api"] == "completions"
    assert 0 <= report["accuracy_after"] <= 1 and len(report["prompt"].split()) <= 3
    assert report["usage"]["requests_paid"] >= 12 and report["tokens"] > 0
    # a token cap stops the run cleanly: the prompt learned so far is kept and the cap is never passed
    assert main(cmd + ["--no-cache", "--max-tokens", "300"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "tokens cap is 300" in report["stopped"] and report["tokens"] <= 300
    assert report["train_queries"] < 12
