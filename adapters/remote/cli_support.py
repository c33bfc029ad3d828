"""Command-line pieces for remote models: options, the ``serve`` and ``cache`` commands, reports."""
from __future__ import annotations

import argparse
import os
import sys

from blackbox.cli.arg_types import nonneg_float as _nonneg_float
from blackbox.cli.arg_types import positive_int as _pos_int

REMOTE_PREFIXES = ("openai:", "http:")


def is_remote(name: str) -> bool:
    return name == "gpt-vision" or name.startswith(REMOTE_PREFIXES)


def add_remote_options(parser: argparse.ArgumentParser, images: bool = True,
                       title: str = "remote models (gpt-vision, openai:<model>, http:<spec.json>)",
                       concurrency: int = 16) -> None:
    """The endpoint, budget and retry options; ``images=False`` leaves out the vision-only ones."""
    g = parser.add_argument_group(title)
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default: OPENAI_API_KEY)")
    g.add_argument("--base-url", metavar="URL", help="OpenAI-compatible base URL (default: $OPENAI_BASE_URL or api.openai.com)")
    g.add_argument("--concurrency", type=_pos_int, default=concurrency, metavar="N",
                   help=f"requests in flight (default: {concurrency})")
    g.add_argument("--rpm", type=_nonneg_float, metavar="N", help="proactive limit: requests per minute")
    g.add_argument("--tpm", type=_nonneg_float, metavar="N", help="proactive limit: tokens per minute")
    g.add_argument("--timeout", type=_nonneg_float, default=60.0, metavar="S", help="seconds per attempt (default: 60)")
    g.add_argument("--max-attempts", type=_pos_int, default=6, metavar="N", help="attempts per request (default: 6)")
    g.add_argument("--max-cost", type=_nonneg_float, metavar="USD", help="hard cap on money spent (needs a price for the model)")
    g.add_argument("--max-tokens", type=_pos_int, metavar="N", help="hard cap on tokens spent")
    g.add_argument("--prices", metavar="JSON", help="price table {model: {input, output}} in USD per 1M tokens")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the query cache")
    if images:
        g.add_argument("--resolution", type=_pos_int, metavar="PX", help="longer side of the image sent (default: 512)")
        g.add_argument("--scoring", choices=("auto", "logprob", "confidence", "frequency"), default="auto",
                       help="how an answer becomes a score (default: auto = probe the endpoint)")
        g.add_argument("--dry-run", action="store_true", help="send nothing; print what the run would spend")


def model_options(args, budget) -> dict:
    """Keyword options for load_image_model from the saliency arguments (remote models only)."""
    if not is_remote(args.model):
        return {}
    opts = dict(base_url=args.base_url, api_key_env=args.api_key_env, budget=budget, cache=not args.no_cache,
                concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm, timeout=args.timeout,
                max_attempts=args.max_attempts, prices=args.prices, dry_run=args.dry_run)
    if args.model.startswith("http:"):
        opts.pop("api_key_env")
        opts.pop("base_url")
        opts["api_key_env"] = args.api_key_env if args.api_key_env != "OPENAI_API_KEY" else None
    else:
        opts.update(resolution=args.resolution, scoring=args.scoring, seed=args.seed)
    return opts


def check_local_options(args) -> None:
    """Remote-only money/token caps make no sense for the embedded model: say so."""
    from blackbox.errors import InputError

    if not is_remote(args.model) and (args.max_cost is not None or args.max_tokens is not None):
        raise InputError(f"--max-cost/--max-tokens apply to remote models; {args.model} is free and local")


def dry_run_report(model, args) -> dict:
    u = model.engine.stats
    return {"dry_run": True, "model": model.name, "queries_planned": args.queries,
            "already_cached": u.cache_hits, "would_send": u.would_send,
            "estimated_tokens": u.estimated_tokens, "estimated_cost": round(u.estimated_cost, 6),
            "max_tokens": args.max_tokens, "max_cost": args.max_cost}


