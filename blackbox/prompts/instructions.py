"""Instruction candidates: a few that name the labels, the user's own file, and proposals by the model.

* :func:`default_instructions` -- used when the user gives none: each names the labels and asks
  for one of them (the first remedy for a chat model that never answers with a label);
* :func:`read_instructions` -- a file with one instruction per line, or a JSON list of strings;
* :func:`propose_instructions` -- the endpoint itself proposes instructions from a few training
  rows (a meta-prompt, as OPRO and MIPROv2 do); each proposal is one paid, cached request.

The empty instruction is always a candidate too (:class:`~blackbox.prompts.space.PromptSpace` adds it).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from blackbox.errors import InputError
from blackbox.prompt_tuning import TextClassificationTask

from .prompt import Prompt

DEFAULT_INSTRUCTIONS = (
    "Classify the text as one of: {labels}. Answer with the label only.",
    "Which of these labels fits the text best: {labels}? Reply with one word.",
    "Read the text and answer with exactly one word from this list: {labels}.",
)
META_PROMPT = ("Here are texts with their labels:\n\n{examples}\n\n"
               "Write one short instruction that tells an assistant how to label such a text with exactly one "
               "of these labels: {labels}. Write only the instruction.\nInstruction:")
MAX_CHARS = 400  # a longer proposal is cut at a sentence end before this


def _labels(label_words: Sequence[str]) -> str:
    return ", ".join(w.strip() for w in label_words)


def default_instructions(label_words: Sequence[str]) -> list[str]:
    return [t.format(labels=_labels(label_words)) for t in DEFAULT_INSTRUCTIONS]


def read_instructions(path) -> list[str]:
    """Instructions from a file: a JSON list of strings, or one per line (blank lines skipped).
    An empty file means: no instruction but the empty one."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the instructions {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not a valid JSON list: {exc}") from None
        if not all(isinstance(i, str) for i in items):
            raise InputError(f"{path}: the JSON list must hold strings (one instruction each)")
    else:
        items = text.splitlines()
    return list(dict.fromkeys(i.strip() for i in items if i.strip()))


def meta_prompts(task: TextClassificationTask, n: int, shown: int = 6, seed: int = 0) -> list[str]:
    """``n`` meta-prompts, each showing ``shown`` training rows of its own (seeded)."""
    rng = np.random.default_rng([seed, 5])
    words = [w.strip() for w in task.label_words]
    out = []
    for _ in range(n):
        rows = rng.choice(len(task.train_texts), size=min(shown, len(task.train_texts)), replace=False)
        examples = "\n".join(f"Text: {task.train_texts[i]}\nLabel: {words[task.train_labels[i]]}" for i in rows)
        out.append(META_PROMPT.format(examples=examples, labels=_labels(words)))
    return out


def clean_proposal(text: str) -> str:
    """The instruction in a proposal: its first non-empty line, without quotes or a label like
    'Instruction:', cut at a sentence end if very long ('' when nothing is left)."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    for prefix in ("instruction:", "instructions:"):
        if line.lower().startswith(prefix):
            line = line[len(prefix):].strip()
    line = line.strip("\"'` ")
    if len(line) > MAX_CHARS:
        cut = line[:MAX_CHARS].rfind(". ")
        line = line[: cut + 1] if cut > 0 else line[:MAX_CHARS]
    return line


def propose_instructions(endpoint, task: TextClassificationTask, n: int, *, seed: int = 0,
                         max_tokens: int = 80) -> list[str]:
    """Up to ``n`` distinct instructions proposed by ``endpoint`` (one sampled answer to each
    meta-prompt, temperature 1; counted by the endpoint's budget and cached)."""
    if n < 1:
        return []
    bare = Prompt()
    pairs = [(bare, meta) for meta in meta_prompts(task, n, seed=seed)]
    answers = endpoint.answers(pairs, [1] * n, temperature=1.0, seed=seed, max_tokens=max_tokens)
    return list(dict.fromkeys(p for p in (clean_proposal(a[0]) for a in answers) if p))
