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
        if getattr(args, "service_tier", None):
            opts["service_tier"] = args.service_tier
    return opts


def check_local_options(args) -> None:
    """Remote-only options make no sense for the embedded model (and the Batch API and service
    tiers are OpenAI's): say so in one line."""
    if not is_remote(args.model) and (args.max_cost is not None or args.max_tokens is not None):
        raise InputError(f"--max-cost/--max-tokens apply to remote models; {args.model} is free and local")
    openai_only = [flag for flag, given in (("--batch", getattr(args, "batch", False)),
                                            ("--service-tier", getattr(args, "service_tier", None))) if given]
    if openai_only and (not is_remote(args.model) or args.model.startswith("http:")):
        raise InputError(f"{'/'.join(openai_only)}: for OpenAI-compatible endpoints (gpt-vision, openai:<model>); "
                         f"{args.model} is {'a plain JSON endpoint' if is_remote(args.model) else 'local and free'}")
    if getattr(args, "batch", False) and args.no_cache:
        raise InputError("--batch keeps its batch ids and answers in the query cache (a stopped run collects its "
                         "batch from there): drop --no-cache")


def dry_run_report(model, args, map_queries: int) -> dict:
    engine = model.engine
    u = engine.stats
    return {"dry_run": True, "model": model.name, "queries_planned": args.queries, "map_queries": map_queries,
            "scoring": getattr(model, "scoring", None), "requests_per_query": model.requests_per_query,
            "capabilities": getattr(model, "capabilities", None),
            "already_cached": u.cache_hits, "would_send": u.would_send,
            "estimated_tokens": u.estimated_tokens, "estimated_cost": round(u.estimated_cost, 6),
            "estimated_batch_cost": round(u.estimated_batch_cost, 6),
            "batch_ratio": round(u.estimated_batch_cost / u.estimated_cost, 4) if u.estimated_cost else None,
            "batch_discount": engine.prices.discount(engine.model, "batch"), "service_tier": engine.spending.tier,
            "batch": bool(getattr(args, "batch", False)), "detail": getattr(model, "detail", None),
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
    print(f"at most ~{report['estimated_tokens']} tokens{each} (worst-case reservations; actual usage is usually lower)")
    print(prices_line(report))
    cost = report["estimated_batch_cost"] if report.get("batch") else report["estimated_cost"]
    for cap, est, what in ((report["max_tokens"], report["estimated_tokens"], "tokens"),
                           (report["max_cost"], cost, "cost")):
        if cap is not None and est > cap:
            print(f"the {what} cap ({cap}) would stop the run before it finishes")


def prices_line(report: dict) -> str:
    """The money, sent one by one and through the Batch API, side by side (``report``: a dry
    run's ``estimated_cost``, ``estimated_batch_cost``, ``batch_ratio``, ``batch_discount``,
    ``service_tier`` and ``batch``)."""
    tier = f" (service tier {report['service_tier']})" if report.get("service_tier") else ""
    ratio = f", {report['batch_ratio']:.2f}x" if report.get("batch_ratio") is not None else ""
    note = ("" if report.get("batch_discount") is not None
            else " (no batch discount known for this model: priced in full)")
    chosen = "--batch" if report.get("batch") else "add --batch"
    return (f"~${report['estimated_cost']:.4f} sent one by one{tier}; ~${report['estimated_batch_cost']:.4f} "
            f"through the Batch API{ratio}{note} ({chosen}: answers within 24 h, usually minutes)")


def usage_line(model) -> str:
    u = model.usage()
    cost = "unknown cost (no price)" if u["cost"] is None else f"${u['cost']:.4f}"
    prov = model.provenance()
    fp = ",".join(prov.get("system_fingerprint") or []) or "none"
    unusable = f", {u['unusable']} unusable" if u["unusable"] else ""
    ids = u.get("batch_ids") or []
    batched = (f" ({u['batched']} through the Batch API in {len(ids)} batch{'es' if len(ids) != 1 else ''}: "
               f"{', '.join(ids)})" if ids else "")
    return (f"remote usage: {u['budget']['queries']} requests paid{batched}{unusable}, {u['cache_hits']} from cache, "
            f"{u['attempts']} attempts ({u['retries']} retries), {u['budget']['tokens']} tokens, {cost}; "
            f"scoring {prov.get('scoring')}; model {','.join(prov.get('served_models') or []) or prov.get('model')}, "
            f"fingerprint {fp}")


def interrupted_line(model, budget) -> str:
    """What an interrupted paid run kept, and how to resume it (a batch still running is collected
    by the rerun, not paid again)."""
    flying = (model.usage() or {}).get("batches_in_flight") or []
    running = (f"; batch {', '.join(flying)} still runs at the provider: the rerun collects it"
               if flying else "")
    return (f"blackbox: interrupted after {budget.queries} paid requests{running}; every answer received is "
            "cached: rerun the same command to resume (what is cached or in a batch is not paid again)")
