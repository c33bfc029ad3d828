"""Query functions for soft prompt tuning on a local causal LM (the embedded SmolLM2 by default).

Binds a :class:`~blackbox.adapters.causal_lm.CausalLM` to the three callables that
:mod:`blackbox.prompt_tuning` uses, counting every forward row as a query. By default the soft
tokens sit after the text (``[text + template][soft][label]``), so each text's keys/values are
computed once and every query runs only the soft tokens and the label through the model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from blackbox.errors import InputError

DEFAULT_INIT = "Which animal is described?"


class LMPromptQueries:
    """``label_logprobs`` (the queries), ``nll``, and the white-box ``nll_grad`` / ``label_loss_grad``."""

    def __init__(self, lm, label_words: Sequence[str], soft_position: str = "suffix"):
        self.lm = lm
        self.soft_position = soft_position
        self.label_words = list(label_words)
        self.label_ids = [lm.single_token(w) for w in self.label_words]
        self.queries = 0

    def nll(self, soft: np.ndarray, prompts: Sequence[str], targets: Sequence[str]) -> np.ndarray:
        self.queries += len(prompts)
        return self.lm.nll(soft, list(prompts), list(targets), soft_position=self.soft_position)

    def label_logprobs(self, soft: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        self.queries += len(prompts)
        return self.lm.next_token_logprobs(soft, list(prompts), self.label_ids,
                                           soft_position=self.soft_position)

    def nll_grad(self, soft: np.ndarray, prompts: Sequence[str], targets: Sequence[str]):
        return self.lm.nll_and_grad(np.asarray(soft), list(prompts), list(targets),
                                    soft_position=self.soft_position)

    def label_loss_grad(self, soft: np.ndarray, prompts: Sequence[str], labels: Sequence[int]):
        """White box: label cross-entropy and its gradient for a shared soft prompt (k, d)."""
        return self.lm.label_loss_and_grad(np.asarray(soft), list(prompts), self.label_ids, list(labels),
                                           soft_position=self.soft_position)

    def init_soft(self, k: int, text: str = DEFAULT_INIT) -> np.ndarray:
        """``k`` soft tokens initialised from the embeddings of ``text`` (repeated if short)."""
        if k < 1:
            raise InputError("k (the number of soft tokens) must be >= 1")
        emb = self.lm.embed_tokens(text)
        if len(emb) == 0:
            raise InputError("the init text has no tokens")
        return np.concatenate([emb] * (-(-k // len(emb))))[:k]


def embedded_prompt_queries(label_words: Sequence[str]) -> LMPromptQueries:
    from .causal_lm import load_causal_lm

    return LMPromptQueries(load_causal_lm(), label_words)


# the default start of the soft prompt in the examples: an uninformative phrase (zero-shot accuracy
# about chance), so the trained prompt has to learn the question itself
UNINFORMATIVE_INIT = " and so on and so"


def animal_soft_prompt_setup(*, soft_tokens: int = 4, rank: int | None = 16, init: str = UNINFORMATIVE_INIT,
                             per_class: int = 16, sentences: int = 2, seed: int = 0):
    """The soft-prompt task shared by ``blackbox tune-prompt``, ``examples/prompt_tuning.py`` and
    ``benchmarks/allocation.py``: the ImageNet-description animal task (up to ``per_class``
    classes per group, the first ``sentences`` sentences of each description), the embedded
    SmolLM2 bound as queries, and ``soft_tokens`` soft tokens after ``"Answer:"`` initialised
    from ``init`` in a ``rank``-dimensional random subspace. Returns ``(task, queries, space)``."""
    from blackbox.prompt_tuning import SoftPromptSpace

    from .text_tasks import animal_task

    task = animal_task("{text}\nAnswer:", per_class=per_class, sentences=sentences, seed=seed)
    model = embedded_prompt_queries(task.label_words)
    space = SoftPromptSpace(model.init_soft(soft_tokens, init), rank=rank, scale=model.lm.embedding_scale(),
                            seed=seed)
    return task, model, space
