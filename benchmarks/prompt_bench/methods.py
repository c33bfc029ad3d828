"""The benchmark's own methods, one interface for all:
``method(task, budget, seed, endpoint, train, val) -> MethodRun``.

``budget`` is in metric calls (one (program, row) score, see :mod:`.programs`); a method never
asks for more. ``train`` and ``val`` are the seed's rows (the same for every method). A run keeps
its candidates in order, so the programs at smaller budgets are read off the same run.

* :func:`zero_shot`: the neutral instruction listing the labels; no metric calls.
* :func:`random_demos`: best of N random demonstration sets (DSPy's random search without the
  bootstrapping: labelled training rows as demonstrations), each scored on ``val``.
* :func:`instruction_search`: random search over instructions the model itself proposes from a few
  training rows (the proposals are LM calls, not metric calls), each scored on ``val``.
* :func:`word_slots`: the shipped discrete prompt tuner (:mod:`blackbox.discrete_prompt`: a
  categorical policy over words in 3 slots, label log-probabilities as reward) in front of the text.
* :func:`new_policy`: the library's prompt search (:mod:`blackbox.prompts`), as `tune-prompt` runs it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from blackbox.adapters.api_prompting import ChatLabelScorer

from .programs import PromptProgram, neutral_instruction, score_program
from .runs import MethodRun, OutOfCalls, Tally
from .tasks import Task

MAX_DEMOS = 8           # demonstrations per random set: 1..8, drawn uniformly
PROPOSAL_EXAMPLES = 5   # training rows shown to the model per proposed instruction
PROPOSAL_TOKENS = 80


class Meter:
    """Scores programs on rows for a method, counting metric calls against its budget."""

    def __init__(self, tally: Tally, model: str, labels: Sequence[str], budget: int):
        self.tally, self.model, self.labels, self.budget = tally, model, tuple(labels), int(budget)
        self.calls = 0

    def accuracy(self, program, rows) -> float:
        """Validation accuracy of ``program``; OutOfCalls (nothing asked) when ``rows`` do not fit."""
        if self.calls + len(rows) > self.budget:
            raise OutOfCalls()
        score = score_program(self.tally, self.model, program, rows, self.labels)
        self.calls += len(rows)
        return score.accuracy


def zero_shot(task: Task, budget: int, seed: int, endpoint, train, val) -> MethodRun:
    run = MethodRun()
    run.add(0, None, PromptProgram(neutral_instruction(task.description, task.labels)))
    return run


def _search(task: Task, budget: int, endpoint, val, propose: Callable[[int], PromptProgram],
            tally: Tally | None = None) -> MethodRun:
    """Score the zero-shot program, then ``propose(i)`` for i = 1, 2, ..., each on ``val``, while
    the budget has room for a whole validation pass; keep every candidate with its score."""
    tally = tally or Tally(endpoint.engine)
    meter = Meter(tally, endpoint.model, task.labels, budget)
    run, i = MethodRun(), 0
    while meter.calls + len(val) <= budget:
        program = propose(i) if i else PromptProgram(neutral_instruction(task.description, task.labels))
        run.add(meter.calls + len(val), meter.accuracy(program, val), program)
        i += 1
    return tally.settle(run, meter.calls)


def random_demos(task: Task, budget: int, seed: int, endpoint, train, val) -> MethodRun:
    """Best of N random demonstration sets (1..MAX_DEMOS labelled training rows, random order)."""
    rng = np.random.default_rng([seed, 101])
    instruction = neutral_instruction(task.description, task.labels)

    def propose(i: int) -> PromptProgram:
        k = int(rng.integers(1, MAX_DEMOS + 1))
        return PromptProgram(instruction, tuple(train[j] for j in rng.choice(len(train), k, replace=False)))

    return _search(task, budget, endpoint, val, propose)


def proposal_request(model: str, rows: Sequence[tuple[str, str]], labels: Sequence[str], seed: int) -> dict:
    """Ask the model for an instruction, shown labelled training rows (sampled at temperature 1
    with a seed, so proposals differ and each is cached)."""
    shown = "\n\n".join(f"Text: {text}\nLabel: {label}" for text, label in rows)
    ask = (f"Here are texts with their labels:\n\n{shown}\n\nWrite a one-sentence instruction that tells an "
           f"assistant how to label such a text as one of: {', '.join(labels)}. Reply with the instruction only.")
    return {"model": model, "messages": [{"role": "user", "content": ask}], "temperature": 1.0,
            "max_tokens": PROPOSAL_TOKENS, "seed": int(seed)}


def instruction_search(task: Task, budget: int, seed: int, endpoint, train, val) -> MethodRun:
    """Random search over model-proposed instructions (each followed by the neutral label list)."""
    rng = np.random.default_rng([seed, 202])
    answer_with = f"Answer with one word: {', '.join(task.labels)}."
    tally, proposals = Tally(endpoint.engine), []

    def propose(i: int) -> PromptProgram:
        rows = [train[j] for j in rng.choice(len(train), PROPOSAL_EXAMPLES, replace=False)]
        body = tally.map([proposal_request(endpoint.model, rows, task.labels, seed * 10_000 + i)])[0].body
        proposals.append(" ".join(((body["choices"][0].get("message") or {}).get("content") or "").split()))
        return PromptProgram(f"{proposals[-1]} {answer_with}".strip())

    run = _search(task, budget, endpoint, val, propose, tally)
    run.notes["proposals"] = len(proposals)
    return run


class InstructedChatScorer(ChatLabelScorer):
    """Label log-probabilities over chat with the zero-shot instruction as the system message, so
    the word-slot prompt sits in the user message before the text, as in :class:`PromptProgram`."""

    def __init__(self, engine, model: str, labels: Sequence[str], instruction: str):
        super().__init__(engine, model, labels)
        self.instruction = instruction

    def body(self, prompt: str) -> dict:
        body = super().body(prompt)
        body["messages"].insert(0, {"role": "system", "content": self.instruction})
        return body


def word_slots(task: Task, budget: int, seed: int, endpoint, train, val) -> MethodRun:
    """The shipped word-slot tuner as a user gets it (3 slots over its default candidate words,
    the CLI's API settings: 8 rows x 32 queries a step, lr 1.0), trained on ``train`` + ``val``
    (it selects nothing, so it learns from both); its prompt after each step is a checkpoint."""
    from blackbox.discrete_prompt import PolicyGradient
    from blackbox.forward_learning import train as train_loop
    from blackbox.prompt_tuning import TextClassificationTask
    from blackbox.tasks import DEFAULT_CANDIDATES

    instruction, labels, rows = neutral_instruction(task.description, task.labels), list(task.labels), train + val
    tally = Tally(endpoint.engine)
    scorer = InstructedChatScorer(tally, endpoint.model, labels, instruction)
    items = TextClassificationTask([t for t, _ in rows], [labels.index(y) for _, y in rows], [], [], labels,
                                   name=task.name, template="{text}")
    source = PolicyGradient(scorer, items, DEFAULT_CANDIDATES, n_slots=3)
    result = train_loop(source, np.zeros(3 * len(DEFAULT_CANDIDATES)), steps=None, total_queries=budget,
                        batch_size=8, queries_per_step=32, lr=1.0, seed=seed, eval_fn=None, eval_every=None)
    run = MethodRun(pick="last")
    run.add(0, None, PromptProgram(instruction))
    for row in result.history:
        run.add(row["queries"], None, PromptProgram(instruction, prefix=row["prompt"]))
    return tally.settle(run, result.queries)


NEW_POLICY_STEP = {"batch_size": 8, "queries_per_step": 32, "lr": 0.3}  # tune-prompt's API defaults
PROBE_ROWS = 8          # the library's default probe (blackbox.prompts.signal.PROBE_ROWS)


def policy_space(task: Task, rows: Sequence[tuple[str, str]], shots: int | None = None, lean: bool = True):
    """The new policy's space as ``tune-prompt`` builds it (its three label-naming instructions,
    the empty one, up to ``shots`` demonstrations from ``rows`` (default: ``--shots``'s,
    :func:`~blackbox.prompts.space.default_shots`), no word slots), with the zero-shot instruction added as a candidate;
    ``(space, theta0)``. ``lean``: theta0 leans towards the zero-shot prompt (as ``--prompt
    zero-shot.json`` would start it); otherwise it is uniform (tune-prompt without ``--prompt``)."""
    from blackbox.prompts import Prompt, PromptSpace, default_instructions, default_shots

    instruction = neutral_instruction(task.description, task.labels)
    k = default_shots(len(task.labels)) if shots is None else shots
    space = PromptSpace([*default_instructions(task.labels), instruction], rows, k)
    return space, space.start(Prompt(instruction) if lean else None)


def as_program(prompt) -> PromptProgram:
    """A library :class:`~blackbox.prompts.Prompt` as the benchmark's program (the same messages)."""
    return PromptProgram(prompt.instruction, tuple(prompt.demonstrations), prompt.words)


