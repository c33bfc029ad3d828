"""The Batch API's targets (issue #35), measured through the command line.

* the dry run of a 1000-query gpt-4o-mini map at low detail (``gpt-vision``): its price sent one
  by one and through the Batch API, and their ratio (target: 0.45 to 0.55);
* a 1000-query map of the coffee photo against ``blackbox serve``'s model (the embedded
  classifier; the fault server's counters say what was paid), sent one by one and with
  ``--batch`` under the same seed: the two maps (target: equal), the batched run's batches, and
  what its rerun pays (target: 0);
* the same batched run killed (SIGKILL) while it polls, then run again with the same command:
  the requests the server answered, each paid how many times (target: every one exactly once).

Run: ``python -m benchmarks.batch`` (a few minutes); writes benchmarks/results/batch.{json,md}.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FAULT_SERVER = Path(__file__).resolve().parents[1] / "tests" / "fault_server.py"
BLACKBOX = str(Path(sys.executable).parent / "blackbox")
QUERIES = 1000


class Server:
    """`blackbox serve`'s model behind the fault server's counters, in its own process."""

    def __init__(self, latency: float = 0.0):
        args = ["--scorer", "classifier", "--model-id", "efficientnet-lite0", "--latency", str(latency)]
        self.proc = subprocess.Popen([sys.executable, str(FAULT_SERVER), *args], stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def blackbox(args, cache: str, **popen):
    """The command with its own cache folder: ``(JSON report, stderr)``, or the process (``popen``)."""
    env = {**os.environ, "BLACKBOX_CACHE_DIR": cache, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    if popen:
        return subprocess.Popen([BLACKBOX, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = subprocess.run([BLACKBOX, *map(str, args)], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout), done.stderr


def dry_run(photo: Path, work: Path) -> dict:
    """The two prices of 1000 gpt-vision queries at low detail (nothing is sent; no key needed)."""
    report, _ = blackbox(["saliency", photo, "--model", "gpt-vision", "--target", "espresso", "--queries", QUERIES,
                          "--detail", "low", "--dry-run", "--json", "--batch"], str(work / "dry"))
    return {k: report[k] for k in ("estimated_cost", "estimated_batch_cost", "batch_ratio", "would_send")}


def same_map(photo: Path, work: Path) -> dict:
    """One map sent one by one and batched (each against a server of its own), then batched again."""
    args = lambda url, name: ["saliency", photo, "--model", "openai:efficientnet-lite0", "--base-url", url,  # noqa: E731
                              "--target", "espresso", "--queries", QUERIES, "--json", "--save-map", work / name]
    alone, batched = Server(), Server()
    try:
        t0 = time.time()
        blackbox(args(alone.url, "alone.npy"), str(work / "alone"))
        t1 = time.time()
        report, _ = blackbox(args(batched.url, "batched.npy") + ["--batch"], str(work / "batched"))
        t2 = time.time()
        paid = batched.stats()
        rerun, _ = blackbox(args(batched.url, "rerun.npy") + ["--batch"], str(work / "batched"))
        after = batched.stats()
        return {"maps_equal": bool(np.array_equal(np.load(work / "alone.npy"), np.load(work / "batched.npy"))),
                "rerun_equal": bool(np.array_equal(np.load(work / "alone.npy"), np.load(work / "rerun.npy"))),
                "paid_one_by_one": alone.stats()["answered"], "paid_batched": paid["answered"],
                "batches": paid["batches"], "batched": report["usage"]["batched"],
                "rerun_paid": after["answered"] - paid["answered"], "rerun_budget_queries":
                rerun["usage"]["budget"]["queries"], "seconds_one_by_one": round(t1 - t0, 1),
                "seconds_batched": round(t2 - t1, 1)}
    finally:
        alone.stop()
        batched.stop()


def killed_while_polling(photo: Path, work: Path) -> dict:
    """A batched run SIGKILLed once 300 of its lines are answered, then the same command again."""
    server = Server(latency=0.005)
    args = ["saliency", photo, "--model", "openai:efficientnet-lite0", "--base-url", server.url, "--target",
            "espresso", "--queries", QUERIES, "--json", "--batch"]
    try:
        proc = blackbox(args, str(work / "killed"), popen=True)
        while server.stats()["answered"] < 300:
            if proc.poll() is not None:
                raise RuntimeError("the run ended before it could be killed")
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        at_kill = server.stats()
        report, err = blackbox(args, str(work / "killed"))
        stats = server.stats()
        return {"answered_at_kill": at_kill["answered"], "answered": stats["answered"],
                "duplicate_paid": stats["duplicate_paid"], "batches": stats["batches"],
                "rerun_collected_it": "sent earlier" in err, "rerun_budget_queries": report["usage"]["budget"]["queries"]}
    finally:
        server.stop()


def table(results: dict) -> str:
    d, m, k = results["dry_run"], results["same_map"], results["killed"]
    rows = [
        ("dry run, 1000 gpt-4o-mini queries at low detail", f"${d['estimated_cost']:.4f} one by one, "
         f"${d['estimated_batch_cost']:.4f} batched: ratio {d['batch_ratio']:.4f}", "0.45-0.55"),
        ("1000-query map, batched vs one by one (seed 0)", f"equal: {m['maps_equal']}; batches {m['batches']}, "
         f"paid {m['paid_batched']} vs {m['paid_one_by_one']}", "equal"),
        ("rerun of the batched map", f"paid {m['rerun_paid']} (budget {m['rerun_budget_queries']}), "
         f"map equal: {m['rerun_equal']}", "0"),
        ("killed (SIGKILL) while polling, then rerun", f"{k['answered']} requests answered, "
         f"{k['duplicate_paid']} paid twice; batches {k['batches']}; collected by the rerun: "
         f"{k['rerun_collected_it']}", "each once"),
    ]
    lines = ["| target | measured | wanted |", "| --- | --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows]) + "\n"


def main() -> None:
    from PIL import Image

    from blackbox.sample_images import load_sample

    with tempfile.TemporaryDirectory(prefix="blackbox-batch-bench-") as tmp:
        work = Path(tmp)
        photo = work / "coffee.png"
        Image.fromarray(load_sample("coffee")).save(photo)
        results = {"dry_run": dry_run(photo, work), "same_map": same_map(photo, work),
                   "killed": killed_while_polling(photo, work)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(results, indent=2) + "\n")
    text = "# The Batch API's targets (issue #35)\n\n" + table(results) + \
        f"\nSeconds: one by one {results['same_map']['seconds_one_by_one']}, batched " \
        f"{results['same_map']['seconds_batched']} (loopback; OpenAI answers a batch within 24 h, usually minutes).\n"
    (RESULTS / "batch.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
