"""A saliency map as a composed object: ``Saliency(space, method, estimator, sampler)``.

The parts are made first, the budget goes in the call::

    explainer = Saliency(space=Mask(grid=14), method=METHODS["banzhaf"], estimator=Regression(0.1),
                         sampler=OnePass())
    result = explainer(score, image, queries=500, seed=0)

Any part may be one's own: a space is anything with ``bind(image)`` returning an object that
renders queries (``probe``), has a smoothness ``prior`` and reads values back as a map
(``attribution``), as :class:`~blackbox.saliency.spaces.MaskSpace` does; an estimator subclasses
:class:`~blackbox.estimators.Estimator`; a sampler subclasses
:class:`~blackbox.saliency.samplers.Sampler`. :meth:`Saliency.from_options` builds the parts from
plain names, as the command line and :func:`blackbox.saliency.saliency` give them.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..errors import InputError
from ..estimators import ESTIMATORS, Estimator, Regression
from ..images import ImageView, as_float_image
from ..queries import Budget, QueryRunner
from .methods import METHODS, Method
from .result import SaliencyResult
from .samplers import CoarseToFine, Focus, Job, OnePass, Rationed, Sampler
from .spaces import SPACES, Mask

class Saliency:
    """A saliency method made of parts; call it with a score function, an image and a budget."""

    def __init__(self, space=None, method: Method | None = None, estimator: Estimator | None = None,
                 sampler: Sampler | None = None):
        self.space = space if space is not None else Mask()
        self.method = method if method is not None else _default_method(self.space, sampler)
        self.sampler = sampler if sampler is not None else (self.method.sampler or OnePass)()
        if self.method.sampler is not None and not isinstance(self.sampler, self.method.sampler):
            raise InputError(f"method {self.method.name} is computed by its own sampler "
                             f"({self.method.sampler.name}), not {self.sampler.name}")
        self.estimator = estimator if estimator is not None else self.sampler.default_estimator()

    def check(self, image: np.ndarray, queries: int):
        """The space bound to ``image``, once every part has accepted it and the budget (before
        any query is paid)."""
        if not isinstance(queries, (int, np.integer)) or isinstance(queries, bool) or queries < 2:
            raise InputError(f"queries must be a whole number >= 2, got {queries}")
        space = self.space.bind(as_float_image(image))
        self.sampler.check(space, self.method, int(queries))
        return space

    def __call__(self, score: Callable[[np.ndarray], np.ndarray] | QueryRunner, image: np.ndarray, *,
                 queries: int = 1000, seed: int | None = 0, budget: Budget | None = None, batch_size: int = 32,
                 progress: bool = False, target: object | None = None, view: ImageView | None = None) -> SaliencyResult:
        """Explain ``score`` (images -> one float each) at ``image`` with at most ``queries`` queries.

        ``score`` may be a :class:`QueryRunner` (to share a budget and counters). If a budget runs
        out first, the map of the queries already answered is returned with ``stopped`` set.
        ``target`` and ``view`` (how the working image was cut from the original) are kept in the
        result, which maps itself back to the original with ``view``."""
        space = self.check(image, queries)
        sigma = self.method.noise_scale(space)
        estimator = self.estimator.for_budget(self.sampler.fit_queries(queries, space.dim))
        runner = _runner(score, budget, batch_size)
        if progress:
            runner.start_progress(self.sampler.planned(queries, space.dim), f"saliency ({self.method.name}, {space.name})")
        q0, m0, t0 = runner.record.queries, runner.record.model_seconds, time.perf_counter()
        try:
            job = Job(space, self.method, runner, int(queries), sigma, np.random.default_rng(seed), estimator)
            reading = self.sampler.run(job)
            attribution = space.attribution(self.method, reading.values, reading.stderr)
        finally:
            if progress:
                runner.close()
        est = reading.estimate
        return SaliencyResult(
            map=attribution.pixels, cells=attribution.cells, stderr=attribution.stderr, method=self.method.name,
            space=space.name, estimator=estimator.name, cell_grid=space.grid, blocks=self.sampler.blocks,
            sigma=sigma, signed=attribution.signed, queries=runner.record.queries - q0,
            seconds=time.perf_counter() - t0, model_seconds=runner.record.model_seconds - m0, stopped=est.stopped,
            queries_saved=int(est.extras.get("queries_saved", 0)), allocator=est.extras.get("allocator"),
            focus=self.sampler.share, estimate=est, target=target, view=view)

    @classmethod
    def from_options(cls, *, method: str | None = None, space: str = "mask", estimator: str | None = None,
                     grid: int | tuple[int, int] = 14, blocks: int = 1, sigma: float | None = None,
                     smooth: float | None = None, per_channel: bool = False, control: str = "antithetic",
                     noise: str | None = None, smoothness: float | None = 0.1, baseline: str | np.ndarray = "blur",
                     allocation=None, allocator=None, rounds: int | None = None, target_error: float | None = None,
                     refine: bool = False, focus: float | None = 0.0) -> "Saliency":
        """The parts named by plain options (see :func:`blackbox.saliency.saliency`)."""
        space_part = _space(space, grid, baseline, per_channel)
        method_def = _choose(METHODS, method or space_part.default_method, "method")
        if noise is not None and method_def.sampler is not None:
            raise InputError(f"method {method_def.name} draws its own queries ({method_def.sampler.name}): "
                             "noise does not apply")
        changes = {k: v for k, v in (("sigma", sigma), ("smooth", smooth), ("noise", noise)) if v is not None}
        method_def = method_def if not changes else _replace(method_def, changes)
        sampler = _sampler(method_def, blocks=blocks, allocation=allocation, control=control, allocator=allocator,
                           rounds=rounds, target_error=target_error, refine=refine, focus=focus)
        return cls(space_part, method_def, _estimator(estimator, smoothness, sampler), sampler)


def _default_method(space, sampler: Sampler | None) -> Method:
    """The space's default method; with a sampler of one's own, the space's default among the
    methods that any sampler can draw (the default may be defined by a sampler of its own)."""
    method = METHODS[space.default_method]
    if sampler is not None and method.sampler is not None and not isinstance(sampler, method.sampler):
        method = METHODS[space.open_method]
    return method


def _choose(options: dict, name: str, what: str):
    if name not in options:
        raise InputError(f"unknown {what} {name!r}; choose from {', '.join(options)}")
    return options[name]


def _replace(method: Method, changes: dict) -> Method:
    from dataclasses import replace

    return replace(method, **changes)


def _space(name: str, grid, baseline, per_channel: bool):
    part = _choose(SPACES, name, "space")
    if part is Mask:
        if per_channel:
            raise InputError("mask space has one coordinate per patch; per-channel noise is for pixel space")
        return Mask(grid, baseline)
    return part(grid, baseline, per_channel)


def _estimator(name: str | None, smoothness: float | None, sampler: Sampler) -> Estimator:
    cls = _choose(ESTIMATORS, name or sampler.default_estimator().name, "estimator")
    if cls is Regression:
        if smoothness is not None and smoothness < 0:
            raise InputError(f"smoothness must be >= 0 (or None to choose it by cross-validation), got {smoothness}")
        return Regression(smoothness)
    return cls()


def _sampler(method: Method, *, focus, refine: bool, allocator, rounds, target_error, blocks: int, allocation,
             control: str) -> Sampler:
    """The one sampler the options ask for; options that belong to another sampler are refused."""
    given = {"blocks": blocks != 1, "allocation": allocation is not None, "allocator": allocator is not None,
             "rounds": rounds is not None, "target error": target_error is not None, "refinement": bool(refine),
             "control": control != "antithetic", "focus": bool(focus)}
    if method.sampler is not None:
        _refuse(given, (), f"method {method.name} draws its own queries ({method.sampler.name}): {{}} do not apply "
                "(they go with the methods that take random directions, e.g. banzhaf)")
        return method.sampler()
    if focus:
        sampler = Focus(focus)
        _refuse(given, ("focus",), "focus runs its own two stages: it does not combine with {}")
        return sampler
    if refine:
        _refuse(given, ("allocator", "refinement"), "refine picks its own blocks and rounds: pass only "
                "an allocator with it ({} given)", control="coarse-to-fine refinement uses antithetic pairs")
        return CoarseToFine(allocator or "neyman")
    if given["allocator"] or given["rounds"] or given["target error"]:
        _refuse(given, ("blocks", "allocator", "rounds", "target error"),
                "pass either a fixed allocation or an allocator, not both ({} given)",
                control="rationed (allocated) estimates use antithetic pairs")
        return Rationed(blocks, allocator or "uniform", rounds or 4, target_error)
    return OnePass(blocks, allocation, control)


def _refuse(given: dict, takes: tuple, message: str, control: str | None = None) -> None:
    extra = [name for name, on in given.items() if on and name not in takes]
    if control is not None and extra == ["control"]:
        raise InputError(control)
    if extra:
        raise InputError(message.format(", ".join(extra)))


def _runner(score, budget: Budget | None, batch_size: int) -> QueryRunner:
    if isinstance(score, QueryRunner):
        if budget is not None:
            raise InputError("pass the budget to the QueryRunner, not to saliency()")
        return score
    return QueryRunner(score, budget=budget, batch_size=batch_size)
