"""Query allocation on the real soft-prompt task (embedded SmolLM2-135M), over several seeds.

Each seed is an independent replicate: its own train/held-out split of the animal task, its own
random prompt subspace, batches and noise. Every figure is a mean over the seeds with a 95%
Student-t interval; comparisons with uniform allocation are paired by seed (:mod:`benchmarks.harness`).

(a) Variance of the combined LR gradient at equal budget, uniform vs Neyman vs FLOPS: every
    training example's antithetic-pair terms are measured on the real model (a pool per item);
    repeated draws resample each item's pool (bootstrap), so every allocator sees the same real
    per-item losses. Neyman uses variances from a separate pilot; FLOPS is first trained on the
    stream (item losses as features, variance-efficiency reward).
(b) Held-out accuracy / label NLL against training queries for prompt tuning per allocator, the
    backprop reference at the same steps, and how many queries each allocator needed to reach
    uniform's final accuracy (a claim of fewer queries holds only if its interval lies below 1).
(c) MeZO-style SPSA (one shared perturbation per step, a gradient source on the same loop) and
    CMA-ES (``cma``) at the same budget.

    python -m benchmarks.allocation [--seeds 0 1 2] [--steps 30] [--queries-per-step 128] [--batch 16]
    python -m benchmarks.allocation --combine   # rewrite the .md from the .json

Writes benchmarks/results/allocation.json and allocation.md (tables as printed). No timings: the
figures are quality per query, which the machine's load does not change.
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from benchmarks.harness import curve_cell, fmt, paired_claim, reach_claim, reach_ratios, run_seeds  # noqa: E402
from blackbox import tasks  # noqa: E402
from blackbox.allocators import make_allocator  # noqa: E402
from blackbox.forward_learning import Asked, ParameterNoise, batch_items, train  # noqa: E402
from blackbox.prompt_tuning import (backprop_soft_prompt, evaluate, soft_prompt_loss,  # noqa: E402
                                    tune_soft_prompt)

ALLOCATORS = ("uniform", "neyman", "flops")


def setup(seed):
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


def one_seed(seed, args):
    """Every measurement of one replicate (a dict of plain values)."""
    task, q, space = setup(seed)
    out = {"seed": seed, "task": task.summary()}
    if not args.skip_variance:
        res, info = variance_part(task, q, space, pairs=args.pairs, sigma=args.sigma, batch=args.batch,
                                  budget=args.queries_per_step, seed=seed)
        out["variance"] = {"results": res, "info": info}
    total = args.steps * args.queries_per_step
    runs = {}
    for name in ALLOCATORS:
        r = tune_soft_prompt(q.label_logprobs, task, space, steps=args.steps, batch_size=args.batch,
                             queries_per_step=args.queries_per_step, sigma=args.sigma, lr=args.lr, allocator=name,
                             seed=seed, eval_every=args.eval_every)
        runs[name] = {"before": r.before, "after": r.after, "train_queries": r.queries,
                      "curve": [(e["queries"], round(e["accuracy"], 3), round(e["label_nll"], 3)) for e in r.evals]}
        print(f"seed {seed} {name}: {r.before['accuracy']:.3f} -> {r.after['accuracy']:.3f}", flush=True)
    ref = backprop_soft_prompt(q.label_loss_grad, q.label_logprobs, task, space, steps=args.steps,
                               batch_size=args.batch, lr=args.lr, seed=seed, eval_every=args.eval_every)
    runs["backprop"] = {"before": ref.before, "after": ref.after, "train_queries": 0,
                        "curve": [(e["step"], round(e["accuracy"], 3), round(e["label_nll"], 3)) for e in ref.evals]}
    before = evaluate(q.label_logprobs, space.soft(np.zeros(space.dim)), task)
    for name, run in (("spsa", lambda: spsa(task, q, space, total, batch=args.batch, sigma=args.sigma, lr=args.lr,
                                            seed=seed)),
                      ("cma-es", lambda: cmaes(task, q, space, total, batch=args.batch, sigma=args.sigma, seed=seed))):
        theta, spent = run()
        runs[name] = {"before": before, "after": evaluate(q.label_logprobs, space.soft(theta), task),
                      "train_queries": spent}
        print(f"seed {seed} {name}: {before['accuracy']:.3f} -> {runs[name]['after']['accuracy']:.3f}", flush=True)
    out["runs"] = runs
    return out


NAMES = {"uniform": "LR + uniform", "neyman": "LR + Neyman", "flops": "LR + FLOPS",
         "backprop": "backprop (white box, same steps)", "spsa": "MeZO-style SPSA (one shared perturbation)",
         "cma-es": "CMA-ES (cma)"}


def report(seeds: list[dict], args) -> list[str]:
    n = len(seeds)
    total = args.steps * args.queries_per_step
    runs = lambda name: [s["runs"][name] for s in seeds]  # noqa: E731
    lines = [f"# Query allocation on the soft-prompt task ({n} seeds: {', '.join(str(s['seed']) for s in seeds)})", "",
             f"task: {seeds[0]['task']} (the split changes with the seed); 4 soft tokens after 'Answer:' "
             f"initialised from {tasks.UNINFORMATIVE_INIT!r}, rank-16 subspace; {args.steps} steps x "
             f"{args.queries_per_step} queries over {args.batch} texts = {total} training queries; sigma "
             f"{args.sigma}, Adam lr {args.lr}. Figures: mean ± 95% t-interval over the seeds.", ""]
    if not args.skip_variance:
        lines += [f"(a) combined-gradient variance at equal budget ({args.queries_per_step} queries over "
                  f"{args.batch} texts), relative to uniform", "",
                  "| allocator | analytic variance ratio | bootstrap variance ratio |", "|---|---|---|"]
        for name in ("uniform", "neyman", "flops", "neyman (oracle V_i)"):
            vals = [s["variance"]["results"][name] for s in seeds]
            lines.append(f"| {name} | {fmt([v['analytic_ratio'] for v in vals])} | "
                         f"{fmt([v['bootstrap_ratio'] for v in vals])} |")
        lines += ["", "item std spread (coefficient of variation of sqrt V_i): "
                  f"{fmt([s['variance']['info']['cv_of_item_std'] for s in seeds])}", ""]
    targets = [r["after"]["accuracy"] for r in runs("uniform")]
    lines += [f"(b) prompt tuning, held-out accuracy and label NLL ({seeds[0]['task']['test']} held-out texts)", "",
              "| method | acc before | acc after | label NLL after | acc after - uniform (paired) | "
              "queries to reach uniform's final acc (x total, seeds that got there) |", "|---|---|---|---|---|---|"]
    claims = []
    for name in (*ALLOCATORS, "backprop", "spsa", "cma-es"):
        rs = runs(name)
        diffs = [r["after"]["accuracy"] - u["after"]["accuracy"] for r, u in zip(rs, runs("uniform"))]
        reach = ""
        if name in ALLOCATORS:
            ratios = reach_ratios([[(c[0], c[1]) for c in r["curve"]] for r in rs], targets, total)
            got = [x for x in ratios if x is not None]
            reach = f"{fmt(got, 2)} ({len(got)}/{n})"
            if name != "uniform":
                claims += [reach_claim(NAMES[name], ratios, "uniform"), paired_claim(NAMES[name], diffs, "uniform")]
        elif name != "backprop":
            claims.append(paired_claim(NAMES[name], diffs, "uniform"))
        lines.append(f"| {NAMES[name]} | {fmt([r['before']['accuracy'] for r in rs])} | "
                     f"{fmt([r['after']['accuracy'] for r in rs])} | {fmt([r['after']['label_nll'] for r in rs])} | "
                     f"{'' if name == 'uniform' else fmt(diffs)} | {reach} |")
    lines += ["", "held-out accuracy by training queries (backprop: by step), mean ± interval:", "",
              "| method | curve |", "|---|---|"]
    for name in (*ALLOCATORS, "backprop"):
        lines.append(f"| {NAMES[name]} | {curve_cell([[(c[0], c[1]) for c in r['curve']] for r in runs(name)])} |")
    lines += ["", "claims, judged on the mean and its interval:", ""] + [f"- {c}" for c in claims]
    return lines


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--queries-per-step", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="training texts per step")
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--pairs", type=int, default=6, help="antithetic pairs measured per item in part (a)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--skip-variance", action="store_true", help="leave out part (a)")
    p.add_argument("--tag", default="", help="suffix for the result files")
    p.add_argument("--combine", action="store_true", help="rewrite the .md from the .json")
    args = p.parse_args()
    print("\n".join(run_seeds(args, one_seed, report, f"allocation{args.tag}")))


if __name__ == "__main__":
    sys.exit(main())