def new_policy(task: Task, budget: int, seed: int, endpoint, train, val, shots: int | None = None,
               lean: bool = True, select: int = 0) -> MethodRun:
    """The library's prompt search (:mod:`blackbox.prompts`: one categorical policy over
    instruction, number of demonstrations and the demonstrations, learned by LR with a
    leave-one-out baseline through the one training loop) over the chat endpoint, as
    ``tune-prompt --reward auto`` runs it: a signal probe of PROBE_ROWS rows picks label
    log-probabilities when labels are listed, else sampled answers scored by exact match; it
    stops there (keeping the zero-shot program) when neither carries signal. Trained on
    ``train`` + ``val`` (it selects nothing; they are also the demonstration pool). Every request
    scores a prompt on a row, so every request (probe included) is a metric call. One candidate
    per step: the policy's likeliest prompt, at the metric calls spent so far. ``shots`` and
    ``lean`` shape the space and its start (:func:`policy_space`). ``select`` > 0 (rows) keeps
    SELECT_FROM x ``select`` calls of the budget for ``tune-prompt --select``'s final choice
    among the last steps' likeliest prompts; its one candidate is valid at ``budget`` only."""
    from blackbox.adapters.api_prompting import PromptEndpoint
    from blackbox.errors import NoSignal
    from blackbox.forward_learning import train as train_loop
    from blackbox.prompt_tuning import TextClassificationTask
    from blackbox.prompts import LabelLogprobs, PromptSearch, SampledAnswers, probe_signal
    from blackbox.prompts.search import SELECT_FROM, Trajectory

    labels, rows, tally = list(task.labels), train + val, Tally(endpoint.engine)
    chat = PromptEndpoint(tally, endpoint.model, "chat", labels)
    items = TextClassificationTask([t for t, _ in rows], [labels.index(y) for _, y in rows], [], [], labels,
                                   name=task.name, template="{text}")
    space, theta0 = policy_space(task, rows, shots, lean)
    run = MethodRun(pick="last")
    run.add(0, None, as_program(space.prompt(space.best(theta0))))
    try:
        reward, findings = probe_signal([LabelLogprobs(chat, labels), SampledAnswers(chat, labels, seed=seed)],
                                        items, space, theta0, rows=PROBE_ROWS, seed=seed)
    except NoSignal as exc:
        run.notes["stopped"] = str(exc)
        return tally.settle(run, tally.requests)
    run.notes.update(reward=reward.mode, probe="; ".join(f.why for f in findings))
    source = PromptSearch(space, reward, items)
    left = budget - tally.requests - SELECT_FROM * select
    trajectory = Trajectory(source, SELECT_FROM)

    def step_done(step, theta, row):
        trajectory(step, theta, row)
        if not select:
            run.add(tally.requests, None, as_program(source.prompt(theta)))

    if left >= NEW_POLICY_STEP["queries_per_step"]:
        result = train_loop(source, theta0, total_queries=left, seed=seed, eval_fn=None, eval_every=None,
                            callback=step_done, **NEW_POLICY_STEP)
        run.notes.update(steps=result.steps, stopped=result.stopped)
    if select and trajectory.prompts:
        _select(run, tally, reward, items, trajectory.prompts, select, seed)
    return tally.settle(run, tally.requests)


def _select(run: MethodRun, tally, reward, items, prompts, rows: int, seed: int) -> None:
    """The library's final selection (:func:`blackbox.prompts.search.final_selection`) as the run's
    one candidate after the start, with what each candidate scored in the notes."""
    from blackbox.prompts.search import final_selection

    best, scored = final_selection(reward, items, prompts, rows, seed)
    run.add(tally.requests, None, as_program(best))
    run.notes["selection"] = ", ".join(f"{s.get('accuracy', float('nan')):.2f}" for s in scored) or "one candidate"
