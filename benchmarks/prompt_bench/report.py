"""The prompt-tuning benchmark's tables, from its cells (one per task, method and seed).

Intervals as everywhere in the benchmarks (:mod:`benchmarks.harness`): means over seeds with a
95% Student-t interval, differences paired seed by seed; and, because every method is scored on
the same fixed held-out rows, the paired difference over rows too (per-row correctness averaged
over the seeds), which is the held-out set's own noise. Cost is the run's tokens priced as if a
hosted model (gpt-4o-mini, from the project's price table) had been asked the same.
"""
from __future__ import annotations

import numpy as np

from benchmarks.harness import mean_ci, rows_ci, show

PRICED_AS = "gpt-4o-mini"


def _price(prompt_tokens: float, completion_tokens: float) -> float | None:
    from blackbox.adapters.remote.pricing import PriceTable

    return PriceTable.load(None).cost(PRICED_AS, int(prompt_tokens), int(completion_tokens))


def _correct(cells: list[dict], key: str) -> dict[int, np.ndarray]:
    return {c["seed"]: np.array([ch == "1" for ch in c["heldout"][key]["correct"]], dtype=float)
            for c in cells if key in c["heldout"]}


def _diff_cells(mine: dict, ref: dict) -> tuple[str, str]:
    """``(over seeds, over rows)`` cells of the difference mine - ref on the seeds both have."""
    seeds = sorted(set(mine) & set(ref))
    if not seeds or mine is ref:
        return "", ""
    by_seed = [mine[s].mean() - ref[s].mean() for s in seeds]
    rows = rows_ci(np.mean([mine[s] for s in seeds], 0), np.mean([ref[s] for s in seeds], 0))
    return show(mean_ci(by_seed), 3), show(rows, 3)


def accuracy_table(cells: list[dict], key: str, title: str) -> list[str]:
    """Held-out accuracy per method at one budget, and its differences from zero-shot and from the
    random demonstration sets."""
    methods = list(dict.fromkeys(c["method"] for c in cells))
    scored = {m: _correct([c for c in cells if c["method"] == m], key) for m in methods}
    lines = [f"**{title}**", "",
             "| method | seeds | held-out accuracy | - zero-shot (seeds) | - zero-shot (rows) "
             "| - random demos (seeds) | - random demos (rows) |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        if not scored[m]:
            continue
        acc = show(mean_ci([v.mean() for v in scored[m].values()]), 3)
        zs = _diff_cells(scored[m], scored.get("zero-shot", {}))
        rd = _diff_cells(scored[m], scored.get("random-demos", {}))
        lines.append(f"| {m} | {len(scored[m])} | {acc} | {zs[0]} | {zs[1]} | {rd[0]} | {rd[1]} |")
    return lines + [""]


def cost_table(cells: list[dict]) -> list[str]:
    """What the runs spent (mean over seeds), and the wall time per request the server answered."""
    lines = ["| method | runs | metric calls | LM calls | paid here | prompt tokens | completion tokens "
             f"| $ as {PRICED_AS} | run s | s per paid call | notes (first run) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in dict.fromkeys(c["method"] for c in cells):
        runs = [c["run"] for c in cells if c["method"] == m]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in
                ("metric_calls", "lm_calls", "paid_requests", "prompt_tokens", "completion_tokens", "seconds")}
        cost = _price(mean["prompt_tokens"], mean["completion_tokens"])
        paid = sum(r["paid_requests"] for r in runs)
        per_call = f"{sum(r['seconds'] for r in runs) / paid:.2f}" if paid else "-"
        lines.append(f"| {m} | {len(runs)} | {mean['metric_calls']:.0f} | {mean['lm_calls']:.0f} | "
                     f"{mean['paid_requests']:.0f} | {mean['prompt_tokens']:.0f} | {mean['completion_tokens']:.0f} | "
                     f"{'-' if cost is None else f'{cost:.4f}'} | {mean['seconds']:.0f} | {per_call} | "
                     f"{'; '.join(f'{k}: {v}' for k, v in runs[0]['notes'].items())} |")
    return lines + [""]


def heldout_timing(cells: list[dict]) -> str:
    """Wall time per held-out request the server answered, over every held-out scoring."""
    scored = [h for c in cells for h in c["heldout"].values()]
    paid, seconds = sum(h["paid"] for h in scored), sum(h["seconds"] for h in scored)
    tokens = sum(h["prompt_tokens"] + h["completion_tokens"] for h in scored)
    if not paid:
        return "Held-out scoring: every answer came from the cache."
    return (f"Held-out scoring: {paid} requests answered by the server in {seconds:.0f} s "
            f"({seconds / paid:.2f} s each); {tokens} tokens over all held-out scorings, cached or not.")


def machine_load(info: dict) -> str:
    """The load average around the runs; tables combined from part files say so instead (the runs'
    own seconds are in the spending table)."""
    if info["settings"].get("combine"):
        return "; tables combined from the part files (each run's seconds are in its spending row)"
    return f", load average {info['load_average_at_start']:.1f} at the start, {info['load_average_at_end']:.1f} at the end"


def report_lines(cells: list[dict], info: dict) -> list[str]:
    s = info["settings"]
    smoke = " - SMOKE RUN: tiny budgets and sets, a check of the pipeline, not a measurement" if s.get("smoke") else ""
    lines = [f"# Prompt tuning at equal metric calls (issue #33){smoke}", "",
             f"Model: Qwen2.5-Coder-1.5B-Instruct Q4_K_M (llama.cpp server, 2 threads) over /v1/chat/completions. "
             f"Budgets {s['budgets']} metric calls (checkpoints of one run per task, method and seed), seeds "
             f"{s['seeds']}, {s['train']} training + {s['val']} validation rows per seed, the first {s['heldout']} "
             f"rows of each task's fixed held-out set. {info['cores']} cores{machine_load(info)}.", ""]
    for name, t in info["tasks"].items():
        mine = [c for c in cells if c["task"] == name]
        if not mine:
            continue
        lines += [f"## {name}: {', '.join(t['labels'])} ({t['heldout_rows']} held-out rows; data: {t['source']})", ""]
        keys = sorted({k for c in mine for k in c["heldout"]},
                      key=lambda k: (k.startswith("own"), 0 if k.startswith("own") else int(k.split("@")[0])))
        for key in keys:
            budget = key.split("@")[0]
            title = ("at the metric calls each run spent (more than the largest budget)" if budget == "own"
                     else f"{budget} metric calls")
            lines += accuracy_table(mine, key, title)
        lines += ["**What the runs spent** (to the largest budget)", ""] + cost_table(mine)
    return lines + [heldout_timing(cells), ""]
