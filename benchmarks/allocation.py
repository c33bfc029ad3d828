"""Query allocation benchmark on the real soft-prompt task (embedded SmolLM2-135M).

(a) Variance of the combined LR gradient at equal budget, uniform vs Neyman vs FLOPS: every
    training example's antithetic-pair terms are measured on the real model (a pool per item);
    repeated draws resample each item's pool (bootstrap), so every allocator sees the same real
    per-item losses. Neyman uses variances from a separate pilot; FLOPS is first trained on the
    stream (item losses as features, variance-efficiency reward).
(b) Held-out accuracy / label NLL against training queries for prompt tuning per allocator.
(c) CMA-ES (``cma``) and MeZO-style SPSA (one shared perturbation per batch) at the same budget.

    python benchmarks/allocation.py [--quick] [--budget 256] [--batch 32] [--steps 40]

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

from blackbox import tasks  # noqa: E402
from blackbox.allocators import make_allocator  # noqa: E402
from blackbox.forward_learning import Asked, ParameterNoise, batch_items, train  # noqa: E402
from blackbox.prompt_tuning import (backprop_soft_prompt, evaluate, soft_prompt_loss,  # noqa: E402
                                    tune_soft_prompt)

UNINFORMATIVE_INIT = tasks.UNINFORMATIVE_INIT

RESULTS = Path(__file__).parent / "results"


def setup(seed=0):
    """The shared soft-prompt task: 4 soft tokens after 'Answer:' from an uninformative phrase
    (zero-shot ~ chance, so the prompt has to learn the question), rank-16 subspace."""
    from blackbox.adapters.causal_lm import load_causal_lm

    task = tasks.animal_task(tasks.SOFT_TEMPLATE, seed=seed)
    queries, space = tasks.soft_prompt_setup(load_causal_lm(), task, seed=seed)
    return task, queries, space


def variance_part(task, q, space, pairs=6, sigma=0.5, batch=8, budget=32, draws=2000, seed=0):
    """Neyman allocates from a 2-pair pilot per item (its previous visit); the oracle row uses the
    pool's variances, the best any allocator could do with these items (the bound of the method)."""
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
    for name in ("uniform", "neyman", "flops", "neyman (oracle V_i)"):
        alloc = flops if name == "flops" else make_allocator(name.split()[0], floor=2, unit=2, seed=seed)
        known = per_query_var if "oracle" in name else pilot
        analytic, samples = [], []
        for d in range(draws):
            b = rng.choice(n, batch, replace=False)
            c = alloc.allocate(budget, batch, variances=known[b], losses=item_loss[b])
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


