"""``blackbox tune-prompt --model openai:<name>``: prompt search over an OpenAI-compatible endpoint.

The run, in order: read the starting prompt and the instruction candidates; **probe** a few
training examples (label log-probabilities, then sampled answers) and stop with one line if the
answers carry no signal; let the endpoint **propose** instructions (``--propose``); evaluate the
starting prompt on the held-out rows; **train** the policy over instruction, demonstrations and
words (:func:`blackbox.prompts.tune_prompt`); evaluate the learned prompt; write the prompt file.
Every request goes through one engine (budget, cache, retries; ``--batch``: the evaluation passes
through the Batch API).
"""
from __future__ import annotations

import json
import sys

from blackbox.errors import InputError

from blackbox.prompts.search import SELECT_FROM

from .options import add_remote_options, nonneg_int, positive_float, positive_int

SEARCH_ONLY = ("base_url", "max_cost", "max_tokens", "prices", "rpm", "tpm", "slots", "candidates", "top_k", "api",
               "instructions", "propose", "shots", "reward", "samples", "temperature", "probe", "service_tier",
               "label_tokens", "select")
SEARCH_FLAGS = ("batch", "dry_run")  # store_true options (False when not given)
BATCH_HELP = ("send each held-out evaluation pass (before and after training) through OpenAI's Batch API: half "
              "price, answers within 24 h (usually minutes); the probe and the training steps stay one by one")


def add_search_options(parser) -> None:
    d = parser.add_argument_group("prompt search (--model openai:<model>)")
    d.add_argument("--api", choices=("auto", "completions", "chat"),
                   help="endpoint: /v1/completions or /v1/chat/completions (default: auto = probe completions, "
                        "else chat)")
    d.add_argument("--instructions", metavar="FILE",
                   help="instruction candidates: one per line, or a JSON list (default: three that name the "
                        "labels); the empty instruction is always a candidate")
    d.add_argument("--propose", type=nonneg_int, metavar="N",
                   help="also let the endpoint propose N instructions from training rows (N paid, cached requests)")
    d.add_argument("--shots", type=nonneg_int, metavar="K",
                   help="at most K demonstrations from the training rows (default: the number of labels, at most 4)")
    d.add_argument("--slots", type=nonneg_int, help="word slots on a line before the text (default: 0; 3 with "
                                                    "--candidates)")
    d.add_argument("--candidates", metavar="W1,W2,...", help="candidate words per slot (default: 20 mixed words)")
    d.add_argument("--reward", choices=("auto", "logprobs", "sampled"),
                   help="auto (default): label logprobs if the probe finds labels listed, else sampled answers "
                        "scored by exact match; each query is one answer either way")
    d.add_argument("--samples", type=positive_int, metavar="S",
                   help="sampled answers per sampled prompt (default: 1): one request with n=S where the endpoint "
                        "honours n, else S requests; each answer counts as one query")
    d.add_argument("--temperature", type=positive_float, help="temperature of sampled answers (default: 1.0)")
    d.add_argument("--probe", type=nonneg_int, metavar="N",
                   help="training examples probed for signal before anything else is paid (default: 8; 0 = no probe)")
    d.add_argument("--label-tokens", choices=("first", "all"),
                   help="how a label's log-probability is read: 'first' (default) from its first token, so "
                        "'arthropod' counts as ' arthrop'; 'all' adds its later tokens ('od'), which matters when "
                        "labels share a first token or one label is rarely spelled out: needs /v1/completions and "
                        "pays one more request per further token of each label")
    d.add_argument("--select", type=nonneg_int, metavar="N",
                   help=f"end by scoring the last steps' distinct likeliest prompts (up to {SELECT_FROM}) on N "
                        "training rows none of them shows and keeping the best: a short run's likeliest prompt "
                        f"can move between near-equal choices from step to step (up to {SELECT_FROM} x N more "
                        "requests; default: 0 = keep the last step's)")
    d.add_argument("--top-k", type=positive_int, help="logprobs asked per answer (default: 20; OpenAI allows 5 "
                                                      "on completions, 20 on chat)")
    d.add_argument("--dry-run", action="store_true", help="send nothing; print what the run would pay")
    add_remote_options(parser, images=False, concurrency=4, batch_help=BATCH_HELP,
                       title="endpoint (--model openai:<model>; the API key is read from the environment)")


