"""The one pipeline from a model and a photo to a saliency map.

The command line, :func:`blackbox.explain`, :func:`blackbox.explain_many` and every executor's
workers explain an image through :func:`explain_image`:

1. the model's view of the photo (the crop and size it looks at) gives the working image;
2. the saliency parts accept the working image and the budget (before anything is paid);
3. the target is resolved and, for a classifier, its top classes read;
4. the model probes what the endpoint supports (one paid request for a remote model);
5. ``queries`` billable requests become the map's queries (after the probe, at the model's
   requests per image), so a rerun asks for the same images whatever the cache holds;
6. the map, every query through one :class:`~blackbox.queries.QueryRunner` on the budget;
7. optionally its deletion and insertion curves, paid from the same budget.

Batch mode (``batch=True``; a paid endpoint with a batch interface: OpenAI's Batch API bills half
price): the model collects the queries instead of sending them and answers placeholders; the run
stops at its first stage boundary that follows a placeholder (:class:`~blackbox.queries.StagePending`:
between the stages of an adaptive sampler, after the map, after the curves), the collected
queries go out as one batch, and the run starts again, answered from the cache, until it ends
with nothing collected (:func:`in_batches`). Same requests, same seed, same answers: the map is
the one the synchronous run draws, for one batch per stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, TypeVar

import numpy as np

from ..errors import InputError, ModelError
from ..models import ImageModel, Target, as_image_model
from ..queries import Budget, QueryRunner, StagePending
from .compose import Saliency
from .metrics import deletion_insertion
from .result import SaliencyResult

T = TypeVar("T")


@dataclass
class Explanation:
    """One photo explained: the map, what it explains, the model's top classes for the photo, and
    (when asked) the map's deletion and insertion AUCs."""

    result: SaliencyResult
    target: Target
    top5: list
    map_queries: int
    faithfulness: dict | None = None

    @property
    def stopped_by_budget(self) -> bool:
        return self.result.stopped is not None and not self.result.queries_saved


def explain_image(model, original: np.ndarray, *, target=None, queries: int = 1000,
                  explainer: Saliency | None = None, seed: int | None = 0, budget: Budget | None = None,
                  progress: bool = False, faithfulness: int | None = None, batch: bool = False) -> Explanation:
    """Explain ``original`` (an ``(H, W, 3)`` photo, uint8 or float in [0, 1]) on ``model`` with at most ``queries``
    billable requests (the probe included) from ``budget``; ``explainer`` defaults to the default
    :class:`Saliency`. ``faithfulness`` (a number of steps) also measures deletion and insertion.
    ``batch``: send the queries through the model's batch interface, one batch per stage."""
    model = as_image_model(model)
    run = partial(explain_once, model, original, target=target, queries=queries, explainer=explainer, seed=seed,
                  budget=budget, progress=progress, faithfulness=faithfulness)
    return in_batches(model, run, progress) if batch else run()


def in_batches(model: ImageModel, run: Callable[[], T], progress: bool = True) -> T:
    """``run()`` in batch mode: each time it stops at a stage that needs answers still to come,
    the collected requests go out as one batch and ``run()`` starts again (answered from the cache)."""
    model.collect(True)
    try:
        while True:
            try:
                return run()
            except StagePending:
                if model.send_batch(progress) == 0:
                    raise ModelError(f"{model.name} answered placeholders but collected no request to send") from None
    finally:
        model.collect(False)


def explain_once(model: ImageModel, original: np.ndarray, *, target=None, queries: int = 1000,
                 explainer: Saliency | None = None, seed: int | None = 0, budget: Budget | None = None,
                 progress: bool = False, faithfulness: int | None = None) -> Explanation:
    """One pass of :func:`explain_image` (in batch mode it may stop with StagePending)."""
    explainer = explainer if explainer is not None else Saliency()
    view = model.view(*original.shape[:2])
    working = view.to_working(original)
    space = explainer.check(working, queries)
    target = model.resolve_target(target, working)
    top5 = model.top_k(working, 5)
    model.probe(working, target)
    map_queries = model.queries_within(queries)
    if map_queries != queries:
        _enough_after_probe(explainer, working, queries, map_queries, model)
    runner = QueryRunner(model.score_fn(target), budget=budget, batch_size=model.query_batch_size)
    runner.on_stage = model.stage_gate()
    result = explainer(runner, working, queries=map_queries, seed=seed, progress=progress, target=target, view=view)
    runner.stage()  # the curves ask about the map
    explanation = Explanation(result, target, top5, map_queries)
    if faithfulness and not explanation.stopped_by_budget:
        explanation.faithfulness = _faithfulness(model, target, working, space.baseline, result, runner.budget,
                                                 faithfulness)
        runner.stage()
    return explanation


def _enough_after_probe(explainer: Saliency, working, queries: int, map_queries: int, model: ImageModel) -> None:
    try:
        explainer.check(working, map_queries)
    except InputError as exc:
        raise InputError(f"{queries} queries leave {map_queries} map queries after the probe at "
                         f"{model.requests_per_query} request(s) per query: {exc}; raise the queries") from None


def _faithfulness(model: ImageModel, target: Target, working, baseline: np.ndarray, result: SaliencyResult,
                  budget: Budget, steps: int) -> dict:
    """Deletion and insertion of the target's probability, cells removed into the space's baseline."""
    prob = QueryRunner(model.score_fn(target, "prob"), budget=budget, batch_size=model.query_batch_size)
    return deletion_insertion(prob, working, result.map, baseline, cells=result.grid[0], steps=steps).as_dict()
