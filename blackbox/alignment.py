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

Two ways to train it from queries (``perturb``):

* ``"output"`` (default, ULR-style): perturb the projector's *output* -- each item's soft tokens
  -- with antithetic Gaussian noise, estimate ``dL/dsoft`` by the LR identity, and get ``dL/dW =
  dL/dsoft h^T`` by the chain rule through the (known, linear) projector. No backpropagation
  through the LM, and the estimator's dimension is ``k*D`` instead of ``k*D*(dims+1)``: the
  noise on ``W`` orthogonal to ``h`` (which an output cannot feel) is never drawn. This is what
  makes it work within a few thousand queries.
* ``"params"``: perturb the flat parameter vector with :func:`forward_train` (the generic loop;
  kept for comparison -- its variance is about ``dims+1`` times larger).

Both use the allocators (``uniform`` | ``neyman`` | ``flops``) to ration each step's queries
across the batch, a :class:`Budget` that is never overspent, checkpoints and resume.
The white-box reference (:func:`train_backprop`) takes the same steps with the exact ``dL/dsoft``
from an LM that offers ``nll_and_grad`` (autograd), to compare at equal steps.

The LM is any object with ``embed_dim``, ``nll(soft (n,k,D), prompts, targets) -> (n,)``, and
optionally ``next_token_logprobs(soft, prompts, token_ids) -> (n, C)`` + ``tokenize`` (one query
per image for ranking single-token class words), ``nll_and_grad`` (the backprop reference) and
``embed_tokens`` (initialising the soft tokens from a word). Every sequence the LM reads counts as
one query.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .allocators import make_allocator
from .errors import BudgetExceeded, InputError, ModelError
from .forward_learning import (TrainResult, _Adam, _load_checkpoint, _save_checkpoint, batch_items, check_schedule,
                               final_eval, forward_train, history_row)
from .queries import Budget

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


def _reserve(budget: Budget | None, n: int):
    return budget.reserve(n) if budget is not None else None


def _settle(budget: Budget | None, reservation) -> None:
    if reservation is not None:
        budget.settle(reservation)


def caption_nll(lm, soft: np.ndarray, task: CaptionTask, labels: np.ndarray,
                budget: Budget | None = None) -> np.ndarray:
    """``-log p(class_words[labels[i]] | [soft_i][prompt])`` for each row: ``len(labels)`` queries."""
    labels = np.asarray(labels, dtype=np.int64)
    if soft.shape[0] != len(labels):
        raise InputError(f"{soft.shape[0]} soft prompts for {len(labels)} labels")
    reservation = _reserve(budget, len(labels))
    try:
        text, kw = task.lm_args()
        values = np.asarray(lm.nll(soft, [text] * len(labels), [task.class_words[c] for c in labels], **kw),
                            dtype=np.float64)
    except BaseException:
        if reservation is not None:
            budget.release(reservation)
        raise
    _settle(budget, reservation)
    if values.shape != (len(labels),) or not np.all(np.isfinite(values)):
        raise ModelError("the language model returned a wrong number of NLLs or a non-finite one")
    return values


def class_scores(lm, soft: np.ndarray, task: CaptionTask, budget: Budget | None = None) -> tuple[np.ndarray, int]:
    """``(n, C)`` log-likelihoods of every class word given each image's soft tokens, and the
    queries spent: one per image when every class word is a single token and the LM offers
    ``next_token_logprobs``, else one per (image, class)."""
    n, c = soft.shape[0], task.num_classes
    single = None
    if hasattr(lm, "next_token_logprobs") and hasattr(lm, "tokenize"):
        ids = [lm.tokenize(w) for w in task.class_words]
        if all(len(t) == 1 for t in ids):
            single = [t[0] for t in ids]
    if single is not None:
        reservation = _reserve(budget, n)
        try:
            text, kw = task.lm_args()
            scores = np.asarray(lm.next_token_logprobs(soft, [text] * n, single, **kw), dtype=np.float64)
        except BaseException:
            if reservation is not None:
                budget.release(reservation)
            raise
        _settle(budget, reservation)
        return scores, n
    rows = np.repeat(soft, c, axis=0)
    labels = np.tile(np.arange(c), n)
    return -caption_nll(lm, rows, task, labels, budget).reshape(n, c), n * c