# -- the starting point ------------------------------------------------------------------------------
def _start(args, task):
    """``(prompt or None, word candidates, slots)`` from ``--prompt`` (a prompt file, or a text
    file of words), ``--candidates`` and ``--slots``. A prompt file's reward is used unless
    ``--reward`` says otherwise (so it is evaluated as it was tuned)."""
    from blackbox.discrete_prompt import warm_start
    from blackbox.prompts import Prompt, read_prompt_file
    from blackbox.tasks import DEFAULT_CANDIDATES

    words = list(DEFAULT_CANDIDATES)
    if args.candidates is not None:
        words = [w.strip() for w in args.candidates.split(",") if w.strip()]
        if len(words) < 2:
            raise InputError("--candidates needs at least two comma-separated words")
    slots = args.slots if args.slots is not None else (3 if args.candidates is not None else 0)
    if not args.prompt:
        return None, words, slots
    try:
        with open(args.prompt, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the prompt {args.prompt}: {exc}") from None
    if text.lstrip().startswith("{"):
        prompt, data = read_prompt_file(args.prompt)
        _check_labels(data, task, args.prompt)
        recorded = (data.get("blackbox") or {}).get("reward") if isinstance(data.get("blackbox"), dict) else None
        if args.reward is None and recorded in ("logprobs", "sampled"):
            args.reward = recorded
        if prompt.words:
            words, slots, _ = warm_start(prompt.words.split(), words)
        return prompt, words, slots
    given = text.split()
    if args.slots is not None and args.slots != len(given):
        raise InputError(f"--slots {args.slots} but the prompt in {args.prompt} has {len(given)} words")
    words, slots, _ = warm_start(given, words)
    return Prompt(words=" ".join(given), template=task.template), words, slots


def _check_labels(data: dict, task, path) -> None:
    labels = data.get("labels")
    mine = [w.strip() for w in task.label_words]
    if isinstance(labels, list) and labels and [str(y).strip() for y in labels] != mine:
        raise InputError(f"{path} was tuned for the labels {', '.join(map(str, labels))}, not {', '.join(mine)}")


def _instructions(args, task, prompt) -> list[str]:
    from blackbox.prompts import default_instructions, read_instructions

    found = read_instructions(args.instructions) if args.instructions else default_instructions(task.label_words)
    return found + ([prompt.instruction] if prompt is not None and prompt.instruction else [])


def _space(args, task, instructions, words, slots, prompt):
    """The policy's space and its starting logits."""
    from blackbox.prompts import PromptSpace, default_shots

    labels = [w.strip() for w in task.label_words]
    pool = [(t, labels[y]) for t, y in zip(task.train_texts, task.train_labels)]
    shots = args.shots if args.shots is not None else default_shots(len(labels))
    if shots >= len(pool):
        raise InputError(f"--shots {shots}: the training split has {len(pool)} rows (an example never shows itself); "
                         f"use at most {len(pool) - 1}")
    space = PromptSpace(instructions, pool, shots, words, slots, task.template)
    return space, space.start(prompt)


# -- probe, proposals, training -------------------------------------------------------------------------
def _rewards(args, endpoint, task) -> list:
    from blackbox.prompts import LabelLogprobs, SampledAnswers

    logprobs = LabelLogprobs(endpoint, task.label_words)
    sampled = SampledAnswers(endpoint, task.label_words, temperature=args.temperature or 1.0, seed=args.seed)
    return {"auto": [logprobs, sampled], "logprobs": [logprobs], "sampled": [sampled]}[args.reward or "auto"]


def advice(args, kind: str, rewards) -> str:
    """What a user can do when the probe finds no signal (one sentence)."""
    steps = ["list the labels in the instruction (--instructions FILE)"]
    if kind == "chat":
        steps.append("use /v1/completions where the endpoint has it (--api completions)")
    if all(r.mode == "logprobs" for r in rewards):
        steps.append("score sampled answers (--reward sampled)")
    else:
        steps.append("show demonstrations (--shots K) or score sampled answers with a metric of your own "
                     "(Python: blackbox.prompts.SampledAnswers(endpoint, labels, metric=...))")
    return "To do: " + "; or ".join(steps) + "."


def _probe(args, endpoint, task, space, theta0, prompt, rewards):
    """The reward to learn from and what the probe found. Unprobed: ``--probe 0`` (the first
    reward), and a prompt file evaluated with the reward it was tuned with (nothing to learn)."""
    from blackbox.prompts import probe_signal

    if args.probe == 0 or (args.steps == 0 and prompt is not None and len(rewards) == 1):
        return rewards[0], [], None
    before = endpoint.engine.stats.as_dict()
    reward, findings = probe_signal(rewards, task, space, theta0, rows=args.probe or 8, seed=args.seed,
                                    prompt=prompt if args.steps == 0 else None,
                                    spent=lambda: endpoint.spent(before), advice=advice(args, endpoint.kind, rewards))
    return reward, findings, endpoint.spent(before)


def _propose(args, endpoint, task, space, instructions, words, slots, prompt):
    """The space with the endpoint's proposals added to the instruction candidates (``--propose N``)."""
    from blackbox.prompts import propose_instructions

    if not args.propose or args.steps == 0:
        return space, space.start(prompt), []
    proposed = propose_instructions(endpoint, task, args.propose, seed=args.seed)
    new_space, theta0 = _space(args, task, instructions + proposed, words, slots, prompt)
    return new_space, theta0, proposed


def run_search(args, task, budget):
    """The whole API run (see the module docstring): ``(result, report fields)``."""
    from blackbox.adapters.api_prompting import openai_prompt_endpoint

    from .remote import check_local_options

    check_local_options(args)
    if args.select and args.eval_every:
        raise InputError("--eval-every with --select: a run with a selection scores the held-out rows at the start "
                         "and for the chosen prompt only; drop one of them")
    prompt, words, slots = _start(args, task)
    instructions = _instructions(args, task, prompt)
    space, theta0 = _space(args, task, instructions, words, slots, prompt)
    endpoint = openai_prompt_endpoint(
        args.model[len("openai:"):].strip(), task.label_words, api=args.api or "auto", base_url=args.base_url,
        api_key_env=args.api_key_env, budget=budget, cache=not args.no_cache, concurrency=args.concurrency,
        rpm=args.rpm, tpm=args.tpm, timeout=args.timeout, max_attempts=args.max_attempts, prices=args.prices,
        top_k=args.top_k or 20, service_tier=args.service_tier, batch_evaluations=args.batch, dry_run=args.dry_run,
        label_tokens=args.label_tokens or "first")
    try:
        if args.dry_run:
            return None, dry_run_report(args, endpoint, task, space, theta0)
        return _run(args, endpoint, task, budget, (space, theta0, instructions, words, slots, prompt))
    except KeyboardInterrupt:
        batcher = endpoint.engine.batcher
        if batcher is not None and batcher.in_flight:
            print(f"blackbox: batch {', '.join(batcher.in_flight)} still runs at the provider: rerun the same "
                  "command to collect it (it is not paid again)", file=sys.stderr)
        raise
    finally:
        endpoint.close()


def _run(args, endpoint, task, budget, start):
    from blackbox.prompts import tune_prompt
    from blackbox.prompts.search import evaluate_only

    space, theta0, instructions, words, slots, prompt = start
    rewards = _rewards(args, endpoint, task)
    reward, findings, probe_cost = _probe(args, endpoint, task, space, theta0, prompt, rewards)
    space, theta0, proposed = _propose(args, endpoint, task, space, instructions, words, slots, prompt)
    samples = (args.samples or 1) if reward.mode == "sampled" else 1
    if args.steps == 0 and prompt is not None:
        result = evaluate_only(reward, prompt, task)
    else:
        result = tune_prompt(space, reward, task, samples=samples, steps=args.steps, total_queries=args.total_queries,
                             batch_size=args.batch_size, queries_per_step=args.queries_per_step, lr=args.lr,
                             allocator=args.allocator, seed=args.seed, budget=budget, checkpoint=args.checkpoint,
                             eval_every=args.eval_every, theta0=theta0, progress=not args.no_progress,
                             select=args.select or 0)
    search = {"reward": reward.mode, "samples_per_prompt": samples, "probe": [f.__dict__ for f in findings],
              "probe_paid": probe_cost, "proposed": proposed, "instructions": len(space.instructions),
              "shots": space.k, "slots": space.words.n_slots if space.words is not None else 0,
              "selection": result.selection, "selection_rows": args.select or 0}
    return result, {**usage_fields(endpoint), "search": search}


# -- what it spent, the prompt file, the dry run -----------------------------------------------------
def usage_fields(endpoint) -> dict:
    u, engine = endpoint.engine.stats, endpoint.engine
    usage = {"requests_paid": u.sent, "from_cache": u.cache_hits, "retries": u.retries, "batched": u.batched,
             "batches": u.batches, "batch_ids": list(engine.batcher.batch_ids) if engine.batcher else []}
    return {"kind": "discrete", "api": endpoint.kind, "tokens": u.prompt_tokens + u.completion_tokens,
            "cost": round(u.cost, 6) if u.cost_known else None, "usage": usage}


def prompt_file(args, task, result, report) -> dict:
    """The learned prompt as a prompt file (see :mod:`blackbox.prompts.prompt`)."""
    from blackbox.adapters.api_prompting import ANSWER_TOKENS

    extra = {k: report[k] for k in ("accuracy_after",) if k in report}
    return result.learned.to_file(args.model[len("openai:"):].strip(), task.label_words, api=report["api"],
                                  reward=report["search"]["reward"], max_tokens=ANSWER_TOKENS, **extra)


def dry_run_report(args, endpoint, task, space, theta0) -> dict:
    """What the run would send and pay: the probe, the proposals, the training steps' requests
    drawn from the starting policy (one request per answer, the worst case) and two evaluation
    passes (through the Batch API's price with ``--batch``), priced on the dry-run engine."""
    import numpy as np

    from blackbox.prompts import Prompt
    from blackbox.prompts.instructions import meta_prompts

    reward = args.reward or "auto"
    rng = np.random.default_rng([args.seed, 9])
    n_train = args.total_queries if args.total_queries is not None else (args.steps or 0) * args.queries_per_step
    items = rng.integers(0, len(task.train_texts), size=n_train)
    training = [(space.prompt(c), task.train_texts[i]) for c, i in zip(space.sample(theta0, list(items), rng), items)]
    start = space.prompt(space.best(theta0))
    probe = [(start, t) for t in task.train_texts[: 8 if args.probe is None else args.probe]]
    held_out = [(start, t) for t in task.test_texts] + [(_longest(space), t) for t in task.test_texts] * bool(args.steps)
    rows = min(args.select or 0, len(task.train_texts)) * bool(args.steps)
    selection = [(_longest(space), t) for t in task.train_texts[:rows]]  # priced for each of SELECT_FROM prompts
    temp, seed, engine = args.temperature or 1.0, args.seed, endpoint.engine

    def asked(pairs, temperature):
        return (endpoint.answer_requests(pairs, temperature, seed) if reward == "sampled"
                else endpoint.label_requests(pairs))
    engine.map(endpoint.label_requests(probe) * (reward != "sampled")
               + endpoint.answer_requests(probe, temp, seed) * (reward != "logprobs"), sync=True)
    engine.map([endpoint.sampler.request(endpoint.render((Prompt(), m)), 1.0, seed, max_tokens=80)
                for m in meta_prompts(task, args.propose or 0, seed=seed)], sync=True)
    engine.map(asked(training, temp), sync=True)
    engine.map(asked(selection, 0.0) * SELECT_FROM, replicas=np.repeat(np.arange(SELECT_FROM), len(selection)),
               sync=True)
    engine.map(asked(held_out, 0.0), batch=True)
    u = engine.stats
    return {"dry_run": True, "would_send": u.would_send, "already_cached": u.cache_hits, "api": endpoint.kind,
            "probe_requests": len(probe) * (1 if reward != "auto" else 2), "proposals": args.propose or 0,
            "training_queries": n_train, "selection_requests": len(selection) * SELECT_FROM,
            "evaluation_requests": len(held_out), "reward": reward,
            "evaluation_cost_batched": bool(args.batch),
            "estimated_tokens": u.estimated_tokens, "estimated_cost": round(u.estimated_cost, 6),
            "estimated_batch_cost": round(u.estimated_batch_cost, 6),
            "batch_ratio": round(u.estimated_batch_cost / u.estimated_cost, 4) if u.estimated_cost else None,
            "batch_discount": engine.prices.discount(engine.model, "batch"), "service_tier": engine.spending.tier,
            "batch": bool(args.batch), "max_tokens": args.max_tokens, "max_cost": args.max_cost,
            "label_tokens": args.label_tokens or "first"}


def _longest(space):
    """The longest prompt of the space (its longest instruction and demonstrations): the learned
    prompt's worst case, for the dry run's second evaluation pass."""
    import numpy as np

    choice = space.best(np.zeros(space.dim))
    choice[0] = int(np.argmax([len(i) for i in space.instructions]))
    choice[1] = space.k
    choice[2:2 + space.k] = np.argsort([-len(t) for t, _ in space.pool], kind="stable")[: space.k]
    if space.words is not None:
        choice[2 + space.k:] = int(np.argmax([len(w) for w in space.words.candidates]))
    return space.prompt(choice)


def print_dry_run(report: dict) -> None:
    from .remote import prices_line

    reward = "label logprobs (auto: the probe decides)" if report["reward"] == "auto" else report["reward"]
    print(f"dry run over {report['api']}: probe {report['probe_requests']} requests, {report['proposals']} "
          f"proposals, {report['training_queries']} training answers scored by {reward}, "
          f"{report['selection_requests']} selection requests (at most), "
          f"{report['evaluation_requests']} evaluation requests; {report['already_cached']} answers already cached, "
          f"{report['would_send']} requests would be sent")
    print(f"at most ~{report['estimated_tokens']} tokens (worst-case reservations; actual usage is usually lower)")
    print(prices_line(report) + " -- --batch sends the evaluation passes only")
    if report["label_tokens"] == "all":
        print("not counted above: --label-tokens all's further requests (one per later token of each label not "
              "yet spelled out, per scored answer)")
    for cap, est, what in ((report["max_tokens"], report["estimated_tokens"], "tokens"),
                           (report["max_cost"], report["estimated_batch_cost"] if report["batch"]
                            else report["estimated_cost"], "cost")):
        if cap is not None and est > cap:
            print(f"the {what} cap ({cap}) would stop the run before it finishes")
