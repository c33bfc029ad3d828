"""Experiment setups shared by the CLI, the examples and the benchmarks.

A recipe receives the model it needs (the embedded SmolLM2 comes from
``blackbox.adapters.causal_lm.load_causal_lm()``; image features from
``blackbox.adapters.image_features.image_features``): the core never loads a model itself, so
the same recipe runs on any object with the LM's methods.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blackbox.alignment import CaptionTask, Projector
from blackbox.errors import InputError
from blackbox.prompt_tuning import LMLabelQueries, SoftPromptSpace, TextClassificationTask

from .animals import UNINFORMATIVE_INIT
from .images import LabelledImages


def soft_prompt_setup(lm, task: TextClassificationTask, *, soft_tokens: int = 4, rank: int | None = 16,
                      init: str = UNINFORMATIVE_INIT, start: np.ndarray | None = None,
                      seed: int = 0) -> tuple[LMLabelQueries, SoftPromptSpace]:
    """``lm`` bound to the task's label words, and a space of ``soft_tokens`` soft tokens (after
    the template's text) in a ``rank``-dimensional random subspace around their start: the
    embeddings of ``init``, or ``start`` (a saved ``(k, d)`` soft prompt)."""
    queries = LMLabelQueries(lm, task.label_words)
    if start is not None:
        start = np.asarray(start, dtype=np.float64)
        if start.ndim != 2 or start.shape[1] != lm.embed_dim:
            raise InputError(f"a saved soft prompt must be (k, {lm.embed_dim}), got shape {start.shape}")
    else:
        start = queries.init_soft(soft_tokens, init)
    return queries, SoftPromptSpace(start, rank=rank, scale=lm.embedding_scale(), seed=seed)


@dataclass
class AlignmentSetup:
    """The caption task, the projector to train and the train / held-out features and labels."""

    task: CaptionTask
    projector: Projector
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def alignment_setup(lm, features: np.ndarray, data: LabelledImages, *, context: str = "Handwritten digit:",
                    prompt: str = "", loss: str = "ranking", k: int = 1, dims: int = 16,
                    init_word: str = " picture", seed: int = 0) -> AlignmentSetup:
    """The LM reads ``[context][k soft tokens][class word]`` (text before the soft token matters:
    the first position of a causal LM is an attention sink); the projector maps a ``dims``-d PCA
    of the training images' ``features`` to the soft tokens, starting at ``init_word``'s embedding."""
    train, test = ~np.asarray(data.test), np.asarray(data.test)
    task = CaptionTask(prompt, [" " + w for w in data.names], context=context, loss=loss)
    train_x = features[train]
    projector = Projector.fit(train_x, k=k, embed_dim=lm.embed_dim, dims=min(dims, len(train_x) - 1),
                              scale=lm.embedding_scale(), init=np.tile(lm.embed_tokens(init_word)[0], k), seed=seed)
    return AlignmentSetup(task, projector, train_x, data.labels[train], features[test], data.labels[test])