class SharedNoise(ParameterNoise):
    """MeZO-style SPSA as a gradient source: one perturbation per step, shared by the whole batch."""

    def ask(self, theta, items, counts, rng):
        owner = np.repeat(np.arange(len(items)), np.asarray(counts) // 2)
        z = np.broadcast_to(rng.standard_normal(theta.size) * self.sigma, (len(owner), theta.size))
        return Asked(np.concatenate([theta + z, theta - z]), np.concatenate([items[owner], items[owner]]), (owner, z))


def spsa(task, q, space, total, batch=8, sigma=0.5, lr=0.3, seed=0):
    source = SharedNoise(soft_prompt_loss(q.label_logprobs, space, task), len(task.train_texts), sigma)
    run = train(source, np.zeros(space.dim), batch_size=batch, queries_per_step=2 * batch, total_queries=total,
                lr=lr, seed=seed)
    return run.theta, run.queries


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


def queries_to_reach(curve, accuracy=None, nll=None):
    """The first training-query count at which held-out accuracy reached ``accuracy`` (or the
    label NLL fell to ``nll``); None if never."""
    # the curve holds values rounded to 3 decimals: compare at that precision
    return next((qn for qn, acc, loss in curve
                 if (accuracy is not None and acc >= round(accuracy, 3) - 1e-9)
                 or (nll is not None and loss <= round(nll, 3) + 1e-9)), None)


def fmt_reach(reach, total):
    return f"{reach} ({reach / total:.2f}x)" if reach is not None else "not reached"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="half the steps")
    p.add_argument("--skip-tuning", action="store_true")
    p.add_argument("--budget", type=int, default=256, help="queries per step (default 256)")
    p.add_argument("--batch", type=int, default=32, help="training texts per step (default 32)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--pairs", type=int, default=6, help="antithetic pairs measured per item in part (a)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--tag", default="", help="suffix for the result files")
    args = p.parse_args()
    steps = args.steps // 2 if args.quick else args.steps
    qps, batch, lr, sigma = args.budget, args.batch, args.lr, args.sigma
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"settings": {"steps": steps, "queries_per_step": qps, "batch": batch, "rank": 16, "soft_tokens": 4,
                        "sigma": sigma, "lr": lr, "init": UNINFORMATIVE_INIT}}
    lines = []

    def emit(line=""):
        print(line, flush=True)
        lines.append(line)

    def save():
        (RESULTS / f"allocation{args.tag}.json").write_text(json.dumps(out, indent=1))
        (RESULTS / f"allocation{args.tag}.md").write_text("\n".join(lines) + "\n")

    t0 = time.time()
    task, q, space = setup()
    emit(f"task: {task.summary()}; 4 soft tokens after 'Answer:' initialised from {UNINFORMATIVE_INIT!r}, rank-16 subspace")
    res, info = variance_part(task, q, space, pairs=args.pairs, sigma=sigma, batch=batch, budget=qps)
    out["variance"] = {"results": res, "info": info}
    emit(f"\n(a) combined-gradient variance at equal budget ({qps} queries over {batch} texts per step)")
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
    every = args.eval_every
    emit(f"\n(b) prompt tuning, {steps} steps x {qps} queries = {total} training queries "
         f"(held-out: {len(task.test_texts)} texts; accuracy every {every} steps)")
    emit("| method | acc before | acc after | label NLL before | label NLL after | training queries | "
         "queries to reach uniform's final acc | ... its final label NLL | curve (queries: acc) | seconds |")
    emit("|---|---|---|---|---|---|---|---|---|---|")
    out["tuning"] = {}
    target = None
    for name in ("uniform", "neyman", "flops"):
        r = tune_soft_prompt(q.label_logprobs, task, space, steps=steps, batch_size=batch, queries_per_step=qps,
                             sigma=sigma, lr=lr, allocator=name, seed=0, eval_every=every)
        curve = [(e["queries"], round(e["accuracy"], 3), round(e["label_nll"], 3)) for e in r.evals]
        if target is None:
            target = (r.after["accuracy"], r.after["label_nll"])
        reach = queries_to_reach(curve, accuracy=target[0])
        reach_nll = queries_to_reach(curve, nll=target[1])
        out["tuning"][name] = {**r.summary(), "before": r.before, "after": r.after, "curve": curve,
                               "queries_to_reach_uniform_final_accuracy": reach,
                               "queries_to_reach_uniform_final_nll": reach_nll,
                               "loss_curve": [(h["queries"], h["loss"]) for h in r.history]}
        emit(f"| LR + {name} | {r.before['accuracy']:.3f} | {r.after['accuracy']:.3f} | "
             f"{r.before['label_nll']:.3f} | {r.after['label_nll']:.3f} | {r.queries} | "
             f"{fmt_reach(reach, total)} | {fmt_reach(reach_nll, total)} | "
             f"{' '.join(f'{c[0]}:{c[1]:.2f}' for c in curve)} | {r.seconds:.0f} |")
        save()
    ref = backprop_soft_prompt(q.label_loss_grad, q.label_logprobs, task, space, steps=steps, batch_size=batch,
                               lr=lr, seed=0, eval_every=every)
    out["tuning"]["backprop"] = {**ref.summary(), "before": ref.before, "after": ref.after,
                                 "curve": [(e["step"], round(e["accuracy"], 3)) for e in ref.evals]}
    emit(f"| backprop (white box, same steps) | {ref.before['accuracy']:.3f} | {ref.after['accuracy']:.3f} | "
         f"{ref.before['label_nll']:.3f} | {ref.after['label_nll']:.3f} | 0 | | | "
         f"{' '.join(f'step {e[0]}:{e[1]:.2f}' for e in out['tuning']['backprop']['curve'])} | {ref.seconds:.0f} |")
    save()
    emit(f"\n(c) the same task and {total} training queries with other black-box optimisers")
    emit("| method | acc before | acc after | label NLL before | label NLL after | training queries | seconds |")
    emit("|---|---|---|---|---|---|---|")
    before = evaluate(q.label_logprobs, space.soft(np.zeros(space.dim)), task)
    others = (("MeZO-style SPSA (one shared perturbation per batch)",
               lambda: spsa(task, q, space, total, batch=batch, sigma=sigma, lr=lr)),
              ("CMA-ES (cma)", lambda: cmaes(task, q, space, total, batch=batch, sigma=sigma)))
    for name, run in others:
        t = time.time()
        theta, spent = run()
        after = evaluate(q.label_logprobs, space.soft(theta), task)
        out["tuning"][name] = {"before": before, "after": after, "train_queries": spent}
        emit(f"| {name} | {before['accuracy']:.3f} | {after['accuracy']:.3f} | {before['label_nll']:.3f} | "
             f"{after['label_nll']:.3f} | {spent} | {time.time() - t:.0f} |")
        save()
    gains = {k: v["after"]["accuracy"] - v["before"]["accuracy"] for k, v in out["tuning"].items()}
    if gains["backprop"] > 0:
        emit("\nshare of the backprop accuracy gain: " + ", ".join(
            f"{k} {g / gains['backprop']:.0%}" for k, g in gains.items() if k != "backprop"))
    emit(f"\ntotal wall time {time.time() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")
    out["seconds"] = round(time.time() - t0)
    save()


if __name__ == "__main__":
    sys.exit(main())
