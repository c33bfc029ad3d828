"""Many images in one call: :func:`explain_many`, one result per image and a summary table.

Images are explained one per task by an executor (``serial``, a local process ``pool`` or
``ray``; see :mod:`blackbox.many.executors`), all drawing on one shared budget. With ``out_dir`` the
run is resumable: each finished image is written there at once (``NAME.json`` + ``NAME.npz``,
atomically), a rerun skips the images already done, and a remote model's query cache makes
the images that were interrupted half-way free up to where they stopped.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .results import BatchResult, ImageResult, ResultsFolder
from ..errors import BlackboxError, InputError, ModelError
from .executors import EXECUTORS, Job, ModelHandle, ProcessPool, SerialExecutor, task_for
from ..images import load_image
from ..queries import Budget
from ..saliency import PRIOR_QUERIES, Saliency

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_ATTEMPTS = 3  # tries per image when workers die under it


# -- inputs ---------------------------------------------------------------------------------------
@dataclass
class ImageItem:
    """One input image: a name (unique in the run), where it came from and a content hash."""

    name: str
    source: str | None          # the file (None for an array given in memory)
    digest: str                 # sha256 of the file bytes (or of the array)
    target: Any = None
    array: np.ndarray | None = field(default=None, repr=False)

    def pixels(self) -> np.ndarray:
        """What travels to a worker: a file as ``(H, W, 3)`` uint8 (exactly what it holds), an
        array as given (uint8, or float32 in [0, 1])."""
        from ..images import as_float_image

        if self.array is not None:
            return self.array if self.array.dtype == np.uint8 else as_float_image(self.array)
        return np.round(load_image(self.source) * 255.0).astype(np.uint8)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def collect_images(images, targets=None) -> list[ImageItem]:
    """Files, folders (their image files, sorted, not recursive), arrays, or a ``{name: image}``
    mapping, as uniquely named items; ``targets`` is one target for all, a list or a mapping."""
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    named = list(images.items()) if isinstance(images, dict) else [(None, im) for im in images]
    items: list[ImageItem] = []
    for name, image in named:
        if isinstance(image, np.ndarray):
            items.append(ImageItem(name or f"image-{len(items):03d}", None,
                                   _digest(np.ascontiguousarray(image).tobytes()), array=image))
            continue
        path = os.fspath(image)
        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES)
                           and os.path.isfile(os.path.join(path, f)))
            if not files:
                raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            items += [_file_item(os.path.join(path, f), None) for f in files]
        else:
            items.append(_file_item(path, name))
    if not items:
        raise InputError("no images given")
    items = _unique(items)
    _assign_targets(items, targets)
    return items


def _file_item(path: str, name: str | None) -> ImageItem:
    if not os.path.exists(path):
        raise InputError(f"image not found: {path}")
    try:
        with open(path, "rb") as fh:
            digest = _digest(fh.read())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return ImageItem(name or Path(path).stem, os.path.abspath(path), digest)


def _unique(items: list[ImageItem]) -> list[ImageItem]:
    """Drop repeats of the same image under the same name; tell same-named images apart."""
    seen, out = set(), []
    for item in items:
        if (item.name, item.digest) not in seen:
            seen.add((item.name, item.digest))
            out.append(item)
    counts = Counter(item.name for item in out)
    for item in out:
        if counts[item.name] > 1:
            item.name = f"{item.name}-{item.digest[:8]}"
    return out


def _assign_targets(items: list[ImageItem], targets) -> None:
    if isinstance(targets, dict):
        unknown = set(targets) - {item.name for item in items}
        if unknown:
            raise InputError(f"targets given for images not in the run: {', '.join(sorted(map(str, unknown)))}")
        for item in items:
            item.target = targets.get(item.name)
    elif isinstance(targets, (list, tuple)):
        if len(targets) != len(items):
            raise InputError(f"{len(targets)} targets for {len(items)} images")
        for item, target in zip(items, targets):
            item.target = target
    else:
        for item in items:
            item.target = targets


# -- the whole run ---------------------------------------------------------------------------------
def run_settings(model_description: dict, queries: int, options: dict, faithfulness: int | None) -> dict:
    """What must match for a stored result to be reused: the options as given, with the method
    they resolve to named (a folder made with another default method is not reused). Above
    ``PRIOR_QUERIES`` the smoothness prior fades (:func:`blackbox.saliency.prior_weight`), so such
    runs say so: a folder of maps made before it faded is not mixed with new ones."""
    settings = {"model": model_description, "queries": int(queries), "faithfulness": faithfulness,
                **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in sorted(options.items())}}
    if settings.get("method") is None:
        parts = {k: v for k, v in options.items() if k != "seed"}
        settings["method"] = Saliency.from_options(**parts).method.name
    if queries > PRIOR_QUERIES:
        settings["prior_fades_above"] = PRIOR_QUERIES
    return settings


def explain_many(
    images: str | os.PathLike | np.ndarray | Iterable | dict,
    model,
    *,
    queries: int = 1000,
    targets=None,
    budget: Budget | None = None,
    out_dir: str | os.PathLike | None = None,
    executor: str | Any = "serial",
    workers: int | None = None,
    address: str | None = None,
    faithfulness: bool | int = False,
    overlays: bool = False,
    progress: bool = True,
    batch: bool = False,
    **options,
) -> BatchResult:
    """Explain every image in ``images`` with ``queries`` queries each; one shared ``budget``.

    ``images``: files, folders (their image files), ``(H, W, 3)`` arrays, or ``{name: image}``.
    ``model``: an image model (serial runs), or a model *description* that each worker rebuilds:
    ``blackbox.adapters.model_spec("efficientnet-lite0")`` (or any picklable object with a
    ``build(budget=, cache=, share=, threads=)`` method, or a picklable zero-argument function
    that returns a model). ``targets``: None (each image's top class), one target for all, a list,
    or ``{name: target}``. ``budget``: caps (queries, tokens, money) over the whole run, which
    no worker can pass. ``out_dir``: write each image as it finishes and skip, on a rerun, the
    images already done. ``executor``: ``serial`` (default), ``pool`` (local processes, one
    intra-op thread each) or ``ray`` (``address`` of a cluster; default: start a local one).
    ``faithfulness``: also measure deletion/insertion AUCs (True: 20 steps; an int: that many),
    paid from the same budget. ``batch``: send the queries through the model's batch interface
    (OpenAI's Batch API, half price): every image runs until its first stage that needs answers,
    then what all of them collected goes out as one batch, and so on (serial executor only: the
    provider runs the batch). Other ``options`` go to :func:`blackbox.saliency` (``method``,
    ``space``, ``grid``, ``seed``...): each image is explained as ``blackbox.explain`` would
    explain it alone, with the same seed, so the maps do not depend on the executor.
    """
    if not isinstance(queries, (int, np.integer)) or queries < 2:
        raise InputError(f"queries must be a whole number >= 2, got {queries}")
    for reserved in ("budget", "batch_size", "progress"):
        if reserved in options:
            raise InputError(f"explain_many sets {reserved!r} itself")
    steps = (20 if faithfulness is True else int(faithfulness)) if faithfulness else None
    items = collect_images(images, targets)
    handle = ModelHandle.of(model)
    runner = make_executor(executor, workers=workers, address=address, handle=handle, batch=batch)
    settings = run_settings(handle.describe(), queries, options, steps)
    folder = ResultsFolder(out_dir) if out_dir is not None else None
    started = time.perf_counter()
    interrupted = None
    try:
        results = _finished(folder, items, settings)
        job = Job.create(handle, budget, folder, queries=queries, options=options, faithfulness=steps,
                         progress=progress and runner.name == "serial", batch=batch)
        try:
            runner.start(job)
            todo = [item for item in items if item.name not in results]
            interrupted = _drive(runner, job, todo, results, folder, settings, overlays, progress)
        except KeyboardInterrupt:
            interrupted = "interrupted"
            raise
        finally:
            runner.close()
            spent = job.finish(budget)
            for item in items:  # images never started (budget exhausted, or interrupted)
                results.setdefault(item.name, ImageResult(item.name, item.source, item.digest, "pending",
                                                          item.target, error=interrupted))
            outcome = BatchResult([results[i.name] for i in items], spent, time.perf_counter() - started,
                                  runner.name, runner.slots, settings, str(folder.path) if folder else None,
                                  interrupted)
            if folder is not None:
                folder.save_summary(outcome.summary())
        return outcome
    finally:
        if folder is not None:
            folder.close()


def _finished(folder, items: list[ImageItem], settings: dict) -> dict[str, ImageResult]:
    """The images a results folder already holds with these settings (a resumed run skips them)."""
    results: dict[str, ImageResult] = {}
    for item in items if folder is not None else ():
        done = folder.finished(item, settings)
        if done is not None:
            results[item.name] = done
    return results


def make_executor(executor, *, workers: int | None = None, address: str | None = None, handle: ModelHandle,
                  batch: bool = False):
    """An executor from its name (or the object itself); a batched run is serial."""
    if batch and getattr(executor, "name", executor) != "serial":
        raise InputError("--batch sends the whole run as batches from this process: use the serial executor "
                         "(the provider runs the batch; local workers add nothing)")
    if not isinstance(executor, str):
        return executor
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor != "serial" and not handle.picklable:
        raise InputError(f"executor {executor!r} rebuilds the model in each worker: pass a model description, "
                         "e.g. blackbox.adapters.model_spec('efficientnet-lite0'), not a built model")
    if address is not None and executor != "ray":
        raise InputError("address is for executor='ray'")
    if executor == "serial":
        if workers not in (None, 1):
            raise InputError("a serial run has one worker")
        return SerialExecutor()
    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if executor == "pool":
        return ProcessPool(workers)
    from .ray_executor import RayExecutor  # imports ray: only when asked for

    return RayExecutor(address=address, workers=workers)


def _drive(runner, job, todo: Sequence[ImageItem], results: dict, folder, settings, overlays, progress):
    """Keep the workers busy, write each result as it arrives, retry images whose worker died. In
    a batched run, images that stop at a stage wait; once none is running, what they collected goes
    out as one batch (:meth:`SerialExecutor.send_batch`) and they run again.

    Returns why the run stopped short (budget), or None."""
    run = _Drive(deque(todo), results, folder, settings, overlays, _bar(progress, len(todo), "images", "img"))
    queries_bar = _bar(progress and runner.name != "serial", len(todo) * job.queries_per_image, "queries", "q")
    spent_at_start = job.ledger_queries()
    try:
        while run.pending or run.running or run.waiting:
            if run.waiting and not run.pending and not run.running and run.stop_reason is None:
                runner.send_batch(progress)
                run.pending.extend(run.waiting)
                run.waiting.clear()
            run.submit(runner)
            if not run.running:
                break
            done, _ = wait(list(run.running), timeout=0.5, return_when=FIRST_COMPLETED)
            if queries_bar is not None:  # what the workers spent, read from the shared ledger
                queries_bar.n = min(queries_bar.total, job.ledger_queries() - spent_at_start)
                queries_bar.refresh()
            crashed = False
            for future in done:
                crashed |= run.take(future, runner, job)
            if crashed:
                run.fruitless_crashes += 1
                if run.fruitless_crashes >= MAX_ATTEMPTS:
                    raise ModelError(f"the {runner.name} workers keep dying before they finish an image"
                                     f"{getattr(runner, 'crash_hint', '')}")
        return run.stop_reason
    finally:
        for bar in (run.images_bar, queries_bar):
            if bar is not None:
                bar.close()


@dataclass
class _Drive:
    """The state of :func:`_drive`: images to start, running, waiting for a batch; why it stops."""

    pending: deque
    results: dict
    folder: Any
    settings: dict
    overlays: bool
    images_bar: Any
    running: dict = field(default_factory=dict)
    waiting: list = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)
    stop_reason: str | None = None
    fruitless_crashes: int = 0  # worker deaths since an image last finished

    def submit(self, runner) -> None:
        """Start images while the workers have room (an unreadable file fails its image only)."""
        while self.pending and self.stop_reason is None and len(self.running) < runner.queue:
            item = self.pending.popleft()
            self.attempts[item.name] += 1
            try:
                task = task_for(item, f"{item.name}#{self.attempts[item.name]}")
            except InputError as exc:
                self.results[item.name] = ImageResult(item.name, item.source, item.digest, "failed",
                                                      item.target, error=str(exc))
                _tick(self.images_bar)
                continue
            self.running[runner.submit(task)] = (item, task)

    def take(self, future, runner, job) -> bool:
        """One finished task: its result written, its image retried or waiting; True if its worker died."""
        item, task = self.running.pop(future)
        try:
            result = future.result()
        except runner.crash_errors:  # the worker died: what it held counts as spent
            job.reclaim(task.owner)
            if self.attempts[item.name] < MAX_ATTEMPTS:
                self.pending.appendleft(item)
            else:
                self.results[item.name] = ImageResult(item.name, item.source, item.digest, "failed", item.target,
                                                      error=f"the worker died {MAX_ATTEMPTS} times on this image")
                _tick(self.images_bar)
            return True
        if result.status == "error":  # the model or endpoint cannot work: stop the run
            kind = {"InputError": InputError, "ModelError": ModelError}.get(result.details.get("kind"))
            raise (kind or BlackboxError)(result.error)
        if result.status == "waiting":
            self.waiting.append(item)
            return False
        if result.status == "stopped":
            self.stop_reason = self.stop_reason or result.error
        self.results[item.name] = result
        self.fruitless_crashes = 0
        if self.folder is not None:
            if result.status == "done":
                self.folder.save(result, self.settings)
            if self.overlays and result.map is not None:
                self.folder.save_overlay(result, task.pixels if item.source is None else None)
        _tick(self.images_bar)
        return False


def _bar(show: bool, total: int, what: str, unit: str):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True)


def _tick(bar) -> None:
    if bar is not None:
        bar.update(1)
