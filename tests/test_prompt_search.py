"""The prompt search of blackbox.prompts without a model: rendering and the prompt file, the policy's
score function against finite differences, sampling without replacement, learning from both
rewards on a black box whose best prompt is known, the signal probe, and the allocators.
(The same search against real servers is in test_api_prompting.py.)"""
import json

import numpy as np
import pytest

from blackbox.errors import BudgetExceeded, InputError, NoSignal
from blackbox.prompt_tuning import TextClassificationTask
from blackbox.prompts import (Example, LabelLogprobs, LabelScores, Prompt, PromptSpace, SampledAnswers, exact_match,
                              normalise_answer, probe_signal, read_instructions, tune_prompt)
from blackbox.prompts.instructions import clean_proposal, meta_prompts, propose_instructions
from blackbox.prompts.search import select_prompt, select_rows, split_queries

LABELS = ["cat", "dog"]
GOOD = "Say cat or dog."


def toy_task(n_train=8, n_test=6):
    """Texts 'a0', 'b1', ...: the letter gives the label away only to a prompt that asks well."""
    def rows(n, start):
        labels = np.arange(start, start + n) % 2
        return [f"{'ab'[y]}{start + i}" for i, y in enumerate(labels)], labels
    train, test = rows(n_train, 0), rows(n_test, 100)
    return TextClassificationTask(*train, *test, [" cat", " dog"], template="{text}\nAnswer:")


class ToyEndpoint:
    """A black box that classifies right only under the instruction GOOD *and* a demonstration of
    the training row 'b1' (else: no label listed, and an answer that is no label). It counts the
    answers it gives and remembers the pairs it saw."""

    def __init__(self, signal=True):
        self.signal, self.answered, self.seen = signal, 0, []

    def right(self, prompt) -> bool:
        return self.signal and prompt.instruction == GOOD and any(t == "b1" for t, _ in prompt.demonstrations)

    def truth(self, text) -> int:
        return "ab".index(text[0])

    def label_scores(self, pairs, *, evaluation=False):
        self.seen += list(pairs)
        lp = np.full((len(pairs), 2), -5.0)
        listed = np.zeros((len(pairs), 2), bool)
        for r, (prompt, text) in enumerate(pairs):
            if self.right(prompt):
                lp[r, self.truth(text)] = -0.1
                listed[r] = True
        self.answered += len(pairs)
        return LabelScores(lp, listed)

    def answers(self, pairs, samples, *, temperature, seed, evaluation=False, max_tokens=None):
        self.seen += list(pairs)
        self.answered += int(sum(samples))
        rng = np.random.default_rng(seed)
        out = []
        for (prompt, text), s in zip(pairs, samples):
            if self.right(prompt):
                out.append([LABELS[self.truth(text)] if temperature == 0 or rng.random() < 0.9 else "bird"
                            for _ in range(s)])
            else:
                out.append(["I cannot say"] * s)
        return out


def space_for(task, k=2, slots=0):
    pool = [(t, LABELS[y]) for t, y in zip(task.train_texts, task.train_labels)]
    return PromptSpace(["Tell me a story.", GOOD], pool, k, ["please", "now", "label"] if slots else (), slots,
                       task.template)


