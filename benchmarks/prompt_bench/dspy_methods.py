"""DSPy's optimisers as peers, against the same served model (a benchmark dependency only).

DSPy talks to the server through its own client (``dspy.LM("openai/<model>", api_base=...)``)
with its on-disk cache in the user cache folder (``DSPY_CACHEDIR``), so a rerun replays what it
already asked. The student is ``dspy.Predict(text -> label: Literal[labels])`` with the neutral
instruction. The metric is the same lenient parse as every other program's; metric calls are
counted as for every other method (one run of the task program on one example) by a DSPy callback,
which also caps them; LM calls and tokens are read from the LMs' histories.

* :func:`bfsrs`: ``BootstrapFewShotWithRandomSearch`` (DSPy's defaults, candidates chosen so the
  budget fits); the callback stops it at the budget and records each candidate's validation
  score and the calls spent when it was known (the checkpoints).
* :func:`mipro_light`: ``MIPROv2(auto="light")``; its budget is not settable, so it is one point at
  the calls it spent (below its light need, as in a smoke run, it runs with ``auto=None``, 2
  candidates and as many trials as fit).
* :func:`gepa`: ``GEPA(max_metric_calls=budget)``, the same served model reflecting; checkpoints
  from its candidates' discovery counts (``track_stats``).
"""
from __future__ import annotations

import os
from typing import Literal, Sequence

from blackbox.paths import cache_dir

from .programs import DSPyProgram, parse_label, task_instruction
from .runs import MethodRun
from .tasks import Task

ANSWER_TOKENS = 64      # the task model's completion cap (DSPy's field markers around the label)
PROPOSER_TOKENS = 512   # instructions proposed by MIPROv2 / reflections of GEPA
BOOTSTRAP_CALLS = 4     # metric calls a BootstrapFewShot candidate spends on the trainset (estimate)
NO_ERROR_CAP = 10 ** 6  # a parse failure scores 0 and the run goes on


def load_dspy():
    """Import DSPy with its cache in the user cache folder and LiteLLM's price map read locally."""
    os.environ.setdefault("DSPY_CACHEDIR", str(cache_dir("dspy")))
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import dspy
    except ImportError:
        raise SystemExit("DSPy is not installed: run `make prompt-bench-setup`") from None
    return dspy


def signature(instruction: str, labels: Sequence[str]):
    dspy = load_dspy()
    return dspy.Signature({"text": (str, dspy.InputField()),
                           "label": (Literal[tuple(labels)], dspy.OutputField())}, instruction)


def adapter_parts(instruction: str, labels: Sequence[str], demos: Sequence[dict]) -> dict:
    """What DSPy's ChatAdapter needs to write a program's messages (see DSPyProgram)."""
    dspy = load_dspy()
    return {"signature": signature(instruction, labels), "adapter": dspy.ChatAdapter(),
            "demos": [dspy.Example(**d) for d in demos]}


class BudgetSpent(BaseException):
    """The metric-call cap is reached (a BaseException: DSPy's per-example error handling and its
    callback guard, which catch Exception, must not swallow it)."""


class Metric:
    """Correct or not, by the benchmark's parse (DSPy's own count of metric calls: answers that
    could not be parsed never reach it). Called by GEPA (with a predictor name) it also returns
    the gold label as feedback."""

    def __init__(self, labels: Sequence[str]):
        self.labels, self.calls = tuple(labels), 0

    def __call__(self, example, prediction, trace=None, pred_name=None, pred_trace=None):
        self.calls += 1
        score = float(parse_label(str(getattr(prediction, "label", "") or ""), self.labels) == example.label)
        if pred_name is None:
            return score
        import dspy

        return dspy.Prediction(score=score, feedback=f"The correct label is {example.label}.")


def _watcher(labels: Sequence[str], cap: int | None):
    """A DSPy callback that counts metric calls as every other method does (one run of the task
    program on one example, whether or not its answer parses), stops the run before the call past
    ``cap``, and records each finished Evaluate (a BFSRS candidate on the validation rows): the
    calls spent so far, the score, the program. Runs of other programs (MIPROv2's proposer,
    GEPA's reflection) are not counted: their signatures differ."""
    from dspy.utils.callback import BaseCallback

    class Watcher(BaseCallback):
        def __init__(self):
            self.calls, self.started, self.done = 0, {}, []

        def on_module_start(self, call_id, instance, inputs):
            sig = getattr(instance, "signature", None)
            if sig is None or set(sig.input_fields) != {"text"} or set(sig.output_fields) != {"label"}:
                return
            if cap is not None and self.calls >= cap:
                raise BudgetSpent()
            self.calls += 1

        def on_evaluate_start(self, call_id, instance, inputs):
            self.started[call_id] = inputs.get("program")

        def on_evaluate_end(self, call_id, outputs, exception=None):
            program = self.started.pop(call_id, None)
            if outputs is not None and program is not None:
                self.done.append((self.calls, float(outputs.score) / 100, as_program(program, labels)))

    return Watcher()


def lm(endpoint, temperature: float, max_tokens: int):
    return load_dspy().LM(f"openai/{endpoint.model}", api_base=endpoint.base_url, api_key="local",
                          model_type="chat", temperature=temperature, max_tokens=max_tokens, cache=True,
                          num_retries=3)


def examples(rows):
    dspy = load_dspy()
    return [dspy.Example(text=t, label=y).with_inputs("text") for t, y in rows]


