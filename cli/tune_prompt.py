"""``blackbox tune-prompt``: prompt tuning from queries only, on the built-in task or the user's data.

Two models. ``--model embedded`` (the default) trains soft prompt vectors of the embedded
SmolLM2-135M from loss queries; ``--model openai:<name>`` learns a discrete word prompt over any
OpenAI-compatible endpoint that returns logprobs (``/v1/completions`` or ``/v1/chat/completions``;
a policy gradient over candidate words, through the remote query engine's budget, cache and retries).
"""
from __future__ import annotations

import argparse
import json
import os

from blackbox.errors import InputError

from .files import check_writable, save_npy, save_text
from .options import add_output_options, add_training_options, nonneg_int, positive_float, positive_int
from .prompt_search import SEARCH_FLAGS, SEARCH_ONLY, add_search_options

EPILOG = """\
examples:
  blackbox tune-prompt                                  # built-in task, 40 steps x 256 queries, ~5 minutes
  blackbox tune-prompt --train train.jsonl --test test.jsonl --save prompt.npy --report results.json
  blackbox tune-prompt --train train.csv --test test.csv --text-column review --label-column sentiment \\
                       --template "Review: {text}\\nSentiment:"
  blackbox tune-prompt --test test.jsonl --train train.jsonl --prompt prompt.npy --steps 0   # re-evaluate
  blackbox tune-prompt --allocator neyman --steps 60 --checkpoint run.npz --plot curve.png --eval-every 5

  # a hosted chat model: instruction + demonstrations, scored by logprobs or by sampled answers
  blackbox tune-prompt --model openai:gpt-4o-mini --train train.jsonl --test test.jsonl --dry-run
  blackbox tune-prompt --model openai:gpt-4o-mini --train train.jsonl --test test.jsonl \\
                       --instructions mine.txt --propose 4 --shots 3 --max-cost 0.50 --save prompt.json
  blackbox tune-prompt --model openai:gpt-4o-mini --train train.jsonl --test test.jsonl \\
                       --prompt prompt.json --steps 0 --batch        # evaluate the file, half price
  blackbox serve &                                      # the embedded SmolLM2 on /v1/chat/completions too
  blackbox tune-prompt --model openai:smollm2-135m-instruct --base-url http://127.0.0.1:8000/v1 --api chat \\
                       --reward sampled --samples 2 --checkpoint run.npz

your data:
  --train and --test are tables (.jsonl, .json, .csv or .tsv) with a text column and a label
  column (--text-column, --label-column; default 'text' and 'label'). The classes are the labels of
  the training split, one word each (e.g. positive / negative). --template puts each text before
  the answer ({text} marks the place; default "{text}\\nAnswer:" for soft prompts,
  "{text}\\nThis is about a" for an API).

how it works:
  Without --train the task is the built-in one: which animal group (bird, dog, fish, snake,
  insect) a sentence of an ImageNet class description is about (giveaway words masked; train and
  held-out texts come from different classes).

  --model embedded: K soft tokens after the template's text start from the embeddings of --init
  (by default an uninformative phrase, so accuracy starts near chance and the prompt has to learn
  the question) and are trained in a random RANK-dimensional subspace with likelihood-ratio
  gradients from forward queries of the embedded SmolLM2-135M; the allocator rations each step's
  queries across the batch's examples. A checkpoint resumes a run without repeating its queries.

  --model openai:<name>: a prompt is an instruction (one of --instructions, or three that name the
  labels, or none), up to --shots demonstrations drawn from the training rows (an example never
  shows itself), and --slots words; one categorical policy over all of them is sampled, each
  sampled prompt is scored on a training example, and the policy moves along the score-function
  gradient with a leave-one-out baseline. The score (--reward) is the true label's log-probability
  among the labels, read from the first answer token's top logprobs (a token counts for a label
  when it is the label or a prefix of it that starts no other label), or a sampled answer
  (temperature 1, first line) scored 1 when it is the label after normalisation. One query is one
  answer: --queries-per-step and --total-queries count answers (--samples S answers per sampled
  prompt, in one request with n=S where the endpoint honours n).

  Before anything else is paid, --probe examples are scored under prompts drawn from the starting
  policy: if no label is listed and no sampled answer scores differently from the others, the run
  stops with one line that says why, what the probe cost and what to do (exit 2). Every answer is
  cached, so an interrupted or repeated run pays nothing twice (--checkpoint resumes the policy);
  --max-tokens and --max-cost are hard caps (the run stops cleanly and keeps the prompt so far).

  The results (held-out accuracy before and after, label NLL or the share of answers that are
  labels, queries, tokens and money) are printed, or written as JSON with --json / --report.
  --save writes the learned prompt: an .npy of K x 576 soft tokens, or a JSON prompt file that a
  plain openai client sends as it is ("model", "messages" with {text} in the last one,
  "max_tokens", "temperature"; "prompt" is the same for /v1/completions). --prompt starts from a
  saved prompt; with --steps 0 it is evaluated as it is.
"""

