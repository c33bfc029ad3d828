"""Wiring remote models into the commands: model options from the arguments, dry runs, usage lines."""
from __future__ import annotations

from blackbox.errors import InputError

from .options import model_file_options

REMOTE_PREFIXES = ("openai:", "http:")


def is_remote(name: str) -> bool:
    return name == "gpt-vision" or name.startswith(REMOTE_PREFIXES)


def model_options(args, budget) -> dict:
    """Keyword options for load_image_model from the saliency arguments (remote models and model files)."""
    if not is_remote(args.model):
        return model_file_options(args)
    opts = dict(budget=budget, cache=not args.no_cache, concurrency=args.concurrency, rpm=args.rpm,
                tpm=args.tpm, timeout=args.timeout, max_attempts=args.max_attempts, prices=args.prices,
                dry_run=args.dry_run, resolution=args.resolution)
    if args.model.startswith("http:"):
        opts["api_key_env"] = args.api_key_env if args.api_key_env != "OPENAI_API_KEY" else None
    else:
        opts.update(base_url=args.base_url, api_key_env=args.api_key_env, scoring=args.scoring, seed=args.seed,
                    detail=args.detail)
    return opts


def check_local_options(args) -> None:
    """Remote-only money/token caps make no sense for the embedded model: say so."""
    if not is_remote(args.model) and (args.max_cost is not None or args.max_tokens is not None):
        raise InputError(f"--max-cost/--max-tokens apply to remote models; {args.model} is free and local")


def dry_run_report(model, args, map_queries: int) -> dict:
    u = model.engine.stats
    return {"dry_run": True, "model": model.name, "queries_planned": args.queries, "map_queries": map_queries,
            "scoring": getattr(model, "scoring", None), "requests_per_query": model.requests_per_query,
            "capabilities": getattr(model, "capabilities", None),
            "already_cached": u.cache_hits, "would_send": u.would_send,
            "estimated_tokens": u.estimated_tokens, "estimated_cost": round(u.estimated_cost, 6),
            "detail": getattr(model, "detail", None),
            "tokens_per_request": round(u.estimated_tokens / u.would_send) if u.would_send else None,
            "max_tokens": args.max_tokens, "max_cost": args.max_cost}


def print_dry_run(report: dict) -> None:
    probed = (report.get("capabilities") or {}).get("probed", True)
    print(f"dry run for {report['model']}: --queries {report['queries_planned']} pays for "
          f"{report['map_queries']} map queries at {report['requests_per_query']} request(s) each "
          f"(+ the capability probe); {report['already_cached']} answers already cached, "
          f"{report['would_send']} requests would be sent")
    if not probed:
        print("the endpoint's capabilities are not known yet (the probe is not cached): assumed logprobs; "
              "without them the fallback sends samples, still within --queries")
    each = (f" (~{report['tokens_per_request']} per request"
            + (f", image detail {report['detail']}" if report.get("detail") else "") + ")"
            if report.get("tokens_per_request") else "")
    print(f"at most ~{report['estimated_tokens']} tokens{each}, ~${report['estimated_cost']:.4f} "
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
    unusable = f", {u['unusable']} unusable" if u["unusable"] else ""
    return (f"remote usage: {u['budget']['queries']} requests paid{unusable}, {u['cache_hits']} from cache, "
            f"{u['attempts']} attempts ({u['retries']} retries), {u['budget']['tokens']} tokens, {cost}; "
            f"scoring {prov.get('scoring')}; model {','.join(prov.get('served_models') or []) or prov.get('model')}, "
            f"fingerprint {fp}")