def as_program(module, labels: Sequence[str]) -> DSPyProgram:
    """A compiled DSPy Predict as a benchmark program (instruction and demos' fields)."""
    predictor = module.predictors()[0]
    demos = tuple({k: v for k, v in dict(d).items() if k in ("text", "label", "augmented")}
                  for d in predictor.demos)
    return DSPyProgram(predictor.signature.instructions, demos, tuple(labels))


def spent(run: MethodRun, watcher, metric: Metric, lms, seconds: float) -> MethodRun:
    """Write the metric calls, LM calls, those DSPy did not take from its cache and their tokens
    (DSPy keeps no usage for a cached answer: tokens count answers paid in this process only)."""
    history = [h for m in lms for h in m.history]
    run.metric_calls, run.lm_calls = watcher.calls, len(history)
    run.paid_requests = sum(bool(h.get("usage")) for h in history)
    run.prompt_tokens = sum(int((h.get("usage") or {}).get("prompt_tokens") or 0) for h in history)
    run.completion_tokens = sum(int((h.get("usage") or {}).get("completion_tokens") or 0) for h in history)
    run.seconds = round(seconds, 1)
    run.notes["dspy_metric_calls"] = metric.calls
    return run


def student(task: Task):
    return load_dspy().Predict(signature(task_instruction(task.description), task.labels))


def bfsrs(task: Task, budget: int, seed: int, endpoint, train, val) -> MethodRun:
    """BootstrapFewShotWithRandomSearch with DSPy's defaults (up to 4 bootstrapped and 16 labelled
    demos); its 3 fixed candidates plus as many random ones as the budget is estimated to hold.
    (DSPy seeds its candidates 0, 1, ... itself; ``seed`` varies the rows it is given.)"""
    import time

    dspy = load_dspy()
    metric, watcher, task_lm = Metric(task.labels), _watcher(task.labels, budget), lm(endpoint, 0.0, ANSWER_TOKENS)
    n = max(1, budget // (len(val) + BOOTSTRAP_CALLS) - 3)
    optimizer = dspy.BootstrapFewShotWithRandomSearch(metric=metric, num_candidate_programs=n, num_threads=1,
                                                      max_errors=NO_ERROR_CAP)
    started, run = time.perf_counter(), MethodRun()
    with dspy.context(lm=task_lm, callbacks=[watcher]):
        try:
            optimizer.compile(student(task), trainset=examples(train), valset=examples(val))
        except BudgetSpent:
            run.notes["stopped"] = f"metric-call cap {budget} reached"
    for calls, score, program in watcher.done:
        run.add(calls, score, program)
    run.notes["candidate_programs"] = n + 3
    return spent(run, watcher, metric, [task_lm], time.perf_counter() - started)


MIPRO_LIGHT_NEED = 300  # below this many metric calls MIPROv2's light setting cannot run as designed


def mipro_light(task: Task, budget: int, seed: int, endpoint, train, val) -> MethodRun:
    """MIPROv2(auto="light"): one point at the metric calls it spent, whatever ``budget`` says
    (below MIPRO_LIGHT_NEED: auto=None, 2 candidates, the trials that fit, no minibatches)."""
    import time

    dspy = load_dspy()
    metric, watcher, task_lm = Metric(task.labels), _watcher(task.labels, None), lm(endpoint, 0.0, ANSWER_TOKENS)
    prompt_lm = lm(endpoint, 1.0, PROPOSER_TOKENS)
    light = budget >= MIPRO_LIGHT_NEED
    optimizer = dspy.MIPROv2(metric=metric, prompt_model=prompt_lm, task_model=task_lm, num_threads=1,
                             max_errors=NO_ERROR_CAP, seed=seed, verbose=False,
                             **({"auto": "light"} if light else {"auto": None, "num_candidates": 2}))
    options = {} if light else {"num_trials": max(1, budget // len(val) - 2), "minibatch": False}
    started = time.perf_counter()
    with dspy.context(lm=task_lm, callbacks=[watcher]):
        best = optimizer.compile(student(task), trainset=examples(train), valset=examples(val), **options)
    run = spent(MethodRun(), watcher, metric, [task_lm, prompt_lm], time.perf_counter() - started)
    run.add(watcher.calls, None, as_program(best, task.labels))
    run.notes["setting"] = "auto=light" if light else f"auto=None, 2 candidates, {options['num_trials']} trials"
    return run


def gepa(task: Task, budget: int, seed: int, endpoint, train, val) -> MethodRun:
    """GEPA(max_metric_calls=budget), reflecting with the same served model; a candidate counts
    from its discovery plus one validation pass (when its score is known)."""
    import time

    dspy = load_dspy()
    metric, watcher, task_lm = Metric(task.labels), _watcher(task.labels, None), lm(endpoint, 0.0, ANSWER_TOKENS)
    reflection_lm = lm(endpoint, 1.0, PROPOSER_TOKENS)
    optimizer = dspy.GEPA(metric=metric, max_metric_calls=budget, reflection_lm=reflection_lm, num_threads=1,
                          track_stats=True, seed=seed)
    started = time.perf_counter()
    with dspy.context(lm=task_lm, callbacks=[watcher]):
        best = optimizer.compile(student(task), trainset=examples(train), valset=examples(val))
    run = spent(MethodRun(), watcher, metric, [task_lm, reflection_lm], time.perf_counter() - started)
    found = best.detailed_results
    order = sorted(range(len(found.candidates)), key=lambda i: found.discovery_eval_counts[i])
    for i in order:
        run.add(found.discovery_eval_counts[i] + len(val), found.val_aggregate_scores[i],
                as_program(found.candidates[i], task.labels))
    run.notes["gepa_metric_calls"] = found.total_metric_calls
    return run