SOFT_DEFAULTS = {"steps": 40, "queries_per_step": 256, "batch_size": 32, "lr": 0.3}
API_DEFAULTS = {"steps": 40, "queries_per_step": 32, "batch_size": 8, "lr": 0.3}
SOFT_ONLY = ("soft_tokens", "rank", "sigma", "init")
BUILTIN_ONLY = ("per_class", "sentences")
USER_DATA_ONLY = ("text_column", "label_column")


def add_parser(sub):
    t = sub.add_parser("tune-prompt", help="tune a prompt from queries only (embedded LM or an OpenAI-compatible API)",
                       description="Prompt tuning by forward queries only, on your own text classification data "
                                   "or the built-in 5-way task: soft prompts of the embedded SmolLM2-135M (offline, "
                                   "default) or a prompt (instruction, demonstrations, words) over an "
                                   "OpenAI-compatible endpoint.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", default="embedded", metavar="NAME",
                   help="embedded (soft prompt, offline; default) or openai:<model> (instruction, "
                        "demonstrations and words over an API)")
    data = t.add_argument_group("data (default: the built-in animal task)")
    data.add_argument("--train", metavar="FILE", help="training table: .jsonl, .json, .csv or .tsv")
    data.add_argument("--test", metavar="FILE", help="held-out table, same columns")
    data.add_argument("--text-column", metavar="NAME", help="column of the texts (default: text)")
    data.add_argument("--label-column", metavar="NAME", help="column of the labels, one word each (default: label)")
    data.add_argument("--template", metavar="TEXT",
                      help="how a text is put before the answer, with {text} (default: '{text}\\nAnswer:' soft, "
                           "'{text}\\nThis is about a' discrete)")
    data.add_argument("--per-class", type=positive_int,
                      help="built-in task: ImageNet classes per animal group, half held out (default: 16)")
    data.add_argument("--sentences", type=positive_int,
                      help="built-in task: sentences taken from each class description (default: 2)")
    g = t.add_argument_group("training")
    g.add_argument("--steps", type=nonneg_int, help="training steps (default: 40; 0 = only evaluate)")
    g.add_argument("--total-queries", type=positive_int, metavar="N", help="stop before passing N training queries")
    g.add_argument("--queries-per-step", type=positive_int, metavar="Q",
                   help="default: 256 embedded (even: antithetic pairs), 32 API")
    g.add_argument("--batch-size", type=positive_int, help="examples per step (default: 32 embedded, 8 API)")
    add_training_options(g, lr=None, lr_help="Adam step size (default: 0.3)")
    g.add_argument("--prompt", metavar="FILE", help="start from a saved prompt (.npy soft tokens / a prompt file "
                                                    "or a text file of words); with --steps 0: evaluate it as it is")
    g.add_argument("--save", metavar="FILE", help="write the learned prompt (.npy of K x 576 soft tokens, or the "
                                                  "JSON prompt file a plain openai client sends)")
    g.add_argument("--report", metavar="JSON", help="write the results as JSON")
    add_output_options(t)
    s = t.add_argument_group("soft prompt (--model embedded)")
    s.add_argument("--soft-tokens", type=positive_int, metavar="K", help="default: 4")
    s.add_argument("--rank", type=positive_int, help="subspace dimension (default: 16)")
    s.add_argument("--sigma", type=positive_float, help="perturbation scale (default: 0.5)")
    s.add_argument("--init", metavar="TEXT",
                   help="phrase whose embeddings start the soft tokens (default: an uninformative one)")
    add_search_options(t)


def _given(args, names) -> list[str]:
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]


