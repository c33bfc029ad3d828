"""``blackbox cache``: inspect or clear the remote query cache."""
from __future__ import annotations

import json

from .options import add_output_options, nonneg_float


def add_parser(sub) -> None:
    c = sub.add_parser("cache", help="inspect or clear the remote query cache",
                       description="The query cache keeps every remote answer (SQLite in the user cache folder), "
                                   "so reruns and resumed runs pay nothing twice. Keys never include API keys.")
    c.add_argument("action", choices=("info", "clear"), help="info: where and how big; clear: delete entries")
    c.add_argument("--older-than", type=nonneg_float, metavar="DAYS", help="clear only entries older than DAYS")
    add_output_options(c, json_help="print JSON", progress=False)


def run(args) -> int:
    from blackbox.adapters.remote.cache import ResponseCache

    if args.action == "clear":
        cache = ResponseCache(repair=True)  # a damaged file is removed: clearing must always work
        n = cache.clear(args.older_than) if not cache.repaired else 0
        info = {"cleared": n, "repaired": cache.repaired, **cache.stats()}
        cache.close()
        if args.json:
            print(json.dumps(info))
        elif cache.repaired:
            print(f"the query cache {info['path']} was damaged: removed it and started an empty one")
        else:
            print(f"cleared {n} cached answers from {info['path']}")
        return 0
    cache = ResponseCache()
    info = cache.stats()
    cache.close()
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['path']}: {info['entries']} cached answers, {info['disk_bytes'] / 1e6:.2f} MB on disk")
    return 0
