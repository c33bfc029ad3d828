"""What a remote engine may spend: worst-case reservations on a Budget, and their settlement.

Every attempt that can be billed holds one query plus its worst-case tokens and cost while it is
in flight (first attempts, probes, samples and retries alike). Any way of sending goes through
the same steps:

* :meth:`Spending.reserve_all` before a batch is sent: all of it fits, or nothing is held and
  :class:`~blackbox.errors.BudgetExceeded` is raised;
* :meth:`Spending.top_up` (or :meth:`Spending.reserve` after a billed attempt) right before an
  attempt: the worst case may have grown since;
* then one ending per attempt: :meth:`Spending.charge` an answer from the usage it reports,
  :meth:`Spending.settle` an attempt that may have been billed at its reservation (see
  :mod:`.outcomes`), or :meth:`Spending.release` what cannot have been billed.

The worst case per request (:meth:`Spending.bound`) is the static token estimate until the
endpoint has billed a prompt, then ``factor`` x the largest prompt it has billed plus the maximum
output; the factor starts at 1.25 and, when an answer bills more than its reservation, becomes
twice the growth seen (at most 64), and the slow-start window (:class:`SlowStart`) falls back to
one request, so a misjudged bound is found out before many requests are in flight on it.

Prices: a request sent one by one is priced at the engine's service tier (``tier``: None, or
``flex``); one sent through the Batch API (``batch=True``) at the model's batch share of the
price (:meth:`~.pricing.PriceTable.cost`), for its reservation and its charge alike.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from blackbox.errors import BudgetExceeded, InputError
from blackbox.queries import Budget, Reservation

from .pricing import PriceTable, default_token_estimate, max_output_tokens

FIRST_FACTOR = 1.25  # the bound before any answer billed more than its reservation
MAX_FACTOR = 64.0
PROMPT_SLACK = 16    # tokens added to the scaled prompt


@dataclass(frozen=True)
class Charge:
    """What an answer cost: the tokens it reported (0 and 0 when it reported none: then it was
    charged its reservation), its price (None: the model has none) and whether it billed more
    than its reservation."""

    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    overshoot: bool


class SlowStart:
    """How many requests a token- or money-capped engine may have in flight: one at first,
    doubled per answer billed within its reservation (up to ``limit``), back to one after an
    answer that billed more. What the endpoint really bills is learned before many requests are
    in flight on a guess."""

    def __init__(self, limit: int = 1):
        self.limit = int(limit)
        self.size = 1
        self._lock = threading.Lock()

    def after(self, overshoot: bool) -> None:
        with self._lock:
            self.size = 1 if overshoot else min(self.limit, 2 * self.size)


class Spending:
    """Reservations and their settlement for one engine's requests (thread-safe).

    ``model`` prices requests that name none; ``token_estimate(request)`` is the static worst
    case; ``window`` is the slow start the sender obeys when tokens or money are capped;
    ``tier`` is the service tier requests sent one by one are billed at (None: the standard one)."""

    def __init__(self, budget: Budget, prices: PriceTable, model: str | None = None,
                 token_estimate: Callable[[dict], int] = default_token_estimate, window: SlowStart | None = None,
                 tier: str | None = None):
        if budget.max_cost is not None and (model is None or prices.price(model) is None):
            raise InputError(f"no price for model {model!r}, so a --max-cost cap cannot be enforced: "
                             "add it to prices.json in the user config folder or pass --prices FILE")
        self.budget, self.prices, self.model, self.tier = budget, prices, model, tier
        self.token_estimate = token_estimate
        self.window = window if window is not None else SlowStart()
        self._lock = threading.Lock()
        self._largest_prompt = 0  # the largest prompt the endpoint has billed for one request
        self._factor = FIRST_FACTOR

    @property
    def capped(self) -> bool:
        """Tokens or money are capped (then the sender keeps to the slow-start window)."""
        return self.budget.max_tokens is not None or self.budget.max_cost is not None

    # -- the worst case -------------------------------------------------------------------------
    def bound(self, request: dict) -> int:
        """Worst-case tokens for one request (see the module's docstring)."""
        if not self._largest_prompt:
            return int(self.token_estimate(request))
        return int(self._factor * self._largest_prompt) + PROMPT_SLACK + max_output_tokens(request)

    def _tier(self, batch: bool) -> str | None:
        return "batch" if batch else self.tier

    def cost_bound(self, request: dict, tokens: int, batch: bool = False) -> float | None:
        """The price of ``tokens`` for ``request``, of which at most its output limit is output
        (``batch``: at the Batch API's price)."""
        model = request.get("model") or self.model
        out = min(max_output_tokens(request), tokens)  # the rest of the bound is prompt
        return self.prices.cost(model, tokens - out, out, self._tier(batch)) if model else None

    def estimate(self, request: dict, batch: bool = False) -> tuple[int, float]:
        """``(tokens, cost)`` a request would reserve now (what a dry run adds up)."""
        tokens = self.bound(request)
        return tokens, self.cost_bound(request, tokens, batch) or 0.0

    # -- holding --------------------------------------------------------------------------------
    def reserve(self, request: dict, batch: bool = False) -> Reservation:
        tokens, cost = self.estimate(request, batch)
        return self.budget.reserve(1, tokens, cost)

    def reserve_all(self, requests: Sequence[dict], batch: bool = False) -> list[Reservation]:
        """One reservation per request, or none at all (BudgetExceeded) when they do not all fit."""
        held = []
        try:
            for request in requests:
                held.append(self.reserve(request, batch))
        except BudgetExceeded:
            for reservation in held:
                self.budget.release(reservation)
            raise
        return held

    def top_up(self, reservation: Reservation, request: dict) -> None:
        """Hold more for ``reservation`` when the bound has grown (BudgetExceeded if it does not fit)."""
        tokens, cost = self.estimate(request)
        if tokens > reservation.tokens:
            self.budget.grow(reservation, tokens - reservation.tokens, max(0.0, cost - reservation.cost))

    def deadline(self, timeout: float) -> float:
        """Seconds one attempt may take: ``timeout``, cut to the budget's deadline
        (BudgetExceeded once it has passed)."""
        left = self.budget.seconds_left()
        if left is None:
            return timeout
        if left <= 0:
            raise BudgetExceeded(f"deadline reached: the run may take {self.budget.max_seconds:g} s (--deadline)")
        return min(timeout, left)

    # -- endings --------------------------------------------------------------------------------
    def charge(self, reservation: Reservation, request: dict, usage: tuple[int, int] | None,
               batch: bool = False) -> Charge:
        """Settle an answer from the ``(prompt, completion)`` tokens it reports (no usage: its
        reservation, never under-counted); grow the bound when it billed more than reserved.
        ``batch``: the answer came through the Batch API (priced at its share)."""
        prompt, completion = usage if usage else (0, 0)
        model = request.get("model") or self.model
        cost = self.prices.cost(model, prompt, completion, self._tier(batch)) if model else None
        if not usage:
            self.settle(reservation)
            self.window.after(False)
            return Charge(0, 0, cost, False)
        reserved = reservation.tokens
        self.settle(reservation, tokens=prompt + completion, cost=cost if cost is not None else reservation.cost)
        with self._lock:
            overshoot = prompt + completion > reserved and self._largest_prompt > 0
            if overshoot:  # the endpoint bills more than we thought: reserve twice its growth from now on
                self._factor = min(max(self._factor, 2.0 * prompt / self._largest_prompt), MAX_FACTOR)
            self._largest_prompt = max(self._largest_prompt, prompt)
            self.window.after(overshoot)
        return Charge(prompt, completion, cost, overshoot)

    def settle(self, reservation: Reservation, tokens: int | None = None, cost: float | None = None) -> None:
        """Settle once (default: at the reservation); spending reported after a reservation was
        given back is still recorded."""
        with self._lock:
            if not reservation.settled:
                self.budget.settle(reservation, tokens=tokens, cost=cost)
                return
        self.budget.record(1, reservation.tokens if tokens is None else tokens,
                           reservation.cost if cost is None else cost)

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation no billed attempt used (a no-op once settled)."""
        with self._lock:
            if not reservation.settled:
                self.budget.release(reservation)
