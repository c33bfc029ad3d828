"""A prompt for a classification task, as chat messages and as completion text, and its file.

A :class:`Prompt` is made of parts (an instruction, demonstrations, a line of words, the task's
template) and is *rendered* two ways: chat ``messages`` (the instruction as the system message,
each demonstration a user/assistant pair, the example as the last user message) and one
``completion`` text for ``/v1/completions`` (the same parts, one after another). Both hold the
placeholder ``{text}`` exactly once, where the example's text goes: :meth:`Prompt.fill_messages`
and :meth:`Prompt.fill_completion` put it there with a plain string replacement (never
``str.format``: demonstrations may hold braces).

The prompt file (:meth:`Prompt.to_file`, :meth:`Prompt.from_file`) is JSON that a plain
``openai`` client sends as it is::

    {"model": "gpt-4o-mini", "messages": [...], "max_tokens": 8, "temperature": 0,
     "prompt": "...{text}...", "labels": ["business", ...],
     "blackbox": {"format": 1, "api": "chat", "reward": "sampled", "instruction": "...",
                  "demonstrations": [{"text": "...", "label": "sports"}], "words": "", "template": "..."}}

``messages`` and ``prompt`` are what is sent (chat and completions); ``blackbox`` records the parts
so that a run can start from the file. A file whose messages were edited by hand is evaluated as
edited: the rendered forms, not the parts, are what is sent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

from blackbox.errors import InputError

PLACEHOLDER = "{text}"
FILE_FORMAT = 1


def user_template(template: str, words: str = "") -> str:
    """The user's part of a prompt with ``{text}`` left in place: the word line (if any) above the
    task's template (a format string whose only field is ``{text}``)."""
    body = template.format(text=PLACEHOLDER)
    return f"{words}\n{body}" if words else body


@dataclass
class Prompt:
    """One prompt, by its parts and rendered (see the module docstring).

    ``demonstrations`` are ``(text, label)`` pairs (the label without its leading space);
    ``messages`` and ``completion`` are derived from the parts unless given (a file's own)."""

    instruction: str = ""
    demonstrations: list = field(default_factory=list)
    words: str = ""
    template: str = "{text}"
    messages: list | None = None
    completion: str | None = None

    def __post_init__(self):
        self.demonstrations = [(str(t), str(y).strip()) for t, y in self.demonstrations]
        if self.messages is None:
            self.messages = self._messages()
        if self.completion is None:
            self.completion = self._completion()
        _check_rendered(self.messages, self.completion)

    def _messages(self) -> list[dict]:
        user = user_template(self.template, self.words)
        out = [{"role": "system", "content": self.instruction}] if self.instruction else []
        for text, label in self.demonstrations:
            out += [{"role": "user", "content": user.replace(PLACEHOLDER, text)},
                    {"role": "assistant", "content": label}]
        return out + [{"role": "user", "content": user}]

    def _completion(self) -> str:
        user = user_template(self.template, self.words)
        parts = [self.instruction] if self.instruction else []
        parts += [f"{user.replace(PLACEHOLDER, text)} {label}" for text, label in self.demonstrations]
        return "\n\n".join(parts + [user])

    def fill_messages(self, text: str) -> list[dict]:
        """The chat messages for one example: ``{text}`` replaced in the last message."""
        last = self.messages[-1]
        return [dict(m) for m in self.messages[:-1]] + [{**last, "content": last["content"].replace(PLACEHOLDER, text)}]

    def fill_completion(self, text: str) -> str:
        """The completion text for one example: the last ``{text}`` replaced."""
        head, _, tail = self.completion.rpartition(PLACEHOLDER)
        return head + text + tail

    def describe(self, width: int = 48) -> str:
        """A short description for progress lines and reports: the words alone when the prompt
        has nothing else, else the instruction's start, the number of demonstrations and the words."""
        if not self.instruction and not self.demonstrations:
            return self.words
        inst = self.instruction if len(self.instruction) <= width else self.instruction[:width - 3] + "..."
        out = f"{inst!r} + {len(self.demonstrations)} demo{'s' if len(self.demonstrations) != 1 else ''}"
        return f"{out} + {self.words!r}" if self.words else out

    def parts(self) -> dict:
        return {"instruction": self.instruction, "demonstrations": [{"text": t, "label": y}
                                                                   for t, y in self.demonstrations],
                "words": self.words, "template": self.template}

    def to_file(self, model: str, labels: Sequence[str], *, api: str, reward: str, max_tokens: int,
                **extra) -> dict:
        """The prompt file's JSON object (see the module docstring); ``extra`` goes into the
        ``blackbox`` record (e.g. the held-out accuracy it reached)."""
        return {"model": model, "messages": self.fill_messages(PLACEHOLDER), "max_tokens": int(max_tokens),
                "temperature": 0, "prompt": self.completion, "labels": [str(y).strip() for y in labels],
                "blackbox": {"format": FILE_FORMAT, "api": api, "reward": reward, **self.parts(), **extra}}

    @classmethod
    def from_file(cls, data, where: str = "the prompt file") -> "Prompt":
        """A prompt from a prompt file's JSON object: its parts, and its messages and completion
        text as they are in the file."""
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise InputError(f"{where} is not a prompt file: expected a JSON object with 'messages'")
        record = data.get("blackbox") if isinstance(data.get("blackbox"), dict) else {}
        try:
            demos = [(d["text"], d["label"]) for d in record.get("demonstrations", [])]
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in data["messages"]]
        except (KeyError, TypeError) as exc:
            raise InputError(f"{where}: a message or demonstration lacks {exc}") from None
        completion = data.get("prompt")
        if completion is None:  # a chat-only file: the completion text is rendered from the messages
            completion = "\n\n".join(m["content"] for m in messages)
        try:
            return cls(str(record.get("instruction", "")), demos, str(record.get("words", "")),
                       str(record.get("template", "{text}")), messages, str(completion))
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None


def _check_rendered(messages: list, completion: str) -> None:
    """Both rendered forms hold ``{text}``, the messages in their last (user) message."""
    if not messages or messages[-1].get("role") != "user" or PLACEHOLDER not in messages[-1].get("content", ""):
        raise InputError(f"the last message must be the user's and hold {PLACEHOLDER} where the text goes")
    if PLACEHOLDER not in completion:
        raise InputError(f"the completion prompt must hold {PLACEHOLDER} where the text goes")


def read_prompt_file(path) -> tuple[Prompt, dict]:
    """``(prompt, file's JSON object)`` from a prompt file written by ``--save``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read the prompt file {path}: {exc}") from None
    return Prompt.from_file(data, str(path)), data
