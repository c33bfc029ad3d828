"""Multimodal alignment through a language model that is only queried.

A frozen image encoder gives features ``f`` (e.g. EfficientNet-Lite0's 1280-d penultimate layer);
a small trainable **projector** maps them to ``k`` soft tokens in the input-embedding space of a
frozen language model; the loss is the LM's negative log-likelihood of the image's caption given
the soft tokens (``loss="nll"``) or that caption's cross-entropy among all class captions
(``loss="ranking"``), obtained by forward queries only. Zero-shot classification ranks the LM's
likelihood of every class caption given the projected image.

The projector (numpy)::

    h      = [ (f - mean) @ basis, 1 ]          fixed PCA whitening to ``dims`` (+ a bias input)
    u      = W @ h                              W: (k*r, dims+1), the trainable parameters
    soft   = o + g * reshape(u, (k, r)) @ B     B: (r, D) fixed orthonormal output basis,
                                                g = scale * sqrt(D / r), o: fixed offset

``B`` is the identity (``r = D``, ``o = 0``) unless an ``out_basis`` is given: a few directions of
the embedding space (e.g. the class words' embeddings plus random ones, :func:`word_basis`)
around the offset ``o`` = the initial tokens (e.g. a word's embedding). Restricting the
output to ``r`` dimensions is what makes query-only training practical: the LR estimator's
variance grows with the dimension it perturbs (``k*r`` instead of ``k*D``). The gain ``g`` keeps
the units of ``u`` (and of the noise ``sigma``) the same for every ``r``: unit-RMS coordinates give
soft tokens of the LM's typical embedding norm.

Two gradient sources train it from queries on the one loop of :mod:`blackbox.forward_learning`
(``perturb``):

* ``"output"`` (default, ULR-style, :class:`OutputNoise`): perturb the projector's *output* --
  each item's soft tokens -- with antithetic Gaussian noise, estimate ``dL/dsoft`` by the LR
  identity, and get ``dL/dW = dL/dsoft h^T`` by the chain rule through the (known, linear)
  projector. No backpropagation through the LM, and the estimator's dimension is ``k*D`` instead
  of ``k*D*(dims+1)``: the noise on ``W`` orthogonal to ``h`` (which an output cannot feel) is
  never drawn. This is what makes it work within a few thousand queries.
* ``"params"`` (:func:`params_noise`): perturb the flat parameter vector (kept for comparison --
  its variance is about ``dims+1`` times larger).

The loop brings the allocators (``uniform`` | ``neyman`` | ``flops``) that ration each step's
queries across the batch, a :class:`~blackbox.queries.Budget` that is never overspent, checkpoints
and resume. The white-box reference (:func:`train_backprop`) takes the same steps with the exact
``dL/dsoft`` from an LM that offers ``nll_and_grad`` (autograd), to compare at equal steps.

The LM is any object with ``embed_dim``, ``nll(soft (n,k,D), prompts, targets) -> (n,)``, and
optionally ``next_token_logprobs(soft, prompts, token_ids) -> (n, C)`` + ``tokenize`` (one LM
sequence per image for ranking single-token class words), ``nll_and_grad`` (the backprop
reference) and ``embed_tokens`` (initialising the soft tokens from a word). A training query is one
loss evaluation (one image under one perturbation).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError, ModelError
from .forward_learning import AntitheticNoise, Estimate, ParameterNoise, TrainResult, train

PERTURBATIONS = ("output", "params")
LOSSES = ("nll", "ranking")


# --------------------------------------------------------------------------------------------
# the projector
# --------------------------------------------------------------------------------------------
@dataclass
class Projector:
    """Image features -> ``k`` soft tokens of width ``embed_dim`` (see the module docstring)."""

    mean: np.ndarray       # (F,) feature mean of the training images
    basis: np.ndarray      # (F, dims) PCA directions divided by their standard deviation
    weight: np.ndarray     # (k*D, dims+1) trainable; last column is the bias
    k: int
    embed_dim: int
    scale: float = 1.0     # the LM's typical embedding scale (soft = scale * W h)
    out_basis: np.ndarray | None = None   # (r, D) orthonormal rows; None = identity (r = D)
    offset: np.ndarray | None = None      # (k, D) fixed, added to the soft tokens (with out_basis)

    @classmethod
    def fit(cls, features: np.ndarray, *, k: int, embed_dim: int, dims: int = 16, scale: float = 1.0,
            init: np.ndarray | None = None, init_std: float = 0.01, out_basis: np.ndarray | None = None,
            seed: int = 0) -> "Projector":
        """A projector whose fixed reduction is fitted on ``features`` (training images only).

        ``init`` ``(k, D)`` sets the starting soft tokens (e.g. a word's embedding); the weights
        on the features start small and random (never all-zero soft tokens: the LM's gradient is
        undefined there). With an ``out_basis``, ``init`` is the fixed offset the basis moves around."""
        features = _check_features(features)
        if k < 1 or embed_dim < 1:
            raise InputError("k and embed_dim must be >= 1")
        if out_basis is not None:
            out_basis = np.asarray(out_basis, dtype=np.float64)
            if out_basis.ndim != 2 or out_basis.shape[1] != embed_dim or not 1 <= len(out_basis) <= embed_dim:
                raise InputError(f"out_basis must be (r, {embed_dim}) with 1 <= r <= {embed_dim}, got {out_basis.shape}")
            if not np.allclose(out_basis @ out_basis.T, np.eye(len(out_basis)), atol=1e-6):
                raise InputError("out_basis rows must be orthonormal (see word_basis)")
        r = embed_dim if out_basis is None else len(out_basis)
        if not 1 <= dims <= min(features.shape):
            raise InputError(f"dims must be between 1 and {min(features.shape)}, got {dims}")
        mean = features.mean(0)
        _, s, vt = np.linalg.svd(features - mean, full_matrices=False)
        std = s[:dims] / np.sqrt(max(len(features) - 1, 1))
        basis = vt[:dims].T / np.maximum(std, 1e-8)
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((k * r, dims + 1)) * init_std
        if init is not None:
            init = np.asarray(init, dtype=np.float64).reshape(-1)
            if init.size != k * embed_dim:
                raise InputError(f"init must have {k} x {embed_dim} values, got {init.size}")
        offset = None
        if out_basis is not None:
            offset = np.zeros((k, embed_dim)) if init is None else init.reshape(k, embed_dim).copy()
        elif init is not None:
            weight[:, -1] = init / scale
        else:
            weight[:, -1] = rng.standard_normal(k * r)
        return cls(mean, basis, weight, int(k), int(embed_dim), float(scale), out_basis, offset)

    @property
    def out_dim(self) -> int:
        """``r``: the output coordinates per soft token (``embed_dim`` without an out_basis)."""
        return self.embed_dim if self.out_basis is None else len(self.out_basis)

    @property
    def gain(self) -> float:
        """``scale * sqrt(D / r)``: soft tokens per unit of output coordinate."""
        return self.scale * float(np.sqrt(self.embed_dim / self.out_dim))

    def lift(self, u: np.ndarray) -> np.ndarray:
        """Output coordinates ``(n, k*r)`` -> soft tokens ``(n, k, D)``: ``gain * u @ B``."""
        u = np.asarray(u, dtype=np.float64).reshape(len(u), self.k, self.out_dim)
        if self.out_basis is None:
            return np.ascontiguousarray(u) * self.gain
        return (u @ self.out_basis) * self.gain + self.offset[None]

    def pull(self, grad_soft: np.ndarray) -> np.ndarray:
        """Chain rule back through :meth:`lift`: ``dL/dsoft (n, k, D)`` -> ``dL/du (n, k*r)``."""
        g = np.asarray(grad_soft, dtype=np.float64).reshape(len(grad_soft), self.k, self.embed_dim)
        if self.out_basis is not None:
            g = g @ self.out_basis.T
        return g.reshape(len(g), -1) * self.gain

    @property
    def dims(self) -> int:
        return self.basis.shape[1]

    @property
    def theta(self) -> np.ndarray:
        """The flat trainable parameter vector (a copy)."""
        return self.weight.reshape(-1).copy()

    def with_theta(self, theta: np.ndarray) -> "Projector":
        theta = np.asarray(theta, dtype=np.float64)
        if theta.size != self.weight.size:
            raise InputError(f"theta has {theta.size} values, the projector {self.weight.size}")
        return Projector(self.mean, self.basis, theta.reshape(self.weight.shape).copy(), self.k,
                         self.embed_dim, self.scale, self.out_basis, self.offset)

    def reduce(self, features: np.ndarray) -> np.ndarray:
        """``h``: ``(n, dims+1)`` whitened PCA coordinates with a trailing 1."""
        features = _check_features(features, self.mean.size)
        h = (features - self.mean) @ self.basis
        return np.hstack([h, np.ones((len(h), 1))])

    def soft_tokens(self, features: np.ndarray | None = None, *, reduced: np.ndarray | None = None) -> np.ndarray:
        """``(n, k, D)`` soft tokens of the images (give ``features`` or their ``reduced`` h)."""
        h = self.reduce(features) if reduced is None else reduced
        return self.lift(h @ self.weight.T)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        try:
            extra = {} if self.out_basis is None else {"out_basis": self.out_basis, "offset": self.offset}
            np.savez(tmp, mean=self.mean, basis=self.basis, weight=self.weight, **extra,
                     meta=np.array(json.dumps({"k": self.k, "embed_dim": self.embed_dim, "scale": self.scale})))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Projector":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                more = (z["out_basis"], z["offset"]) if "out_basis" in z.files else (None, None)
                return cls(z["mean"], z["basis"], z["weight"], meta["k"], meta["embed_dim"], meta["scale"], *more)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read projector {path}: {exc}") from None


def word_basis(vectors: np.ndarray, extra: int = 0, seed: int = 0) -> np.ndarray:
    """An orthonormal output basis ``(r, D)`` spanning ``vectors`` (e.g. the class words'
    embeddings, ``(m, D)``) plus ``extra`` random directions; ``r = rank + extra``."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or len(v) < 1 or not np.all(np.isfinite(v)):
        raise InputError(f"vectors must be a finite (m, D) array, got shape {v.shape}")
    if extra < 0 or len(v) + extra > v.shape[1]:
        raise InputError(f"extra must be between 0 and {v.shape[1] - len(v)}")
    rng = np.random.default_rng([seed, 31])
    stacked = np.vstack([v, rng.standard_normal((extra, v.shape[1]))]).T
    q, r = np.linalg.qr(stacked)
    keep = np.abs(np.diag(r)) > 1e-8 * np.abs(r).max()
    return np.ascontiguousarray(q[:, keep].T)


def _check_features(features, width: int | None = None) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or (width is not None and f.shape[1] != width):
        raise InputError(f"features must be (n, {width or 'F'}), got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise InputError("features contain nan or inf")
    return f


# --------------------------------------------------------------------------------------------
# the task: captions, the query-only loss, zero-shot ranking
# --------------------------------------------------------------------------------------------
@dataclass
class CaptionTask:
    """Captions are ``prompt + class_words[c]``; the loss is the NLL of the class-specific part.

    The prompt (e.g. ``" A photo of the digit"``) is the same for every class, so ranking the full
    captions and ranking the class words given ``[soft][prompt]`` give the same order."""

    prompt: str
    class_words: Sequence[str]   # e.g. [" zero", " one", ...] (leading space: a new word)
    context: str = ""            # text BEFORE the soft tokens: [context][soft][class word]
    loss: str = "nll"            # "nll" of the true caption, or "ranking": its cross-entropy among
                                 # all class captions (what zero-shot ranking scores)

    def __post_init__(self):
        self.class_words = list(self.class_words)
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.context and self.prompt:
            raise InputError("give a context (text before the soft tokens) or a prompt (after), not both")
        if len(self.class_words) < 2 or len(set(self.class_words)) != len(self.class_words):
            raise InputError("a caption task needs at least two distinct class words")

    def lm_args(self) -> tuple[str, dict]:
        """The text and keyword arguments the LM reads next to the soft tokens."""
        if self.context:
            return self.context, {"soft_position": "suffix"}
        return self.prompt, {}

    @property
    def num_classes(self) -> int:
        return len(self.class_words)

    def captions(self) -> list[str]:
        return [self.prompt + w for w in self.class_words]


def caption_nll(lm, soft: np.ndarray, task: CaptionTask, labels: np.ndarray) -> np.ndarray:
    """``-log p(class_words[labels[i]] | [soft_i][prompt])`` for each row (one LM sequence each)."""
    labels = np.asarray(labels, dtype=np.int64)
    if soft.shape[0] != len(labels):
        raise InputError(f"{soft.shape[0]} soft prompts for {len(labels)} labels")
    text, kw = task.lm_args()
    values = np.asarray(lm.nll(soft, [text] * len(labels), [task.class_words[c] for c in labels], **kw),
                        dtype=np.float64)
    if values.shape != (len(labels),) or not np.all(np.isfinite(values)):
        raise ModelError("the language model returned a wrong number of NLLs or a non-finite one")
    return values


def class_scores(lm, soft: np.ndarray, task: CaptionTask) -> tuple[np.ndarray, int]:
    """``(n, C)`` log-likelihoods of every class word given each image's soft tokens, and the
    LM sequences read: one per image when every class word is a single token and the LM offers
    ``next_token_logprobs``, else one per (image, class)."""
    n, c = soft.shape[0], task.num_classes
    if hasattr(lm, "next_token_logprobs") and hasattr(lm, "tokenize"):
        ids = [lm.tokenize(w) for w in task.class_words]
        if all(len(t) == 1 for t in ids):
            text, kw = task.lm_args()
            return np.asarray(lm.next_token_logprobs(soft, [text] * n, [t[0] for t in ids], **kw),
                              dtype=np.float64), n
    rows = np.repeat(soft, c, axis=0)
    labels = np.tile(np.arange(c), n)
    return -caption_nll(lm, rows, task, labels).reshape(n, c), n * c


def caption_loss(lm, soft: np.ndarray, task: CaptionTask, labels: np.ndarray) -> np.ndarray:
    """The training loss of each row under ``task.loss``: the true caption's NLL, or (``"ranking"``)
    its cross-entropy among the class captions, ``logsumexp(scores) - scores[label]``. Either is one
    LM sequence per row when the class words are single tokens (a query of the training loop is
    one row)."""
    labels = np.asarray(labels, dtype=np.int64)
    if task.loss == "nll":
        return caption_nll(lm, soft, task, labels)
    if soft.shape[0] != len(labels):
        raise InputError(f"{soft.shape[0]} soft prompts for {len(labels)} labels")
    scores, _ = class_scores(lm, soft, task)
    if not np.all(np.isfinite(scores)):
        raise ModelError("the language model returned a non-finite log-probability")
    return np.logaddexp.reduce(scores, axis=1) - scores[np.arange(len(labels)), labels]


def evaluate(lm, projector: Projector, features: np.ndarray, labels: np.ndarray, task: CaptionTask) -> dict:
    """Zero-shot classification: rank the class captions by the LM's likelihood given each image.

    Returns ``accuracy``, ``chance`` (1/C), ``mean_nll`` of the true caption, ``scores`` (n, C),
    ``predictions`` and ``queries``."""
    labels = np.asarray(labels, dtype=np.int64)
    scores, queries = class_scores(lm, projector.soft_tokens(features), task)
    pred = scores.argmax(1)
    return {"accuracy": float(np.mean(pred == labels)), "chance": 1.0 / task.num_classes,
            "mean_nll": float(-np.mean(scores[np.arange(len(labels)), labels])),
            "scores": scores, "predictions": pred, "queries": int(queries)}


# --------------------------------------------------------------------------------------------
# training: gradient sources for the one forward-learning loop
# --------------------------------------------------------------------------------------------
class OutputNoise(AntitheticNoise):
    """ULR-style source: antithetic noise on each image's soft output coordinates ``u_i = W h_i``
    (its soft tokens move by ``+-gain * z @ B``); ``dL_i/du_i ~ mean (L+ - L-) z / (2 sigma^2)``
    and ``dL_i/dW = dL_i/du_i h_i^T`` (exact chain rule through the linear projector)."""

    def __init__(self, lm, projector: Projector, reduced: np.ndarray, labels: np.ndarray, task: CaptionTask,
                 sigma: float):
        super().__init__(len(reduced), sigma)
        self.lm, self.projector, self.h, self.labels, self.task = lm, projector, reduced, labels, task
        self.shape = projector.weight.shape

    def centres(self, theta, items):
        return self.h[items] @ theta.reshape(self.shape).T

    def pull(self, theta, items, grads):
        grad = np.zeros(self.shape)
        for g, hi in zip(grads, self.h[items]):
            grad += np.outer(g, hi)
        return (grad / len(items)).reshape(-1)

    def pull_scale(self, items):
        return np.array([float(hi @ hi) for hi in self.h[items]])

    def loss(self, points, items):
        return caption_loss(self.lm, self.projector.lift(points), self.task, self.labels[items])

    def learned(self, theta) -> Projector:
        return self.projector.with_theta(theta)

    def config(self) -> dict:
        return {**super().config(), "loss": self.task.loss}


def params_noise(lm, projector: Projector, reduced: np.ndarray, labels: np.ndarray, task: CaptionTask,
                 sigma: float) -> ParameterNoise:
    """The source that perturbs the projector's weights themselves (for comparison: its variance
    is about ``dims + 1`` times that of :class:`OutputNoise`)."""
    def loss(thetas, items):
        w = thetas.reshape(len(thetas), *projector.weight.shape)
        return caption_loss(lm, projector.lift(np.einsum("mij,mj->mi", w, reduced[items])), task, labels[items])

    return ParameterNoise(loss, len(reduced), sigma, learned=projector.with_theta)


class ProjectorBackprop:
    """The exact gradient source of the white-box reference: ``dL/dsoft`` by autograd through an LM
    that offers ``nll_and_grad`` / ``label_loss_and_grad``, chained through the projector."""

    def __init__(self, lm, projector: Projector, reduced: np.ndarray, labels: np.ndarray, task: CaptionTask):
        if not hasattr(lm, "nll_and_grad"):
            raise InputError("the backprop reference needs a white-box LM with nll_and_grad")
        self.lm, self.projector, self.h, self.labels, self.task = lm, projector, reduced, labels, task
        self.word_ids = [lm.single_token(w) for w in task.class_words] if task.loss == "ranking" else None
        self.n_items = len(reduced)

    def gradient(self, theta, items) -> Estimate:
        h, labels = self.h[items], self.labels[items]
        soft = self.projector.lift(h @ theta.reshape(self.projector.weight.shape).T)
        text, kw = self.task.lm_args()
        if self.word_ids is not None:
            values, g = self.lm.label_loss_and_grad(soft, [text] * len(items), self.word_ids, labels, **kw)
        else:
            values, g = self.lm.nll_and_grad(soft, [text] * len(items), [self.task.class_words[c] for c in labels],
                                             **kw)
        grad = self.projector.pull(g).T @ h / len(items)
        return Estimate(grad.reshape(-1), np.full(len(items), np.nan), np.asarray(values, dtype=np.float64))

    def learned(self, theta) -> Projector:
        return self.projector.with_theta(theta)

    def config(self) -> dict:
        return {"source": "projector-backprop", "loss": self.task.loss}


def _training_data(projector: Projector, features, labels, task: CaptionTask):
    h = projector.reduce(features)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(h):
        raise InputError(f"{len(labels)} labels for {len(h)} images")
    if labels.min() < 0 or labels.max() >= task.num_classes:
        raise InputError(f"labels must be in 0..{task.num_classes - 1}")
    return h, labels


def _projector_eval(projector: Projector, eval_fn):
    return None if eval_fn is None else (lambda theta: eval_fn(projector.with_theta(theta)))


def train_projector(lm, projector: Projector, features: np.ndarray, labels: np.ndarray, task: CaptionTask, *,
                    perturb: str = "output", sigma: float = 0.3, eval_fn: Callable[[Projector], dict] | None = None,
                    steps: int | None = None, batch_size: int = 16, queries_per_step: int = 64, lr: float = 0.1,
                    **options) -> TrainResult:
    """Train ``projector`` from caption-loss queries only (see the module docstring).

    ``sigma`` is the noise scale in units of the output coordinates (``perturb="output"``) or of
    the parameters (``"params"``). ``eval_fn(projector) -> dict`` of metrics runs at step 0, every
    ``eval_every`` steps and at the end (its queries are not training queries). ``options`` go to
    :func:`~blackbox.forward_learning.train` (allocator, seed, budget, total_queries, checkpoint,
    checkpoint_every, reward, cap, progress, eval_every...). ``result.learned`` is the trained
    :class:`Projector`.
    """
    if perturb not in PERTURBATIONS:
        raise InputError(f"perturb must be one of {PERTURBATIONS}, got {perturb!r}")
    h, labels = _training_data(projector, features, labels, task)
    maker = OutputNoise if perturb == "output" else params_noise
    return train(maker(lm, projector, h, labels, task, sigma), projector.theta, steps=steps, batch_size=batch_size,
                 queries_per_step=queries_per_step, lr=lr, eval_fn=_projector_eval(projector, eval_fn),
                 description="aligning", **options)


def train_backprop(lm, projector: Projector, features: np.ndarray, labels: np.ndarray, task: CaptionTask, *,
                   steps: int, batch_size: int = 16, lr: float = 0.1, seed: int = 0,
                   eval_fn: Callable[[Projector], dict] | None = None, eval_every: int = 10) -> TrainResult:
    """The white-box reference: the same projector, batches and Adam, with the exact gradient
    ``dL/dsoft`` from ``lm.nll_and_grad`` (autograd through the LM) instead of LR estimates."""
    h, labels = _training_data(projector, features, labels, task)
    return train(ProjectorBackprop(lm, projector, h, labels, task), projector.theta, steps=steps,
                 batch_size=batch_size, lr=lr, seed=seed, eval_fn=_projector_eval(projector, eval_fn),
                 eval_every=eval_every)