def caption_loss(lm, soft: np.ndarray, task: CaptionTask, labels: np.ndarray,
                 budget: Budget | None = None) -> np.ndarray:
    """The training loss of each row under ``task.loss``: the true caption's NLL, or (``"ranking"``)
    its cross-entropy among the class captions, ``logsumexp(scores) - scores[label]``. Either is one
    query per row when the class words are single tokens."""
    labels = np.asarray(labels, dtype=np.int64)
    if task.loss == "nll":
        return caption_nll(lm, soft, task, labels, budget)
    if soft.shape[0] != len(labels):
        raise InputError(f"{soft.shape[0]} soft prompts for {len(labels)} labels")
    scores, _ = class_scores(lm, soft, task, budget)
    if not np.all(np.isfinite(scores)):
        raise ModelError("the language model returned a non-finite log-probability")
    return np.logaddexp.reduce(scores, axis=1) - scores[np.arange(len(labels)), labels]


def evaluate(lm, projector: Projector, features: np.ndarray, labels: np.ndarray, task: CaptionTask,
             budget: Budget | None = None) -> dict:
    """Zero-shot classification: rank the class captions by the LM's likelihood given each image.

    Returns ``accuracy``, ``chance`` (1/C), ``mean_nll`` of the true caption, ``scores`` (n, C),
    ``predictions`` and ``queries``."""
    labels = np.asarray(labels, dtype=np.int64)
    scores, queries = class_scores(lm, projector.soft_tokens(features), task, budget)
    pred = scores.argmax(1)
    return {"accuracy": float(np.mean(pred == labels)), "chance": 1.0 / task.num_classes,
            "mean_nll": float(-np.mean(scores[np.arange(len(labels)), labels])),
            "scores": scores, "predictions": pred, "queries": int(queries)}


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass
class AlignmentResult:
    """The trained projector and the training run (history, evaluations, queries)."""

    projector: Projector
    train: TrainResult
    perturb: str
    allocator: str

    @property
    def queries(self) -> int:
        return self.train.queries


def train_projector(lm, projector: Projector, features: np.ndarray, labels: np.ndarray, task: CaptionTask, *,
                    steps: int | None = None, total_queries: int | None = None, batch_size: int = 16,
                    queries_per_step: int = 64, sigma: float = 0.3, lr: float = 0.1,
                    allocator: str = "uniform", perturb: str = "output", seed: int = 0,
                    budget: Budget | None = None, checkpoint: str | os.PathLike | None = None,
                    progress: bool = False, eval_fn: Callable[[Projector], dict] | None = None,
                    eval_every: int = 10) -> AlignmentResult:
    """Train ``projector`` from caption-NLL queries only (see the module docstring).

    ``sigma`` is the noise scale in units of the LM's embedding scale (``perturb="output"``) or of
    the parameters (``"params"``). ``queries_per_step`` (even, >= 2 x batch_size) is split across
    the batch by ``allocator``. Stops after ``steps``, before ``total_queries`` would be passed,
    or when ``budget`` runs out (``train.stopped`` says why). ``eval_fn(projector) -> dict`` of
    metrics runs at step 0, every ``eval_every`` steps and at the end (its queries are not part of
    the training count). ``checkpoint``: an ``.npz`` written every step and resumed from.
    """
    if perturb not in PERTURBATIONS:
        raise InputError(f"perturb must be one of {PERTURBATIONS}, got {perturb!r}")
    h = projector.reduce(features)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(h):
        raise InputError(f"{len(labels)} labels for {len(h)} images")
    if labels.min() < 0 or labels.max() >= task.num_classes:
        raise InputError(f"labels must be in 0..{task.num_classes - 1}")
    wrapped_eval = None if eval_fn is None else (lambda theta: _metrics(eval_fn(projector.with_theta(theta))))
    if perturb == "params":
        def loss(thetas, items):
            w = thetas.reshape(len(thetas), *projector.weight.shape)
            return caption_loss(lm, projector.lift(np.einsum("mij,mj->mi", w, h[items])), task, labels[items])

        result = forward_train(loss, projector.theta, len(h), batch_size=batch_size,
                               queries_per_step=queries_per_step, steps=steps, total_queries=total_queries,
                               sigma=sigma, lr=lr, allocator=allocator, seed=seed, budget=budget,
                               checkpoint=checkpoint, progress=progress, eval_fn=wrapped_eval,
                               eval_every=eval_every)
    else:
        result = _train_output_perturbation(lm, projector, h, labels, task, steps=steps,
                                            total_queries=total_queries, batch_size=batch_size,
                                            queries_per_step=queries_per_step, sigma=sigma, lr=lr,
                                            allocator=allocator, seed=seed, budget=budget,
                                            checkpoint=checkpoint, progress=progress,
                                            eval_fn=wrapped_eval, eval_every=eval_every)
    name = allocator if isinstance(allocator, str) else getattr(allocator, "name", "custom")
    return AlignmentResult(projector.with_theta(result.theta), result, perturb, name)