# -- the prompt and its file ----------------------------------------------------------------------------
def test_a_prompt_renders_as_messages_and_completion_text_and_round_trips_its_file(tmp_path):
    p = Prompt("Label it.", [("a {brace} text", "cat"), ("b1", " dog")], "please", "{text}\nAnswer:")
    assert [m["role"] for m in p.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert p.messages[1]["content"] == "please\na {brace} text\nAnswer:" and p.messages[4]["content"] == "dog"
    filled = p.fill_messages("new {text}")
    assert filled[-1]["content"] == "please\nnew {text}\nAnswer:" and p.messages[-1]["content"].count("{text}") == 1
    assert p.fill_completion("x") == ("Label it.\n\nplease\na {brace} text\nAnswer: cat\n\nplease\nb1\nAnswer: dog"
                                      "\n\nplease\nx\nAnswer:")
    data = p.to_file("m", [" cat", " dog"], api="chat", reward="sampled", max_tokens=8, accuracy_after=0.5)
    assert data["labels"] == ["cat", "dog"] and data["temperature"] == 0 and data["blackbox"]["accuracy_after"] == 0.5
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    from blackbox.prompts import read_prompt_file

    again, _ = read_prompt_file(path)
    assert again == p
    data["messages"][0]["content"] = "Edited by hand."  # a hand edit is what is sent
    assert Prompt.from_file(data).fill_messages("x")[0]["content"] == "Edited by hand."
    assert Prompt(template="{text}").describe() == "" and Prompt(words="a b").describe() == "a b"
    for bad in ({"messages": []}, {"messages": [{"role": "user", "content": "no placeholder"}]}, [1]):
        with pytest.raises(InputError):
            Prompt.from_file(bad)


# -- the policy -----------------------------------------------------------------------------------------
def test_the_score_is_the_gradient_of_the_log_probability_of_every_slot():
    task = toy_task()
    space = space_for(task, k=3, slots=2)
    rng = np.random.default_rng(1)
    theta = rng.normal(size=space.dim)
    choices = space.sample(theta, [0, 5, None], rng)
    g = space.score(theta, choices, [0, 5, None])
    eps = 1e-6
    for row, ex in enumerate([0, 5, None]):
        num = np.array([(space.log_prob(theta + eps * e, choices[row], ex) - space.log_prob(theta - eps * e, choices[row], ex))
                        / (2 * eps) for e in np.eye(space.dim)])
        assert np.allclose(g[row], num, atol=1e-5)


def test_demonstrations_are_drawn_without_replacement_and_never_the_example_itself():
    task = toy_task()
    space = space_for(task, k=3)
    theta = np.zeros(space.dim)
    theta[space.offsets[1] + 3] = 20.0                     # always 3 shots
    theta[space.offsets[2]:space.offsets[3]] = np.linspace(0, 1, 8)
    choices = space.sample(theta, [4] * 4000, np.random.default_rng(0))
    demos = choices[:, 2:5]
    assert np.all(np.sort(demos, 1)[:, 1:] != np.sort(demos, 1)[:, :-1]) and not np.any(demos == 4)
    logits = np.where(np.arange(8) == 4, -np.inf, np.linspace(0, 1, 8))
    first = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(np.bincount(demos[:, 0], minlength=8) / 4000, first, atol=0.03)  # the sequential softmax


def test_an_untrained_policy_is_the_bare_template_and_a_saved_prompt_is_where_a_run_starts():
    task = toy_task()
    space = space_for(task, k=2, slots=1)
    bare = space.prompt(space.best(np.zeros(space.dim)))
    assert (bare.instruction, bare.demonstrations, bare.words) == ("", [], "")
    saved = Prompt(GOOD, [("b1", "dog"), ("a0", "cat")], "label", task.template)
    again = space.prompt(space.best(space.start(saved)))
    assert again == saved
    assert space.config()["instructions"] == ["", "Tell me a story.", GOOD]


def test_queries_are_split_into_at_least_two_prompts_of_about_the_samples_each():
    assert split_queries(2, 4).tolist() == [1, 1]
    assert split_queries(8, 1).tolist() == [1] * 8
    assert split_queries(9, 4).tolist() == [5, 4]
    assert split_queries(12, 4).tolist() == [4, 4, 4]


# -- learning from either reward ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["logprobs", "sampled"])
def test_the_search_finds_the_instruction_and_the_demonstration_that_work(mode):
    task = toy_task()
    endpoint = ToyEndpoint()
    reward = LabelLogprobs(endpoint, task.label_words) if mode == "logprobs" else SampledAnswers(endpoint, task.label_words)
    samples = 1 if mode == "logprobs" else 2
    res = tune_prompt(space_for(task), reward, task, samples=samples, steps=40, batch_size=2, queries_per_step=8,
                      lr=0.3, seed=0)
    learned = res.learned
    assert learned.instruction == GOOD and ("b1", "dog") in learned.demonstrations
    assert res.before["accuracy"] == 0.0 and res.after["accuracy"] == 1.0
    # one query is one answer: the loop's count, the endpoint's count (less the evaluations) and --total-queries agree
    assert res.queries == 40 * 8 and endpoint.answered == res.queries + 2 * len(task.test_texts)
    # a training example never sees itself among its demonstrations
    train_pairs = [(p, t) for p, t in endpoint.seen if t in task.train_texts]
    assert train_pairs and all(t not in [d for d, _ in p.demonstrations] for p, t in train_pairs)


def test_label_logprobs_never_reward_a_prompt_for_hiding_the_labels():
    """A weak model (chat, SmolLM2-like): under GOOD it names a label, right on half the examples
    and confidently wrong on the others; under any other prompt it names no label (every label at
    the floor, accuracy 0: a tie is no answer). Renormalised among the labels, hiding them scores
    ln 2, better than answering (about 2.5), and the search would learn to hide; the true label's
    own log-probability makes it answer."""
    task = toy_task()

    class Weak(ToyEndpoint):
        def label_scores(self, pairs, *, evaluation=False):
            lp, listed = np.full((len(pairs), 2), -5.0), np.zeros((len(pairs), 2), bool)
            for r, (prompt, text) in enumerate(pairs):
                if prompt.instruction == GOOD:
                    lp[r, self.truth(text) ^ (int(text[1:]) % 4 >= 2)] = -0.1
                    listed[r] = True
            return LabelScores(lp, listed)

    res = tune_prompt(space_for(task), LabelLogprobs(Weak(), task.label_words), task, steps=30, batch_size=2,
                      queries_per_step=8, lr=0.3, seed=0)
    right = np.mean([int(t[1:]) % 4 < 2 for t in task.test_texts])
    assert res.learned.instruction == GOOD and res.before["accuracy"] == 0.0 and res.after["accuracy"] == right > 0
    assert abs(res.before["label_nll"] - np.log(2)) < 1e-12 and res.after["label_nll"] > 1  # hiding is "better" there


def test_a_metric_of_ones_own_is_the_reward():
    task = toy_task()

    def length_metric(answer: str, example: Example) -> float:  # rewards answers that are a label word
        return float(answer in ("cat", "dog"))

    reward = SampledAnswers(ToyEndpoint(), task.label_words, metric=length_metric)
    res = tune_prompt(space_for(task), reward, task, steps=30, batch_size=2, queries_per_step=8, lr=0.3, seed=1)
    assert res.after["metric"] == 1.0 and res.after["answers_are_labels"] == 1.0
    assert exact_match("The Dog.", Example("x", "dog")) == 1.0 and normalise_answer(" An  Apple!") == "apple"
    with pytest.raises(InputError, match="temperature"):
        SampledAnswers(ToyEndpoint(), task.label_words, temperature=0)


@pytest.mark.parametrize("allocator", ["uniform", "neyman", "flops"])
def test_every_allocator_rations_sampled_rewards(allocator):
    task = toy_task()
    res = tune_prompt(space_for(task), SampledAnswers(ToyEndpoint(), task.label_words), task, samples=2, steps=12,
                      batch_size=4, queries_per_step=16, lr=0.3, seed=0, allocator=allocator)
    rows = res.history
    assert all(sum(h["allocation"]) == 16 and min(h["allocation"]) >= 2 for h in rows)
    assert all(np.isfinite(h["est_variance"]) for h in rows) and res.queries == 12 * 16


def test_neyman_gives_the_floor_to_an_example_whose_reward_never_varies():
    """An easy example (every answer right whatever the prompt) has zero variance: after its
    first visit Neyman gives it the floor and the rest to the examples whose answers flip."""
    task = toy_task(n_train=4)
    easy = task.train_texts[0]

    class Coin(ToyEndpoint):
        def answers(self, pairs, samples, *, temperature, seed, evaluation=False, max_tokens=None):
            rng = np.random.default_rng([seed, len(self.seen)])
            self.seen += list(pairs)
            return [[LABELS[self.truth(t)] if t == easy or rng.random() < 0.5 else "no" for _ in range(s)]
                    for (_, t), s in zip(pairs, samples)]

    res = tune_prompt(space_for(task), SampledAnswers(Coin(), task.label_words), task, steps=6, batch_size=4,
                      queries_per_step=24, lr=0.3, seed=0, allocator="neyman")
    later = [dict(zip(h["items"], h["allocation"])) for h in res.history[1:]]
    assert all(a[0] == 2 and sum(a.values()) == 24 for a in later)
    assert res.history[0]["allocation"] == [6, 6, 6, 6]  # no variance known yet: uniform


# -- the final selection ----------------------------------------------------------------------------------
def test_the_selection_keeps_the_best_prompt_scored_on_rows_no_candidate_shows():
    task = toy_task(n_train=12)
    good = Prompt(GOOD, [("b1", "dog")], template=task.template)
    bad = Prompt("Tell me a story.", [("a2", "cat")], template=task.template)
    endpoint = ToyEndpoint()
    reward = LabelLogprobs(endpoint, task.label_words)
    rows = select_rows([bad, good], task, 6, seed=0)
    assert len(rows) == 6 and not {task.train_texts[i] for i in rows} & {"b1", "a2"}
    texts, labels = [task.train_texts[i] for i in rows], task.train_labels[rows]
    best, scored = select_prompt(reward, [bad, good], texts, labels)
    assert best == good and [s["accuracy"] for s in scored] == [0.0, 1.0] and endpoint.answered == 12
    assert select_prompt(reward, [bad, Prompt("Tell me a story.")], texts, labels)[0] == bad  # a tie: the first

    class Capped(ToyEndpoint):  # the budget runs out in the second candidate
        def label_scores(self, pairs, *, evaluation=False):
            if self.answered + len(pairs) > 8:
                raise BudgetExceeded("max_queries 8 reached")
            return super().label_scores(pairs, evaluation=evaluation)

    best, scored = select_prompt(LabelLogprobs(Capped(), task.label_words), [bad, good], texts, labels)
    assert best == bad and "max_queries 8" in scored[-1]["stopped"] and len(scored) == 2


def test_a_run_with_selection_pays_candidates_times_rows_and_keeps_the_best():
    task = toy_task(n_train=12)
    endpoint = ToyEndpoint()
    res = tune_prompt(space_for(task), LabelLogprobs(endpoint, task.label_words), task, steps=30, batch_size=2,
                      queries_per_step=8, lr=0.3, seed=0, select=5, candidates=3)
    scored = res.selection
    assert 2 <= len(scored) <= 3 and res.learned.instruction == GOOD and ("b1", "dog") in res.learned.demonstrations
    assert max(s["accuracy"] for s in scored) == 1.0 and res.before["accuracy"] == 0.0 and res.after["accuracy"] == 1.0
    assert endpoint.answered == res.queries + 5 * len(scored) + 2 * len(task.test_texts)
    assert [e["step"] for e in res.evals] == [0, 30]
    with pytest.raises(ValueError, match="eval_every with select"):  # before anything is asked
        tune_prompt(space_for(task), LabelLogprobs(endpoint, task.label_words), task, select=5, eval_every=2)
    assert endpoint.answered == res.queries + 5 * len(scored) + 2 * len(task.test_texts)


# -- the probe --------------------------------------------------------------------------------------------
def test_the_probe_stops_without_signal_saying_why_what_it_cost_and_what_to_do():
    task = toy_task()
    space = space_for(task)
    endpoint = ToyEndpoint(signal=False)
    rewards = [LabelLogprobs(endpoint, task.label_words), SampledAnswers(endpoint, task.label_words)]
    with pytest.raises(NoSignal) as err:
        probe_signal(rewards, task, space, np.zeros(space.dim), rows=4, spent=lambda: "8 requests ($0.0001)",
                     advice="To do: name the labels.")
    message = str(err.value)
    assert "on 0 of 4 probed examples" in message and "all 4 sampled answers 0 and 0 named a label" in message
    assert "8 requests ($0.0001)" in message and message.endswith("To do: name the labels.") and "\n" not in message
    assert endpoint.answered == 8
    # with signal, the first reward that carries it is chosen
    endpoint.signal = True
    theta = space.start(Prompt(GOOD, [("b1", "dog")], template=task.template), strength=8.0)
    reward, findings = probe_signal(rewards, task, space, theta, rows=4)
    assert reward is rewards[0] and findings[0].signal


# -- instruction candidates -------------------------------------------------------------------------------
def test_instructions_from_a_file_and_from_the_model(tmp_path):
    lines = tmp_path / "i.txt"
    lines.write_text("Label the text.\n\n  Name the animal.  \nLabel the text.\n")
    assert read_instructions(lines) == ["Label the text.", "Name the animal."]
    listed = tmp_path / "i.json"
    listed.write_text(json.dumps(["One.", "Two."]))
    assert read_instructions(listed) == ["One.", "Two."]
    (tmp_path / "empty.txt").write_text("")
    assert read_instructions(tmp_path / "empty.txt") == []
    for bad, why in (("[1, 2]", "hold strings"), ("[oops", "not a valid JSON list")):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(InputError, match=why):
            read_instructions(tmp_path / "bad.json")
    assert clean_proposal('\n  Instruction: "Say cat or dog."\nMore text') == "Say cat or dog."
    task = toy_task()
    metas = meta_prompts(task, 2, shown=3)
    assert len(metas) == 2 and all("cat, dog" in m and m.count("Label: ") == 3 for m in metas)

    class Proposer:
        def answers(self, pairs, samples, **kw):
            assert kw["temperature"] == 1.0 and kw["max_tokens"] == 80
            return [["Instruction: Label it."], [""]]
    assert propose_instructions(Proposer(), task, 2) == ["Label it."]
