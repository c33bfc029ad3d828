"""A text-classification task from the user's own files (train and test tables)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from blackbox.errors import InputError
from blackbox.prompt_tuning import TextClassificationTask

from .tables import read_table


def load_text_task(train: str | os.PathLike, test: str | os.PathLike, *, template: str,
                   text_column: str = "text", label_column: str = "label") -> TextClassificationTask:
    """Texts and labels from two tables (see :func:`~blackbox.tasks.tables.read_table`).

    The classes are the distinct labels of the training split (sorted); each must be a single
    answer word (the model is scored on its first answer token), every test label must occur in
    training, and there must be at least two classes. ``template`` puts a text before the answer
    (``"{text}\\nAnswer:"``)."""
    splits = {}
    for name, path in (("train", train), ("test", test)):
        rows = read_table(path, (text_column, label_column))
        for number, row in enumerate(rows, 1):
            label = row[label_column]
            if len(label.split()) != 1:
                raise InputError(f"{path}: label {label!r} (row {number}) is not a single answer word; "
                                 "labels must be one word each (e.g. 'positive', 'sports')")
        splits[name] = ([r[text_column] for r in rows], [r[label_column] for r in rows])
    classes = sorted(set(splits["train"][1]))
    if len(classes) < 2:
        raise InputError(f"{train}: the training split has only one label ({classes[0]!r}); need two or more")
    unseen = sorted(set(splits["test"][1]) - set(classes))
    if unseen:
        raise InputError(f"{test}: label {unseen[0]!r} never occurs in the training split {train}")
    index = {c: i for i, c in enumerate(classes)}
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    return TextClassificationTask(train_x, np.array([index[y] for y in train_y]), test_x,
                                  np.array([index[y] for y in test_y]), [f" {c}" for c in classes],
                                  name=Path(train).stem, template=template)