def _metrics(d: dict) -> dict:
    """Keep the JSON-able scalar metrics of an evaluation (drop score matrices)."""
    return {("eval_queries" if k == "queries" else k): (float(v) if isinstance(v, (float, np.floating)) else int(v))
            for k, v in d.items() if isinstance(v, (int, float, np.integer, np.floating))}


@dataclass
class OutputGradient:
    """An LR estimate of the batch loss's gradient w.r.t. the projector weights (flat)."""

    grad: np.ndarray           # (k*D*(dims+1),) mean over items of each item's estimate
    item_variance: np.ndarray  # per-query trace variance proxy of each item's estimate
    item_loss: np.ndarray      # mean of each item's perturbed losses
    queries: int


def output_gradient(lm, projector: Projector, reduced: np.ndarray, labels: np.ndarray, task: CaptionTask,
                    counts: Sequence[int], *, sigma: float, rng: np.random.Generator,
                    budget: Budget | None = None) -> OutputGradient:
    """ULR-style estimate for a batch: ``counts[i]`` (even) queries on item ``i`` perturb its soft
    output coordinates ``u_i = W h_i`` by ``+-z``, ``z ~ N(0, sigma^2 I_{k*r})`` (its soft tokens by
    ``+-scale * z @ B``); ``dL_i/du_i ~ mean (L+ - L-) z / (2 sigma^2)``
    and ``dL_i/dW = dL_i/d(Wh_i) h_i^T`` (exact chain rule through the linear projector). Items
    are weighted ``1/n_i`` so the estimate is unbiased for any allocation."""
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) != len(reduced) or np.any(counts < 2) or np.any(counts % 2):
        raise InputError("every item needs an even number (>= 2) of queries")
    pairs = counts // 2
    owner = np.repeat(np.arange(len(reduced)), pairs)
    centre = reduced @ projector.weight.T                                       # (B, k*r)
    z = rng.standard_normal((len(owner), centre.shape[1])) * sigma
    soft = projector.lift(np.concatenate([centre[owner] + z, centre[owner] - z]))
    values = caption_loss(lm, soft, task, np.concatenate([np.asarray(labels)[owner]] * 2), budget)
    m = len(owner)
    fp, fm = values[:m], values[m:]
    terms = ((fp - fm) / (2 * sigma ** 2))[:, None] * z                          # d/d(W h), own units
    grad = np.zeros(projector.weight.shape)
    second = np.empty(len(reduced))
    item_loss = np.empty(len(reduced))
    for i, hi in enumerate(reduced):
        t = terms[owner == i]
        grad += np.outer(t.mean(0), hi)
        second[i] = np.mean(np.sum(t ** 2, axis=1)) * float(hi @ hi) / 2.0
        item_loss[i] = np.mean((fp[owner == i] + fm[owner == i]) / 2)
    return OutputGradient((grad / len(reduced)).reshape(-1), second, item_loss, len(soft))