def _refuse(args, names, why: str) -> None:
    wrong = _given(args, names)
    if wrong:
        raise InputError(f"{', '.join(wrong)} {why}")


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    soft = args.model == "embedded"
    if not soft and not (args.model.startswith("openai:") and args.model[len("openai:"):].strip()):
        raise InputError(f"unknown model {args.model!r}: use embedded or openai:<model>")
    if soft:
        _refuse(args, SEARCH_ONLY, "apply to --model openai:<model>, not the embedded model")
        on = [f"--{n.replace('_', '-')}" for n in SEARCH_FLAGS if getattr(args, n)]
        if on:
            raise InputError(f"{', '.join(on)} apply to --model openai:<model>, not the embedded model")
    else:
        _refuse(args, SOFT_ONLY, f"apply to the embedded model's soft prompt, not {args.model}")
    if (args.train is None) != (args.test is None):
        raise InputError("give both --train and --test (or neither, for the built-in task)")
    if args.train is None:
        _refuse(args, USER_DATA_ONLY, "apply to your own data (--train/--test)")
    else:
        _refuse(args, BUILTIN_ONLY, "apply to the built-in task, not to --train/--test data")
    steps_given = args.steps is not None
    for name, value in (SOFT_DEFAULTS if soft else API_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if soft and args.queries_per_step % 2:
        raise InputError("--queries-per-step must be even (antithetic pairs)")
    if args.queries_per_step < 2 * args.batch_size:
        raise InputError(f"--queries-per-step must be at least 2 x --batch-size ({2 * args.batch_size})")
    if args.total_queries and not steps_given:
        args.steps = None
    for path, what in ((args.save, "the prompt"), (args.report, "the report"), (args.plot, "the plot"),
                       (args.checkpoint, "the checkpoint")):
        if path:
            check_writable(path, what)
    task = _task(args, soft)
    result, extra = (_soft if soft else _discrete)(args, task)
    if result is None:  # a dry run
        if args.json:
            print(json.dumps(extra))
        else:
            from .prompt_search import print_dry_run

            print_dry_run(extra)
        return 0
    report = {"model": args.model, "task": task.summary(), **extra, **result.summary(), "saved": args.save}
    _write(args, task, result, report, soft)
    if args.json:
        print(json.dumps(report))
    else:
        _print(report, args)
    return 0


def _write(args, task, result, report: dict, soft: bool) -> None:
    """The learned prompt (.npy soft tokens, or the prompt file), the report and the plot."""
    if not soft:
        from .prompt_search import prompt_file

        report["prompt_file"] = prompt_file(args, task, result, report)
    if args.save:
        if soft:
            save_npy(args.save, result.learned)
        else:
            save_text(args.save, json.dumps(report["prompt_file"], indent=1, ensure_ascii=False) + "\n")
    if args.report:
        save_text(args.report, json.dumps(report, indent=1) + "\n")
    if args.plot:
        from blackbox.plots import learning_curves, save_figure

        save_figure(learning_curves({args.model: result}, loss_label="label cross-entropy" if soft else "loss",
                                    chance=1 / len(task.label_words),
                                    title=f"prompt tuning from queries ({args.allocator} allocation)"), args.plot)


def _task(args, soft: bool):
    from blackbox import tasks

    template = args.template or (tasks.SOFT_TEMPLATE if soft else tasks.DISCRETE_TEMPLATE)
    if args.train is None:
        return tasks.animal_task(template, per_class=args.per_class or 16, sentences=args.sentences or 2,
                                 seed=args.seed)
    return tasks.load_text_task(args.train, args.test, template=template, text_column=args.text_column or "text",
                                label_column=args.label_column or "label")


def _soft(args, task):
    import numpy as np

    from blackbox.adapters.causal_lm import load_causal_lm
    from blackbox.prompt_tuning import tune_soft_prompt
    from blackbox.tasks import UNINFORMATIVE_INIT, soft_prompt_setup

    if args.init is not None and not args.init.strip():
        raise InputError("--init needs some text")
    start = None
    if args.prompt:
        _refuse(args, ("init",), "and --prompt both say where the soft tokens start: give one")
        try:
            start = np.load(args.prompt, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the soft prompt {args.prompt} (an .npy written by --save): {exc}") from None
        if args.soft_tokens is not None and start.ndim == 2 and len(start) != args.soft_tokens:
            raise InputError(f"--soft-tokens {args.soft_tokens} but {args.prompt} holds {len(start)} soft tokens")
    queries, space = soft_prompt_setup(load_causal_lm(), task, soft_tokens=args.soft_tokens or 4,
                                       rank=args.rank or 16, init=args.init or UNINFORMATIVE_INIT, start=start,
                                       seed=args.seed)
    result = tune_soft_prompt(queries.label_logprobs, task, space, sigma=args.sigma or 0.5, steps=args.steps,
                              total_queries=args.total_queries, batch_size=args.batch_size,
                              queries_per_step=args.queries_per_step, lr=args.lr, allocator=args.allocator,
                              seed=args.seed, checkpoint=args.checkpoint, eval_every=args.eval_every,
                              progress=not args.no_progress)
    return result, {"kind": "soft", "soft_tokens": space.k, "prompt": None, "tokens": None, "cost": 0.0}


def _discrete(args, task):
    from blackbox.queries import Budget

    from .prompt_search import run_search

    budget = Budget(max_tokens=args.max_tokens, max_cost=args.max_cost)
    result, extra = run_search(args, task, budget)
    if result is not None:
        extra["prompt"] = result.learned.describe()
    return result, extra


def _print(report: dict, args) -> None:
    if report["prompt"] is not None:
        print(f"prompt: {report['prompt']!r}" if report["kind"] == "soft" or report["prompt"] else "prompt: (the bare "
              "template: no instruction, demonstration or word was learned)")
    nan = float("nan")
    second = (f"label NLL {report.get('label_nll_before', nan):.3f} -> {report.get('label_nll_after', nan):.3f}"
              if "label_nll_after" in report or report["kind"] == "soft" else
              f"answers that are labels {report.get('answers_are_labels_before', nan):.2f} -> "
              f"{report.get('answers_are_labels_after', nan):.2f}")
    print(f"held-out accuracy {report.get('accuracy_before', nan):.3f} -> {report.get('accuracy_after', nan):.3f} "
          f"({second})")
    spent = f"{report['train_queries']} training queries + {report['eval_queries']} evaluation queries"
    if report["kind"] == "discrete":
        _print_search(report)
        u = report["usage"]
        cost = "unknown cost (no price)" if report["cost"] is None else f"${report['cost']:.4f}"
        batched = (f" ({u['batched']} through the Batch API in {u['batches']} batch{'es' if u['batches'] != 1 else ''}: "
                   f"{', '.join(u['batch_ids'])})" if u["batch_ids"] else "")
        spent += (f" over {report['api']}; {u['requests_paid']} requests paid{batched}, {u['from_cache']} from cache, "
                  f"{report['tokens']} tokens, {cost}")
    print(f"{spent}; {report['seconds']:.0f} s ({args.allocator} allocation)")
    if report["stopped"]:
        print(f"stopped: {report['stopped']}")
    for path, what in ((args.save, "prompt file"), (args.report, "report"), (args.plot, "plot")):
        if path:
            print(f"wrote {what}: {path}")


def _print_search(report: dict) -> None:
    """How the search scored prompts (and why), and what the probe cost."""
    s = report["search"]
    how = ("label log-probabilities (one answer token per query)" if s["reward"] == "logprobs" else
           f"sampled answers scored by exact match ({s['samples_per_prompt']} answer(s) per sampled prompt, "
           "each a query)")
    found = "; ".join(f"{f['mode']}: {f['why']}" for f in s["probe"])
    probe = f"; probe: {found}, paid {s['probe_paid']}" if s["probe"] else ""
    print(f"reward: {how}{probe}")
    if s["proposed"]:
        print(f"proposed instructions: {len(s['proposed'])} (in the report)")
    scored = s["selection"]
    if scored:
        accuracy = ", ".join(f"{r['accuracy']:.2f}" if "accuracy" in r else "not finished" for r in scored)
        print(f"selection: the last steps' {len(scored)} distinct prompts on {s['selection_rows']} training rows "
              f"(newest first): accuracy {accuracy}; kept the best ({len(scored) * s['selection_rows']} requests "
              "at most)")
    elif s["selection_rows"]:
        print("selection: nothing to choose (the last steps kept one prompt)")
