"""Prompt programs, the served endpoint, and scoring a program on rows (the benchmark's one metric).

A *prompt program* is what a method returns: it writes the chat messages for a text
(``messages(text)``), says how many tokens its answer may take (``max_tokens``) and reads the label
out of the answer (``parse(answer, labels)``). Two kinds:

* :class:`PromptProgram`: an instruction (system message), demonstrations as earlier user /
  assistant turns, and an optional word prefix before the text (the word-slot methods');
* :class:`DSPyProgram`: a DSPy ``Predict`` program's instruction and demonstrations, written by
  DSPy's own ``ChatAdapter`` exactly as DSPy sends them.

Every program, of every method, is scored the same way: one chat request per row at temperature 0
through the project's :class:`~blackbox.adapters.remote.engine.QueryEngine` (on-disk cache: a rerun
pays nothing; the same (program, row) is never paid twice), the answer parsed leniently (the first
word that is a label, or the unique label it starts), correct or not. A *metric call* is one such
(program, row) score asked for by a method, cached or not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

ANSWER_TOKENS = 5      # a one-word label (some take two tokens), with room for a capital or a dot
DSPY_ANSWER_TOKENS = 64  # DSPy's field markers around the label, as the task model is run in DSPy


def task_instruction(description: str) -> str:
    """What is classified, in a fixed template (DSPy's student signature takes this; its label
    list comes from the output field's type)."""
    return f"Classify the {description}."


def neutral_instruction(description: str, labels: Sequence[str]) -> str:
    """The zero-shot instruction: what is classified and the label words (a fixed template, the same
    for every task; no wording tuned to any task or method)."""
    return f"{task_instruction(description)} Answer with one word: {', '.join(labels)}."


def parse_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label an answer gives: the first word that is a label, or that at least 3 letters of
    exactly one label start (``sport`` -> ``sports``); None when there is none."""
    for word in re.findall(r"[a-z]+", (answer or "").lower()):
        if word in labels:
            return word
        hits = [label for label in labels if len(word) >= 3 and label.startswith(word)]
        if len(hits) == 1:
            return hits[0]
    return None


class Program(Protocol):
    max_tokens: int

    def messages(self, text: str) -> list[dict]: ...

    def parse(self, answer: str, labels: Sequence[str]) -> str | None: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class PromptProgram:
    """System instruction (none when empty) + demonstration turns + (optional) words before the
    text: the messages :class:`blackbox.prompts.Prompt` sends for the same parts."""

    instruction: str
    demos: tuple[tuple[str, str], ...] = ()
    prefix: str = ""
    max_tokens: int = ANSWER_TOKENS

    def messages(self, text: str) -> list[dict]:
        turns = [{"role": "system", "content": self.instruction}] if self.instruction else []
        for demo_text, label in self.demos:
            turns += [{"role": "user", "content": demo_text}, {"role": "assistant", "content": label}]
        user = f"{self.prefix}\n{text}" if self.prefix else text
        return turns + [{"role": "user", "content": user}]

    def parse(self, answer: str, labels: Sequence[str]) -> str | None:
        return parse_label(answer, labels)

    def to_dict(self) -> dict:
        return {"kind": "prompt", "instruction": self.instruction, "demos": [list(d) for d in self.demos],
                "prefix": self.prefix}


@dataclass(frozen=True)
class DSPyProgram:
    """A DSPy ``Predict(text -> label: Literal[labels])`` program: its instruction and demos (dicts
    of the demo's fields), formatted by DSPy's ChatAdapter."""

    instruction: str
    demos: tuple[dict, ...]
    labels: tuple[str, ...]
    max_tokens: int = DSPY_ANSWER_TOKENS
    _parts: dict = field(default_factory=dict, compare=False, repr=False)

    def _signature_and_adapter(self):
        if not self._parts:
            from .dspy_methods import adapter_parts

            self._parts.update(adapter_parts(self.instruction, self.labels, self.demos))
        return self._parts

    def messages(self, text: str) -> list[dict]:
        parts = self._signature_and_adapter()
        return parts["adapter"].format(parts["signature"], parts["demos"], {"text": text})

    def parse(self, answer: str, labels: Sequence[str]) -> str | None:
        """The label field's value (between DSPy's ``label`` and ``completed`` markers when they
        are there), read as any other answer."""
        body = (answer or "").split("[[ ## label ## ]]", 1)[-1].split("[[ ## completed ## ]]", 1)[0]
        return parse_label(body, labels)

    def to_dict(self) -> dict:
        return {"kind": "dspy", "instruction": self.instruction, "demos": list(self.demos), "labels": list(self.labels)}


def program_from_dict(d: dict) -> Program:
    if d["kind"] == "dspy":
        return DSPyProgram(d["instruction"], tuple(d["demos"]), tuple(d["labels"]))
    return PromptProgram(d["instruction"], tuple(tuple(x) for x in d["demos"]), d.get("prefix", ""))


@dataclass
class Endpoint:
    """The served model: its base URL, the model name sent, and the engine our requests go through
    (one at a time: the server has one slot)."""

    base_url: str
    model: str
    engine: object


def open_endpoint(base_url: str, model: str) -> Endpoint:
    from blackbox.adapters.remote.engine import QueryEngine
    from blackbox.adapters.remote.openai_transport import OpenAITransport

    transport = OpenAITransport(base_url=base_url, kind="chat", max_connections=2)
    return Endpoint(base_url, model, QueryEngine(transport, cache=True, concurrency=1, timeout=600.0, model=model))


@dataclass
class Score:
    """Per-row correctness of one program, and what its requests took (cached answers included)."""

    correct: np.ndarray
    prompt_tokens: int
    completion_tokens: int
    answers: list[str]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if self.correct.size else float("nan")


def score_program(engine, model: str, program: Program, rows: Sequence[tuple[str, str]],
                  labels: Sequence[str]) -> Score:
    """Score ``program`` on ``rows``: one greedy chat request per row through ``engine`` (a
    QueryEngine, or a :class:`~.runs.Tally` around one), parsed, compared with the gold label."""
    requests = [{"model": model, "messages": program.messages(text), "temperature": 0,
                 "max_tokens": program.max_tokens} for text, _ in rows]
    responses = engine.map(requests)
    answers = [(r.body["choices"][0].get("message") or {}).get("content") or "" for r in responses]
    correct = np.array([program.parse(a, labels) == gold for a, (_, gold) in zip(answers, rows)], dtype=bool)
    return Score(correct, sum(r.prompt_tokens for r in responses), sum(r.completion_tokens for r in responses),
                 answers)