def _train_output_perturbation(lm, projector, h, labels, task, *, steps, total_queries, batch_size,
                               queries_per_step, sigma, lr, allocator, seed, budget, checkpoint,
                               progress, eval_fn, eval_every) -> TrainResult:
    """ULR-style forward learning: noise on the soft tokens, chain rule to the projector."""
    n_items = len(h)
    batch_size = check_schedule(n_items, batch_size, queries_per_step, steps, total_queries, budget, sigma, lr)
    alloc = make_allocator(allocator, floor=2, seed=seed, unit=2)
    adam = _Adam(lr)
    theta = projector.theta
    shape = projector.weight.shape
    mem_var = np.full(n_items, np.nan)
    mem_loss = np.full(n_items, np.nan)
    result = TrainResult(theta=theta)
    config = {"n_items": n_items, "dim": theta.size, "batch_size": batch_size, "seed": seed,
              "queries_per_step": queries_per_step, "sigma": sigma, "lr": lr, "allocator": alloc.name,
              "reward": "variance", "cap": None, "perturb": "output"}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start = 0
    if ckpt is not None and ckpt.exists():
        start, theta = _load_checkpoint(ckpt, config, adam, alloc, mem_var, mem_loss, result)
        result.resumed_from = start
    if eval_fn is not None and start == 0 and not result.evals:
        result.evals.append({"step": 0, "queries": 0, **eval_fn(theta)})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="aligning", unit="step", leave=False, dynamic_ncols=True)
    max_steps = steps if steps is not None else np.iinfo(np.int64).max
    t_start = time.perf_counter()
    step = start
    try:
        while step < max_steps:
            if total_queries is not None and result.queries + queries_per_step > total_queries:
                result.stopped = result.stopped or f"total_queries {total_queries} reached"
                break
            items = batch_items(seed, step, n_items, batch_size)
            counts = alloc.allocate(queries_per_step, batch_size, variances=mem_var[items], losses=mem_loss[items])
            try:
                est = output_gradient(lm, projector.with_theta(theta), h[items], labels[items], task, counts,
                                      sigma=sigma, rng=np.random.default_rng([seed, 2, step]), budget=budget)
            except BudgetExceeded as exc:
                result.stopped = str(exc)
                break
            result.queries += est.queries
            grad, second, item_loss = est.grad.reshape(shape), est.item_variance, est.item_loss
            if alloc.name == "flops":
                alloc.update(variances=second, counts=counts)
            mem_var[items] = second
            mem_loss[items] = item_loss
            theta = adam.step(theta, grad.reshape(-1))
            row = history_row(step, result.queries, item_loss, items, counts, grad, second, batch_size, t_start)
            result.history.append(row)
            step += 1
            if eval_fn is not None and step % eval_every == 0:
                result.evals.append({"step": step, "queries": result.queries, **eval_fn(theta)})
            if ckpt is not None:
                _save_checkpoint(ckpt, config, step, theta, adam, alloc, mem_var, mem_loss, result)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}", queries=result.queries)
    finally:
        if bar is not None:
            bar.close()
    final_eval(result, eval_fn, theta, step)
    result.theta, result.steps = theta, step
    result.seconds = time.perf_counter() - t_start
    return result


def train_backprop(lm, projector: Projector, features: np.ndarray, labels: np.ndarray, task: CaptionTask, *,
                   steps: int, batch_size: int = 16, lr: float = 0.1, seed: int = 0,
                   eval_fn: Callable[[Projector], dict] | None = None, eval_every: int = 10) -> AlignmentResult:
    """The white-box reference: the same projector, batches and Adam, with the exact gradient
    ``dL/dsoft`` from ``lm.nll_and_grad`` (autograd through the LM) instead of LR estimates."""
    if not hasattr(lm, "nll_and_grad"):
        raise InputError("the backprop reference needs a white-box LM with nll_and_grad")
    if task.loss == "ranking":
        word_ids = [lm.single_token(w) for w in task.class_words]
    h = projector.reduce(features)
    labels = np.asarray(labels, dtype=np.int64)
    batch_size = min(batch_size, len(h))
    adam = _Adam(lr)
    theta = projector.theta
    shape = projector.weight.shape
    result = TrainResult(theta=theta)
    t_start = time.perf_counter()
    if eval_fn is not None:
        result.evals.append({"step": 0, "queries": 0, **_metrics(eval_fn(projector))})
    for step in range(steps):
        items = batch_items(seed, step, len(h), batch_size)
        soft = projector.lift(h[items] @ theta.reshape(shape).T)
        text, kw = task.lm_args()
        if task.loss == "ranking":
            values, g = lm.label_loss_and_grad(soft, [text] * batch_size, word_ids, labels[items], **kw)
        else:
            values, g = lm.nll_and_grad(soft, [text] * batch_size, [task.class_words[c] for c in labels[items]],
                                        **kw)
        g = projector.pull(g)
        grad = g.T @ h[items] / batch_size
        theta = adam.step(theta, grad.reshape(-1))
        result.history.append({"step": step + 1, "queries": 0, "loss": float(np.mean(values)),
                               "grad_norm": float(np.linalg.norm(grad)),
                               "seconds": round(time.perf_counter() - t_start, 3)})
        if eval_fn is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            result.evals.append({"step": step + 1, "queries": 0,
                                 **_metrics(eval_fn(projector.with_theta(theta)))})
    result.theta, result.steps = theta, steps
    result.seconds = time.perf_counter() - t_start
    return AlignmentResult(projector.with_theta(theta), result, "backprop", "none")
