"""The prompt space users tune: one categorical policy over instruction, demonstrations and words.

A prompt is drawn slot by slot, all slots' logits in one flat vector ``theta`` (the training
loop's parameters), laid out ``[instructions K | shots k+1 | demonstrations N | words S x V]``:

* **instruction**: one of ``K`` candidates (the empty instruction is always candidate 0);
* **shots**: how many demonstrations, ``0..k``;
* **demonstrations**: an *ordered* draw without replacement from the ``N`` training rows (Gumbel
  top-k, which has the law of the sequential softmax draw), of which the first ``shots`` are
  used. When the example being scored is itself a training row it is masked out of its own
  demonstrations (it would give its answer away);
* **words**: ``S`` slots, each one of ``V`` candidate words (:class:`~blackbox.prompts.words.PromptPolicy`).

:meth:`PromptSpace.score` is ``grad_theta log p(choice)`` of a drawn prompt, with the demonstrations'
term that of the ordered draw (``sum_t onehot(d_t) - softmax over the rows still available``), so
the score-function (LR) gradient ``(reward - baseline) * score`` moves every slot at once.
A choice is a row of integers ``[instruction, shots, d_1..d_k, w_1..w_S]`` (``-1``: unused).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blackbox.errors import InputError

from .prompt import Prompt
from .words import PromptPolicy


def default_shots(n_labels: int) -> int:
    """How many demonstrations a space may show unless told: one per label, at most 4."""
    return min(int(n_labels), 4)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


class PromptSpace:
    """Instruction candidates, ``k`` demonstrations from ``pool`` (``(text, label)`` rows), and
    ``n_slots`` words from ``words``, over the task's ``template`` (see the module docstring)."""

    def __init__(self, instructions: Sequence[str] = ("",), pool: Sequence[tuple[str, str]] = (), k: int = 0,
                 words: Sequence[str] = (), n_slots: int = 0, template: str = "{text}"):
        self.instructions = list(dict.fromkeys(["", *[str(i).strip() for i in instructions]]))
        self.pool = [(str(t), str(y).strip()) for t, y in pool]
        if k < 0 or n_slots < 0:
            raise InputError("the numbers of demonstrations and word slots must be >= 0")
        if k > len(self.pool):
            raise InputError(f"{k} demonstrations asked for, but only {len(self.pool)} training rows to draw from")
        self.k, self.template = int(k), template
        self.words = PromptPolicy(words, n_slots) if n_slots else None
        # one instruction (the empty one) leaves nothing to choose: no logits for it
        sizes = [len(self.instructions) if len(self.instructions) > 1 else 0, self.k + 1 if self.k else 0, len(self.pool) if self.k else 0,
                 n_slots * len(words) if n_slots else 0]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.dim = int(self.offsets[-1])
        self.width = 2 + self.k + n_slots  # integers per choice

    # -- the flat logits, by slot --------------------------------------------------------------
    def _part(self, theta: np.ndarray, i: int) -> np.ndarray:
        return np.asarray(theta, dtype=np.float64)[self.offsets[i]:self.offsets[i + 1]]

    def _mask(self, exclude: int | None) -> np.ndarray:
        keep = np.ones(len(self.pool), bool)
        if exclude is not None and 0 <= exclude < len(self.pool):
            keep[exclude] = False
        return keep

    def sample(self, theta: np.ndarray, exclude: Sequence[int | None], rng: np.random.Generator) -> np.ndarray:
        """One choice per entry of ``exclude`` (the pool row each must not show, or None)."""
        out = np.full((len(exclude), self.width), -1, dtype=np.int64)
        out[:, 0] = 0
        if len(self.instructions) > 1:
            p_inst = _softmax(self._part(theta, 0))
            out[:, 0] = rng.choice(len(p_inst), size=len(exclude), p=p_inst)
        if self.k:
            p_shots = _softmax(self._part(theta, 1))
            out[:, 1] = rng.choice(self.k + 1, size=len(exclude), p=p_shots)
            logits = self._part(theta, 2)
            for r, ex in enumerate(exclude):  # Gumbel top-k: an ordered draw without replacement
                keys = np.where(self._mask(ex), logits + rng.gumbel(size=len(logits)), -np.inf)
                order = np.argsort(-keys, kind="stable")[: out[r, 1]]
                out[r, 2:2 + len(order)] = order
        else:
            out[:, 1] = 0
        if self.words is not None:
            out[:, 2 + self.k:] = self.words.sample(self._part(theta, 3), len(exclude), rng)
        return out

    def score(self, theta: np.ndarray, choices: np.ndarray, exclude: Sequence[int | None]) -> np.ndarray:
        """``grad_theta log p(choice)`` per row, shape ``(m, dim)``."""
        theta = np.asarray(theta, dtype=np.float64)
        g = np.zeros((len(choices), self.dim))
        o = self.offsets
        if len(self.instructions) > 1:
            g[:, o[0]:o[1]] = -_softmax(self._part(theta, 0))
            g[np.arange(len(choices)), choices[:, 0]] += 1.0
        if self.k:
            g[:, o[1]:o[2]] = -_softmax(self._part(theta, 1))
            g[np.arange(len(choices)), o[1] + choices[:, 1]] += 1.0
            logits = self._part(theta, 2)
            for r, (choice, ex) in enumerate(zip(choices, exclude)):
                g[r, o[2]:o[3]] = self._draw_score(logits, choice[2:2 + choice[1]], self._mask(ex))
        if self.words is not None:
            g[:, o[3]:o[4]] = self.words.score(self._part(theta, 3), choices[:, 2 + self.k:]).reshape(len(choices), -1)
        return g

    @staticmethod
    def _draw_score(logits: np.ndarray, drawn: np.ndarray, available: np.ndarray) -> np.ndarray:
        """``grad log p`` of an ordered draw without replacement: at each position the drawn
        row's one-hot minus the softmax over the rows still available."""
        g = np.zeros(len(logits))
        available = available.copy()
        for d in drawn:
            p = np.where(available, np.exp(logits - logits[available].max()), 0.0)
            g -= p / p.sum()
            g[d] += 1.0
            available[d] = False
        return g

    def log_prob(self, theta: np.ndarray, choice: np.ndarray, exclude: int | None = None) -> float:
        """``log p(choice)`` (the score's antiderivative; used by the tests)."""
        def lsm(z, i):
            return z[i] - np.logaddexp.reduce(z)
        lp = lsm(self._part(theta, 0), choice[0]) if len(self.instructions) > 1 else 0.0
        if self.k:
            lp += lsm(self._part(theta, 1), choice[1])
            logits, available = self._part(theta, 2), self._mask(exclude)
            for d in choice[2:2 + choice[1]]:
                lp += logits[d] - np.logaddexp.reduce(logits[available])
                available[d] = False
        if self.words is not None:
            z = self._part(theta, 3).reshape(self.words.shape)
            lp += sum(lsm(z[s], c) for s, c in enumerate(choice[2 + self.k:]))
        return float(lp)

    # -- from a choice to a prompt ---------------------------------------------------------------
    def best(self, theta: np.ndarray) -> np.ndarray:
        """The most likely prompt: each slot's likeliest value; a slot with no preference yet
        (all its logits equal) stands for nothing (no instruction, no demonstrations, no word),
        so an untrained policy is the bare template (zero-shot)."""
        choice = np.full(self.width, -1, dtype=np.int64)
        choice[0] = int(np.argmax(self._part(theta, 0))) if len(self.instructions) > 1 else 0
        choice[1] = 0
        if self.k:
            shots = self._part(theta, 1)
            choice[1] = 0 if np.ptp(shots) == 0 else int(np.argmax(shots))
            order = np.argsort(-self._part(theta, 2), kind="stable")[: choice[1]]
            choice[2:2 + len(order)] = order
        if self.words is not None:
            choice[2 + self.k:] = self.words.best(self._part(theta, 3))
        return choice

    def prompt(self, choice: np.ndarray) -> Prompt:
        demos = [self.pool[d] for d in choice[2:2 + max(int(choice[1]), 0)]]
        words = self.words.text(choice[2 + self.k:]) if self.words is not None else ""
        return Prompt(self.instructions[int(choice[0])], demos, words, self.template)

    def start(self, prompt: Prompt | None = None, strength: float = 2.0) -> np.ndarray:
        """Initial logits: uniform, or leaning ``strength`` towards ``prompt``'s parts (its
        instruction must be a candidate and its demonstrations pool rows; words a candidate each)."""
        theta = np.zeros(self.dim)
        if prompt is None:
            return theta
        o = self.offsets
        if prompt.instruction and prompt.instruction in self.instructions:
            theta[o[0] + self.instructions.index(prompt.instruction)] = strength
        rows = [self.pool.index(d) for d in prompt.demonstrations if d in self.pool][: self.k]
        if self.k:
            theta[o[1] + len(rows)] = strength
            for rank, row in enumerate(rows):  # earlier demonstrations first in the best order
                theta[o[2] + row] = strength * (1 + (len(rows) - rank) / (len(rows) + 1))
        if self.words is not None and prompt.words:
            cand = self.words.candidates
            for s, w in enumerate(prompt.words.split()[: self.words.n_slots]):
                if w in cand:
                    theta[o[3] + s * len(cand) + cand.index(w)] = strength
        return theta

    def config(self) -> dict:
        return {"instructions": self.instructions, "pool": len(self.pool), "shots": self.k,
                "words": self.words.candidates if self.words is not None else [],
                "slots": self.words.n_slots if self.words is not None else 0}
