"""Do local and remote maps of the same photo agree?

The embedded classifier is explained twice with the same command: locally
(``blackbox saliency PHOTO``) and through ``blackbox serve`` on loopback (``--model
openai:efficientnet-lite0``), which describes its view (the classifier's centre crop) in its model
card and answers "Is there a {label} in this image?" with log P(Yes) = log p and
log P(No) = log(1 - p). Rank correlation (Spearman) of the two maps over the pixels the model
sees, per photo and seed, for the remote default score (log-odds) and for ``--scoring logprob``
(log P(Yes), the local score itself); the seed-to-seed correlation of the local map is the noise
floor for comparison. Each figure is the mean over photos (a photo's own mean over its seeds)
with a 95% t-interval over the photos.

Run: ``python -m benchmarks.remote_agreement [--queries 400] [--seeds 3]`` (quality figures: any
load); writes benchmarks/results/remote_agreement.{json,md}; ``--combine`` rewrites the .md from
the .json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS, mean_ci, show

PHOTOS = ("coffee", "chelsea", "rocket", "flower")


def saliency_map(args: list[str], path: Path) -> np.ndarray:
    from blackbox.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["saliency", *args, "--save-map", str(path), "--no-progress"])
    if code != 0:
        raise SystemExit(f"blackbox saliency {' '.join(args)} failed with {code}")
    return np.load(path)


KEYS = {"local_vs_remote_logodds": "local vs remote, default score (log-odds)",
        "local_vs_remote_logprob": "local vs remote, --scoring logprob (the local score)",
        "local_seed_to_seed": "local seed s vs seed s+100 (noise floor)"}


def per_photo(rows: list[dict], key: str) -> list[float]:
    """Each photo's mean of ``key`` over its seeds."""
    photos = dict.fromkeys(r["photo"] for r in rows)
    return [float(np.mean([r[key] for r in rows if r["photo"] == p])) for p in photos]


def write(rows: list[dict]) -> list[str]:
    """``results/remote_agreement.{json,md}`` from the rows; the table's lines."""
    RESULTS.mkdir(exist_ok=True)
    summary = {k: mean_ci(per_photo(rows, k)) for k in KEYS}
    (RESULTS / "remote_agreement.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    lines = ["# Local vs remote saliency maps of the same photo (`blackbox serve`, loopback)", "",
             f"{rows[0]['queries']} map queries per run (remote: + the capability probe), default method and grid; "
             "Spearman rank correlation of the maps over the pixels the model sees. Mean over photos (each "
             "photo's mean over its seeds) with a 95% t-interval over the photos.", "",
             "| comparison | mean ± 95% interval |", "|---|---|"]
    lines += [f"| {name} | {show(summary[k])} |" for k, name in KEYS.items()]
    lines += ["", "| photo | target | seed | remote log-odds | remote logprob | local seed-to-seed |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['photo']} | {r['target']} | {r['seed']} | {r['local_vs_remote_logodds']:.3f} | "
              f"{r['local_vs_remote_logprob']:.3f} | {r['local_seed_to_seed']:.3f} |" for r in rows]
    (RESULTS / "remote_agreement.md").write_text("\n".join(lines) + "\n")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS))
    parser.add_argument("--combine", action="store_true", help="rewrite the .md from the .json")
    opts = parser.parse_args()
    if opts.combine:
        return print("\n".join(write(json.loads((RESULTS / "remote_agreement.json").read_text())["rows"])))
    os.environ["BLACKBOX_CACHE_DIR"] = tempfile.mkdtemp(prefix="blackbox-agreement-")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from blackbox.adapters import load_image_model
    from blackbox.adapters.remote.serve import ClassifierScorer, ModelServer
    from blackbox.saliency.metrics import spearman
    from blackbox.sample_images import load_sample

    model = load_image_model()
    server = ModelServer(scorer=ClassifierScorer(model)).start()
    work = Path(tempfile.mkdtemp(prefix="blackbox-agreement-maps-"))
    rows = []
    try:
        for photo in opts.photos:
            from PIL import Image

            original = load_sample(photo)
            image = work / f"{photo}.png"
            Image.fromarray(original).save(image)
            view = model.view(*original.shape[:2])
            seen = view.coverage()
            working = view.to_working(original)
            label = model.top_k(working, 1)[0][0]
            for seed in range(opts.seeds):
                common = [str(image), "--target", label, "--seed", str(seed)]
                local = saliency_map([*common, "--queries", str(opts.queries)], work / "local.npy")
                again = saliency_map([*common[:-1], str(seed + 100), "--queries", str(opts.queries)], work / "l2.npy")
                # --queries counts the probe too: one more request buys the same map queries
                remote = [*common, "--queries", str(opts.queries + 1), "--model", "openai:efficientnet-lite0",
                          "--base-url", server.url]
                logodds = saliency_map(remote, work / "remote.npy")
                logprob = saliency_map([*remote, "--scoring", "logprob"], work / "remote-lp.npy")
                row = {"photo": photo, "target": label, "seed": seed, "queries": opts.queries,
                       "local_vs_remote_logodds": spearman(local[seen], logodds[seen]),
                       "local_vs_remote_logprob": spearman(local[seen], logprob[seen]),
                       "local_seed_to_seed": spearman(local[seen], again[seen])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.stop()
    print("\n".join(write(rows)))


if __name__ == "__main__":
    main()
