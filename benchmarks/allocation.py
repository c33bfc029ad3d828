"""Query allocation benchmark on the real soft-prompt task (embedded SmolLM2-135M).

(a) Variance of the combined LR gradient at equal budget, uniform vs Neyman vs FLOPS: every
    training example's antithetic-pair terms are measured on the real model (a pool per item);
    repeated draws resample each item's pool (bootstrap), so every allocator sees the same real
    per-item losses. Neyman uses variances from a separate pilot; FLOPS is first trained on the
    stream (item losses as features, variance-efficiency reward).
(b) Held-out accuracy / label NLL against training queries for prompt tuning per allocator.
(c) CMA-ES (``cma``) and MeZO-style SPSA (one shared perturbation per batch) at the same budget.

    python benchmarks/allocation.py [--quick]

Writes benchmarks/results/allocation.json and allocation.md (tables as printed).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from blackbox.allocators import make_allocator  # noqa: E402
from blackbox.forward_learning import _Adam, batch_items  # noqa: E402
from blackbox.prompt_tuning import SoftPromptSpace, evaluate, soft_prompt_loss, tune_soft_prompt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def setup(seed=0, per_class=12):
    from blackbox.adapters.lm_prompting import embedded_prompt_queries
    from blackbox.adapters.text_tasks import imagenet_description_task

    task = imagenet_description_task(per_class=per_class, max_words=12, seed=seed)
    task.template = "{text}\nAnswer:"
    q = embedded_prompt_queries(task.label_words)
    space = SoftPromptSpace(q.init_soft(4, " The animal is a"), rank=16, scale=q.lm.embedding_scale(), seed=seed)
    return task, q, space


def variance_part(task, q, space, pairs=6, sigma=0.5, batch=8, budget=32, draws=2000, seed=0):
    loss = soft_prompt_loss(q.label_logprobs, space, task)
    n = len(task.train_texts)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, pairs, space.dim)) * sigma
    items = np.repeat(np.arange(n), pairs)
    flat = z.reshape(-1, space.dim)
    values = loss(np.concatenate([flat, -flat]), np.concatenate([items, items]))
    fp, fm = values[: len(flat)].reshape(n, pairs), values[len(flat):].reshape(n, pairs)
    terms = ((fp - fm) / (2 * sigma ** 2))[:, :, None] * z            # (n, pairs, dim)
    item_loss = ((fp + fm) / 2).mean(1)
    per_query_var = terms.var(1, ddof=1).sum(1) * 2                   # per query (pair = 2 queries)
    pilot = (terms[:, :2] ** 2).sum(2).mean(1) * 2 / 2                # a 2-pair pilot (second moment)
    flops = make_allocator("flops", floor=2, unit=2, seed=seed)
    for t in range(300):                                               # learn on the stream
        b = rng.choice(n, batch, replace=False)
        c = flops.allocate(budget, batch, losses=item_loss[b])
        flops.update(variances=per_query_var[b], counts=c)
    results = {}
    for name in ("uniform", "neyman", "flops"):
        alloc = flops if name == "flops" else make_allocator(name, floor=2, unit=2, seed=seed)
        analytic, samples = [], []
        for d in range(draws):
            b = rng.choice(n, batch, replace=False)
            c = alloc.allocate(budget, batch, variances=pilot[b], losses=item_loss[b])
            analytic.append(np.sum(per_query_var[b] / c) / batch ** 2)
            est = np.mean([terms[i, rng.integers(0, pairs, ci // 2)].mean(0) for i, ci in zip(b, c)], axis=0)
            samples.append(est - terms[b].mean(1).mean(0))  # error given the batch (pool means)
        samples = np.array(samples)
        results[name] = {"analytic_variance": float(np.mean(analytic)),
                         "bootstrap_variance": float(np.mean(np.sum(samples ** 2, 1)))}
    base = results["uniform"]
    for r in results.values():
        r["analytic_ratio"] = r["analytic_variance"] / base["analytic_variance"]
        r["bootstrap_ratio"] = r["bootstrap_variance"] / base["bootstrap_variance"]
    spread = float(np.sqrt(per_query_var).std() / np.sqrt(per_query_var).mean())
    return results, {"items": n, "pairs_per_item": pairs, "batch": batch, "budget_per_step": budget,
                     "draws": draws, "cv_of_item_std": spread, "flops_params": flops.params,
                     "pool_queries": int(len(values))}


def spsa(task, q, space, total, batch=8, sigma=0.5, lr=0.3, seed=0, eval_every=None):
    loss = soft_prompt_loss(q.label_logprobs, space, task)
    theta, adam, spent, step = np.zeros(space.dim), _Adam(lr), 0, 0
    while spent + 2 * batch <= total:
        items = batch_items(seed, step, len(task.train_texts), batch)
        z = np.random.default_rng([seed, 5, step]).standard_normal(space.dim) * sigma
        rows = np.concatenate([np.repeat((theta + z)[None], batch, 0), np.repeat((theta - z)[None], batch, 0)])
        v = loss(rows, np.concatenate([items, items]))
        spent += 2 * batch
        theta = adam.step(theta, (v[:batch].mean() - v[batch:].mean()) / (2 * sigma ** 2) * z)
        step += 1
    return theta, spent


def cmaes(task, q, space, total, batch=8, sigma=0.5, seed=0):
    import cma

    loss = soft_prompt_loss(q.label_logprobs, space, task)
    es = cma.CMAEvolutionStrategy(np.zeros(space.dim), sigma, {"seed": seed + 1, "verbose": -9})
    spent, gen = 0, 0
    while spent + es.popsize * batch <= total:
        xs = es.ask()
        items = batch_items(seed, gen, len(task.train_texts), batch)
        rows = np.repeat(np.array(xs), batch, 0)
        v = loss(rows, np.tile(items, len(xs))).reshape(len(xs), batch).mean(1)
        spent += len(rows)
        es.tell(xs, v.tolist())
        gen += 1
    return np.asarray(es.result.xfavorite), spent


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer steps (for a loaded 2-core machine)")
    p.add_argument("--skip-tuning", action="store_true")
    p.add_argument("--budget", type=int, default=32, help="queries per step in part (a) (default 32)")
    p.add_argument("--pairs", type=int, default=6, help="antithetic pairs measured per item in part (a)")
    p.add_argument("--tag", default="", help="suffix for the result files")
    args = p.parse_args()
    steps = 20 if args.quick else 40
    qps = 32
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"settings": {"steps": steps, "queries_per_step": qps, "batch": 8, "rank": 16, "soft_tokens": 4,
                        "sigma": 0.5, "lr": 0.3}}
    lines = []

    def emit(line=""):
        print(line, flush=True)
        lines.append(line)

    def save():
        (RESULTS / f"allocation{args.tag}.json").write_text(json.dumps(out, indent=1))
        (RESULTS / f"allocation{args.tag}.md").write_text("\n".join(lines) + "\n")

    t0 = time.time()
    task, q, space = setup()
    emit(f"task: {task.summary()}")
    res, info = variance_part(task, q, space, pairs=args.pairs, budget=args.budget)
    out["variance"] = {"results": res, "info": info}
    emit(f"\n(a) combined-gradient variance at equal budget ({args.budget} queries over 8 items per step)")
    emit("| allocator | analytic var | ratio | bootstrap var | ratio |")
    emit("|---|---|---|---|---|")
    for name, r in res.items():
        emit(f"| {name} | {r['analytic_variance']:.4g} | {r['analytic_ratio']:.3f} | "
             f"{r['bootstrap_variance']:.4g} | {r['bootstrap_ratio']:.3f} |")
    emit(f"item std spread (coefficient of variation of sqrt V_i): {info['cv_of_item_std']:.3f}; "
         f"pool: {info['pool_queries']} real queries; FLOPS params {info['flops_params']}")
    save()
    if args.skip_tuning:
        return
    total = steps * qps
    emit(f"\n(b, c) prompt tuning at {total} training queries (held-out {len(task.test_texts)} examples)")
    emit("| method | acc before | acc after | label NLL before | label NLL after | queries | curve (queries: acc) |")
    emit("|---|---|---|---|---|---|---|")
    out["tuning"] = {}
    for name in ("uniform", "neyman", "flops"):
        r = tune_soft_prompt(q.label_logprobs, task, space, steps=steps, batch_size=8, queries_per_step=qps,
                             sigma=0.5, lr=0.3, allocator=name, seed=0, eval_every=max(1, steps // 4))
        curve = [(e["queries"], round(e["accuracy"], 3), round(e["label_nll"], 3)) for e in r.evals]
        out["tuning"][name] = {**r.summary(), "before": r.before, "after": r.after, "curve": curve,
                               "loss_curve": [(h["queries"], h["loss"]) for h in r.history]}
        emit(f"| LR + {name} | {r.before['accuracy']:.3f} | {r.after['accuracy']:.3f} | "
             f"{r.before['label_nll']:.3f} | {r.after['label_nll']:.3f} | {r.train_queries} | "
             f"{' '.join(f'{c[0]}:{c[1]}' for c in curve)} |")
        save()
    before = evaluate(q.label_logprobs, space.soft(np.zeros(space.dim)), task)
    for name, fn in (("MeZO-style SPSA", spsa), ("CMA-ES", cmaes)):
        theta, spent = fn(task, q, space, total)
        after = evaluate(q.label_logprobs, space.soft(theta), task)
        out["tuning"][name] = {"before": before, "after": after, "train_queries": spent}
        emit(f"| {name} | {before['accuracy']:.3f} | {after['accuracy']:.3f} | {before['label_nll']:.3f} | "
             f"{after['label_nll']:.3f} | {spent} | |")
        save()
    emit(f"\ntotal wall time {time.time() - t0:.0f} s")
    save()


if __name__ == "__main__":
    sys.exit(main())
