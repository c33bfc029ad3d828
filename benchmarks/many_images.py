"""Benchmark of many images in one call: images per minute for the serial, process-pool and Ray
executors on the embedded model, and what Ray adds per image.

Each configuration explains the same N photos (the bundled sample photos, repeated) with the
same settings, end to end as a user runs it: worker start-up (spawning, importing, building the
model) is included, a Ray cluster's own start is not (a cluster is up before work is sent to it;
its start is reported apart; one discarded warm-up run per configuration takes the one-time imports
out). Start-up is also measured alone, with one 2-query image per worker, so the table gives the
throughput once workers are up as well.

* ``serial``: one process, onnxruntime's default intra-op threads (one per core);
* ``serial-1t``: one process, one intra-op thread (what each pool worker gets);
* ``pool``: ``--workers`` spawned processes, one intra-op thread each;
* ``ray``: ``--workers`` Ray tasks of one CPU each on a local cluster; ``ray-1w``: one task at a
  time, for Ray's overhead per image: (ray-1w steady seconds - serial-1t steady seconds) / N.

Timings need an idle machine. ``--check`` runs a tiny configuration and writes nothing.
Run: ``python -m benchmarks.many_images`` (final: ``--images 32 --queries 500 --repeats 3``, about
10 minutes on 2 cores); writes benchmarks/results/many_images.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.harness import RESULTS, mean_ci

CONFIGS = {  # name: (executor, workers, model options)
    "serial": ("serial", None, {}),
    "serial-1t": ("serial", None, {"threads": 1}),
    "pool": ("pool", "W", {}),
    "ray": ("ray", "W", {}),
    "ray-1w": ("ray", 1, {}),
}


def photos(n: int) -> dict:
    from blackbox.sample_images import SAMPLE_IMAGES, load_sample

    names = list(SAMPLE_IMAGES)
    base = {name: load_sample(name) for name in names}
    return {f"{names[i % len(names)]}-{i:03d}": base[names[i % len(names)]] for i in range(n)}


def timed_run(images: dict, config: str, workers: int, queries: int, grid: int) -> tuple[float, list]:
    import blackbox
    from blackbox.adapters import model_spec

    executor, count, options = CONFIGS[config]
    t0 = time.perf_counter()
    batch = blackbox.explain_many(images, model_spec(**options), queries=queries, grid=grid, executor=executor,
                                  workers=workers if count == "W" else count, progress=False)
    seconds = time.perf_counter() - t0
    assert all(r.status == "done" for r in batch), [r.error for r in batch if r.status != "done"]
    return seconds, [r.seconds for r in batch]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--grid", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--check", action="store_true", help="a tiny run that writes nothing")
    args = parser.parse_args()
    if args.check:
        args.images, args.queries, args.grid, args.repeats = 4, 32, 6, 1
    configs = args.configs.split(",")
    images = photos(args.images)
    ray_start = None
    if any(CONFIGS[c][0] == "ray" for c in configs):
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="warning")
        ray_start = time.perf_counter() - t0
    rows = []
    for config in configs:
        walls, startups, per_image = [], [], []
        tiny = photos(args.workers if CONFIGS[config][1] == "W" else 1)
        timed_run(tiny, config, args.workers, 2, args.grid)  # warm-up (imports, Ray workers), not counted
        for _ in range(args.repeats):
            startups.append(timed_run(tiny, config, args.workers, 2, args.grid)[0])
            wall, seconds = timed_run(images, config, args.workers, args.queries, args.grid)
            walls.append(wall)
            per_image += seconds
        rate = [60 * args.images / w for w in walls]
        steady = [60 * args.images / max(w - s, 1e-9) for w, s in zip(walls, startups)]
        rows.append({"config": config, "wall_s": mean_ci(walls), "startup_s": mean_ci(startups),
                     "images_per_min": mean_ci(rate), "steady_images_per_min": mean_ci(steady),
                     "task_s_mean": float(np.mean(per_image)), "walls": walls, "startups": startups})
        print(f"{config:10s} {mean_ci(rate)[0]:7.1f} images/min ({mean_ci(steady)[0]:.1f} once started), "
              f"wall {mean_ci(walls)[0]:.1f} s, start-up {mean_ci(startups)[0]:.1f} s", flush=True)
    by = {r["config"]: r for r in rows}
    summary = {}
    if "serial" in by:
        for r in rows:
            r["speedup_vs_serial"] = r["images_per_min"][0] / by["serial"]["images_per_min"][0]
            r["steady_speedup_vs_serial"] = r["steady_images_per_min"][0] / by["serial"]["steady_images_per_min"][0]
    if "ray-1w" in by and "serial-1t" in by:
        def steady_seconds(r):
            return np.mean(r["walls"]) - np.mean(r["startups"])
        summary["ray_overhead_per_image_s"] = (steady_seconds(by["ray-1w"]) - steady_seconds(by["serial-1t"])) / args.images
    report = {"settings": {k: getattr(args, k) for k in ("images", "queries", "grid", "workers", "repeats")},
              "ray_cluster_start_s": ray_start, "rows": rows, **summary,
              "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}}
    if ray_start is not None:
        import ray

        ray.shutdown()
    if args.check:
        print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "many_images.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Many images: executors on {os.cpu_count()} CPUs",
             "",
             f"{args.images} photos x {args.queries} queries (grid {args.grid}), embedded EfficientNet-Lite0, "
             f"{args.workers} workers, {args.repeats} repeats (mean +- 95% interval). 1-min load average at the "
             f"end: {report['machine']['load_avg_1m']}. Wall time includes worker start-up; 'once started' "
             "subtracts the start-up measured alone (one 2-query image per worker).",
             "",
             "| config | images/min | once started | x serial | x serial once started | start-up s | seconds in a task |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['images_per_min'][0]:.1f} +- {r['images_per_min'][1]:.1f} "
                     f"| {r['steady_images_per_min'][0]:.1f} +- {r['steady_images_per_min'][1]:.1f} "
                     f"| {r.get('speedup_vs_serial', float('nan')):.2f} | {r.get('steady_speedup_vs_serial', float('nan')):.2f} "
                     f"| {r['startup_s'][0]:.1f} | {r['task_s_mean']:.2f} |")
    if ray_start is not None:
        lines += ["", f"Ray cluster start (ray.init, not in the table): {ray_start:.1f} s."]
    if "ray_overhead_per_image_s" in summary:
        lines.append(f"Ray overhead per image (ray-1w minus serial-1t, once started): "
                     f"{summary['ray_overhead_per_image_s'] * 1000:.0f} ms.")
    (RESULTS / "many_images.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
