"""Word slots: a categorical distribution per slot over candidate words (the ``words`` part of
:class:`~blackbox.prompts.space.PromptSpace` and the whole of :mod:`blackbox.discrete_prompt`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blackbox.errors import InputError


class PromptPolicy:
    """Independent categorical distributions, one per slot, over ``candidates`` (softmax of logits
    ``(n_slots, V)``; the loop's flat ``theta`` reshaped)."""

    def __init__(self, candidates: Sequence[str], n_slots: int):
        if n_slots < 1 or len(candidates) < 2:
            raise InputError("need at least one slot and two candidate words")
        if len(set(candidates)) != len(candidates) or any(not str(w).strip() for w in candidates):
            raise InputError("candidate words must be distinct and non-empty")
        self.candidates = list(candidates)
        self.n_slots = n_slots

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_slots, len(self.candidates)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64).reshape(self.shape)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def sample(self, logits: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
        """``(m, n_slots)`` candidate indices."""
        cum = self.probs(logits).cumsum(1)
        u = rng.random((m, self.n_slots, 1))
        return np.minimum((u > cum[None]).sum(2), len(self.candidates) - 1)

    def score(self, logits: np.ndarray, choices: np.ndarray) -> np.ndarray:
        """``grad_logits log p(choices)`` per sample: ``onehot - probs``, shape ``(m, slots, V)``."""
        p = self.probs(logits)
        g = -np.broadcast_to(p, (len(choices),) + p.shape).copy()
        rows = np.arange(len(choices))[:, None]
        g[rows, np.arange(self.n_slots)[None, :], choices] += 1.0
        return g

    def text(self, choice: Sequence[int]) -> str:
        """The words of a choice (a slot at ``-1`` contributes none)."""
        return " ".join(self.candidates[c] for c in choice if c >= 0)

    def best(self, logits: np.ndarray) -> np.ndarray:
        """The most likely word of each slot; ``-1`` for a slot with no preference yet (all its
        logits equal), so an untrained policy stands for the empty prompt."""
        logits = np.asarray(logits, dtype=np.float64).reshape(self.shape)
        flat = np.ptp(logits, axis=1) == 0
        return np.where(flat, -1, logits.argmax(1))
