"""What a method's run records: its candidates in the order their selection scores were known, and
what it spent. Checkpoints (the program at 200 or 500 metric calls) are read off one run."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .programs import Program, program_from_dict


class OutOfCalls(Exception):
    """The method asked for more metric calls than its budget has left."""


@dataclass
class Candidate:
    calls: int            # metric calls spent when this candidate's score was known
    score: float | None   # its selection score (validation accuracy); None for a policy's current prompt
    program: Program


@dataclass
class MethodRun:
    """``pick``: ``best`` (the best-scoring candidate known within the budget; ties go to the
    earliest, as DSPy's random search does) or ``last`` (a policy's prompt at the budget)."""

    pick: str = "best"
    candidates: list[Candidate] = field(default_factory=list)
    metric_calls: int = 0
    lm_calls: int = 0          # requests to the model on the method's behalf (metric, proposals, retries)
    paid_requests: int = 0     # of those, answered by the server in this process (not from a cache)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)

    def add(self, calls: int, score: float | None, program: Program) -> None:
        self.candidates.append(Candidate(int(calls), score, program))

    def at(self, budget: int) -> Program | None:
        """The program the method would return had it stopped at ``budget`` metric calls."""
        known = [c for c in self.candidates if c.calls <= budget]
        if not known:
            return None
        if self.pick == "last":
            return known[-1].program
        best = max(c.score if c.score is not None and not math.isnan(c.score) else -1.0 for c in known)
        return next(c.program for c in known if (c.score if c.score is not None else -1.0) == best)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "candidates"}
        d["candidates"] = [{"calls": c.calls, "score": c.score, "program": c.program.to_dict()}
                           for c in self.candidates]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MethodRun":
        run = cls(**{k: v for k, v in d.items() if k != "candidates"})
        run.candidates = [Candidate(c["calls"], c["score"], program_from_dict(c["program"])) for c in d["candidates"]]
        return run


class Tally:
    """An engine as a method sees it: counts what is asked of it (cached answers included, as a
    metric call is a metric call either way) and the tokens those answers took; everything else is
    the engine's (``budget``, ``stats``)."""

    def __init__(self, engine):
        self.engine = engine
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.paid_before = engine.stats.sent
        self.started = time.perf_counter()

    def map(self, requests, *args, **kwargs):
        responses = self.engine.map(requests, *args, **kwargs)
        self.requests += len(requests)
        self.prompt_tokens += sum(r.prompt_tokens for r in responses)
        self.completion_tokens += sum(r.completion_tokens for r in responses)
        return responses

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def settle(self, run: MethodRun, metric_calls: int) -> MethodRun:
        """Write what was spent into ``run``."""
        run.metric_calls, run.lm_calls = int(metric_calls), self.requests
        run.paid_requests = self.engine.stats.sent - self.paid_before
        run.prompt_tokens, run.completion_tokens = self.prompt_tokens, self.completion_tokens
        run.seconds = round(time.perf_counter() - self.started, 1)
        return run
