"""Option types and option groups shared by the subcommands (typed numbers with one-line errors)."""
from __future__ import annotations

import argparse

ALLOCATOR_CHOICES = ("uniform", "neyman", "flops")


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_remote_options(parser: argparse.ArgumentParser, images: bool = True,
                       title: str = "remote models (gpt-vision, openai:<model>, http:<spec.json>)",
                       concurrency: int = 16) -> None:
    """The endpoint, budget and retry options; ``images=False`` leaves out the vision-only ones."""
    g = parser.add_argument_group(title)
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default: OPENAI_API_KEY)")
    g.add_argument("--base-url", metavar="URL",
                   help="OpenAI-compatible base URL (default: $OPENAI_BASE_URL or api.openai.com)")
    g.add_argument("--concurrency", type=positive_int, default=concurrency, metavar="N",
                   help=f"requests in flight (default: {concurrency})")
    g.add_argument("--rpm", type=nonneg_float, metavar="N", help="proactive limit: requests per minute")
    g.add_argument("--tpm", type=nonneg_float, metavar="N", help="proactive limit: tokens per minute")
    g.add_argument("--timeout", type=nonneg_float, default=60.0, metavar="S", help="seconds per attempt (default: 60)")
    g.add_argument("--max-attempts", type=positive_int, default=6, metavar="N", help="attempts per request (default: 6)")
    g.add_argument("--max-cost", type=nonneg_float, metavar="USD",
                   help="hard cap on money spent (needs a price for the model)")
    g.add_argument("--max-tokens", type=positive_int, metavar="N", help="hard cap on tokens spent")
    g.add_argument("--prices", metavar="JSON", help="price table {model: {input, output}} in USD per 1M tokens")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the query cache")
    if images:
        g.add_argument("--resolution", type=positive_int, metavar="PX",
                       help="longer side of the image sent (default: the model's own, 512 for chat models)")
        g.add_argument("--scoring", choices=("auto", "logprob", "confidence", "frequency"), default="auto",
                       help="how an answer becomes a score (default: auto = probe the endpoint)")
        g.add_argument("--dry-run", action="store_true", help="send nothing; print what the run would spend")


def add_output_options(parser: argparse.ArgumentParser, *, json_help: str = "print one JSON object with the results",
                       progress: bool = True) -> None:
    """``--json`` and ``--no-progress``: how every command reports."""
    parser.add_argument("--json", action="store_true", help=json_help)
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_training_options(group, *, lr: float | None, lr_help: str) -> None:
    """The options every learning command shares: allocator, Adam step, seed, checkpoint,
    evaluations and the learning-curve plot."""
    group.add_argument("--allocator", choices=ALLOCATOR_CHOICES, default="uniform",
                       help="how each step's queries are shared among its examples or images (default: uniform)")
    group.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--checkpoint", metavar="NPZ", help="save progress here and resume from it (same settings)")
    group.add_argument("--eval-every", type=positive_int, metavar="N",
                       help="also measure held-out accuracy every N steps (default: only at the start and the end)")
    group.add_argument("--plot", metavar="PNG", help="write the learning curves")