def print_dry_run(report: dict) -> None:
    print(f"dry run for {report['model']}: {report['queries_planned']} queries planned, "
          f"{report['already_cached']} already cached, {report['would_send']} requests would be sent "
          f"(including the capability probe unless cached)")
    print(f"at most ~{report['estimated_tokens']} tokens, ~${report['estimated_cost']:.4f} "
          "(worst-case reservations; actual usage is usually lower)")
    for cap, est, what in ((report["max_tokens"], report["estimated_tokens"], "tokens"),
                           (report["max_cost"], report["estimated_cost"], "cost")):
        if cap is not None and est > cap:
            print(f"the {what} cap ({cap}) would stop the run before it finishes")


def usage_line(model) -> str:
    u = model.usage()
    cost = "unknown cost (no price)" if u["cost"] is None else f"${u['cost']:.4f}"
    prov = model.provenance()
    fp = ",".join(prov.get("system_fingerprint") or []) or "none"
    return (f"remote usage: {u['sent']} requests paid, {u['cache_hits']} from cache, {u['attempts']} attempts "
            f"({u['retries']} retries), {u['prompt_tokens'] + u['completion_tokens']} tokens, {cost}; "
            f"scoring {prov.get('scoring')}; model {','.join(prov.get('served_models') or []) or prov.get('model')}, "
            f"fingerprint {fp}")


# -- serve and cache commands ---------------------------------------------------------------------
def add_remote_commands(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible server backed by the embedded model (offline checks)",
                       description="Serve the embedded EfficientNet-Lite0 as an OpenAI-compatible vision chat "
                                   "model ('efficientnet-lite0'): /v1/models and /v1/chat/completions answering "
                                   "'Is there a {label} in this image?' with logprobs. Then run e.g.\n"
                                   "  blackbox saliency coffee.png --model openai:efficientnet-lite0 "
                                   "--base-url http://127.0.0.1:8000/v1 --target espresso",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free port)")
    s.add_argument("--require-key-env", metavar="VAR", help="require the API key held in this environment variable")
    s.add_argument("--latency", type=_nonneg_float, default=0.0, metavar="S", help="add S seconds per request")
    s.add_argument("--no-logprobs", action="store_true", help="never return logprobs (to try the fallbacks)")
    s.add_argument("--verbose", action="store_true", help="log every request line to stderr")

    c = sub.add_parser("cache", help="inspect or clear the remote query cache",
                       description="The query cache keeps every remote answer (SQLite in the user cache folder), "
                                   "so reruns and resumed runs pay nothing twice. Keys never include API keys.")
    c.add_argument("action", choices=("info", "clear"), help="info: where and how big; clear: delete entries")
    c.add_argument("--older-than", type=_nonneg_float, metavar="DAYS", help="clear only entries older than DAYS")
    c.add_argument("--json", action="store_true", help="print JSON")


def cmd_serve(args) -> int:
    from blackbox.errors import InputError

    from .serve import FaultPlan, serve

    key = None
    if args.require_key_env:
        key = os.environ.get(args.require_key_env)
        if not key:
            raise InputError(f"--require-key-env {args.require_key_env}: that environment variable is empty")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"blackbox: warning: serving on {args.host}, not loopback: others on the network can query it",
              file=sys.stderr)
    try:
        serve(args.host, args.port, announce=lambda m: print(m, flush=True),
              faults=FaultPlan(latency=args.latency, api_key=key), no_logprobs=args.no_logprobs,
              verbose=args.verbose)
    except OSError as exc:
        raise InputError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def cmd_cache(args) -> int:
    import json

    from .cache import ResponseCache

    cache = ResponseCache()
    if args.action == "clear":
        n = cache.clear(args.older_than)
        info = {"cleared": n, **cache.stats()}
        print(json.dumps(info) if args.json else f"cleared {n} cached answers from {info['path']}")
        return 0
    info = cache.stats()
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['path']}: {info['entries']} cached answers, {info['disk_bytes'] / 1e6:.2f} MB on disk")
    return 0
