"""Tables of the saliency benchmark: the part files of :mod:`benchmarks.saliency` merged into
``results/saliency{,.tuning}.{md,json}`` (``python -m benchmarks.saliency [--set tuning] --combine``).

Every table is per model and budget, means over photos with 95% t-intervals; comparisons are
paired by photo. ``avg4`` is the mean over the four fills other than the own blur (the score the
targets are judged on), ``avg5`` over all five, ``own`` the own blur alone. Photos whose top-2
classes are within :data:`COMPETING_GAP` on that model are "competing" and get tables of their own.
"""
from __future__ import annotations

import json

import numpy as np

from benchmarks import removal
from benchmarks.harness import RESULTS, fmt, mean_ci, show
from benchmarks.saliency import (
    DEFAULT, KERNEL_BANZHAF, PARTS, PREVIOUS_DEFAULT, RANDOM, SEED_BUDGET, TARGET_BUDGETS, WHITEBOX,
    adopt, describe, is_current, specs_for, stem_of,
)
from blackbox import spearman
from blackbox.saliency import PRIOR_QUERIES

COMPETING_GAP = 0.1
LIBRARY_KINDS = ("lr",)


# ---------------------------------------------------------------- reading the parts
def load_rows(which: str) -> dict[str, list[dict]]:
    """``{model: rows}`` of the part files, only rows that measure today's specs."""
    out: dict[str, list[dict]] = {}
    for part in sorted(PARTS.glob(f"{which}-*.json")):
        model = part.stem.split("-")[1]
        every = specs_for(which, model)
        specs = {s["name"]: s for s in every}
        for r in adopt(json.loads(part.read_text()), every, model):
            if is_current(r, specs) and (r["method"] == RANDOM or "fills" in r):
                out.setdefault(model, []).append(r)
    if not out:
        raise SystemExit(f"no part files for {which!r} under {PARTS}: run `python -m benchmarks.saliency"
                         f"{' --set ' + which if which != 'table' else ''}` first (they are not in git)")
    return out


class Board:
    """One model's rows, indexed: maps by (method, budget, seed, photo), the photos' random
    references and top classes, and which photos compete."""

    def __init__(self, model: str, rows: list[dict]):
        self.model = model
        self.refs = {r["photo"]: r for r in rows if r["method"] == RANDOM}
        self.maps = {(r["method"], r["budget"], r["seed"], r["photo"]): r for r in rows if r["method"] != RANDOM}
        self.photos = [p for p in dict.fromkeys(r["photo"] for r in rows) if p in self.refs]
        self.competing = [p for p in self.photos if self.gap(p) < COMPETING_GAP]
        self.methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != RANDOM))
        self.budgets = sorted({r["budget"] for r in rows if r["method"] != RANDOM})

    def gap(self, photo: str) -> float:
        top = self.refs[photo]["top"]
        return top[0][1] - top[1][1]

    def runs(self, method: str, budget: int, photos, seed: int = 0) -> dict[str, dict]:
        """The maps of ``method`` on ``photos``; none unless it was measured on every one of them
        (means over different photos would not compare)."""
        found = {p: self.maps[(method, budget, seed, p)] for p in photos if (method, budget, seed, p) in self.maps}
        return found if len(found) == len(photos) else {}

    def partial(self) -> list[str]:
        """``method budget (n of N photos)`` for the rows measured on only some of the photos."""
        out = []
        for method in self.methods:
            for budget in self.budgets:
                n = sum((method, budget, 0, p) in self.maps for p in self.photos)
                if 0 < n < len(self.photos):
                    out.append(f"{method} at {budget} ({n} of {len(self.photos)})")
        return out

    def slower(self, row: dict) -> list[str]:
        """The fills under which this map deletes slower than the photo's random orders (the rule
        of :func:`benchmarks.removal.slower_than_random`)."""
        ref = self.refs[row["photo"]]["random"]
        return [op for op in removal.OPERATORS
                if removal.slower_than_random(row["fills"][op][0], ref[op]["deletion"])]

    def seed_rho(self, method: str, photos) -> list[float]:
        """Spearman rho of seeds 0 and 1 at SEED_BUDGET on the photos that have both."""
        pairs = [(self.maps.get((method, SEED_BUDGET, 0, p)), self.maps.get((method, SEED_BUDGET, 1, p))) for p in photos]
        return [spearman(a["cells"], b["cells"]) for a, b in pairs if a and b]


def scores(row: dict) -> dict[str, float]:
    """The averages a row is judged by."""
    f = row["fills"]
    return {"del_avg4": removal.average(f, 0), "ins_avg4": removal.average(f, 1),
            "del_own": f[removal.OWN][0], "ins_own": f[removal.OWN][1],
            "del_avg5": removal.average(f, 0, removal.OPERATORS), "ins_avg5": removal.average(f, 1, removal.OPERATORS)}


# ---------------------------------------------------------------- summaries
def summarise(board: Board, photos) -> list[dict]:
    """Per (budget, method): means with intervals of every average, rho with IG, seed rho, and the
    photo x fill cells slower than random."""
    out = []
    for budget in board.budgets:
        for method in board.methods:
            runs = board.runs(method, budget, photos)
            if not runs:
                continue
            s = [scores(r) for r in runs.values()]
            slow = [f"{p}/{op}" for p, r in runs.items() for op in board.slower(r)]
            out.append({"method": method, "budget": budget, "photos": len(runs),
                        **{k: mean_ci([x[k] for x in s]) for k in s[0]},
                        "rho_ig": mean_ci([r["rho_ig"] for r in runs.values()]),
                        "seed_rho": mean_ci(board.seed_rho(method, photos)) if budget == SEED_BUDGET
                        else (float("nan"), float("nan")),
                        "slower_than_random": slow})
    out.sort(key=lambda s: (s["budget"], s["del_avg4"][0]))
    return out


def means_table(summary: list[dict]) -> str:
    lines = ["| budget | method | photos | deletion avg4 | insertion avg4 | deletion own | insertion own "
             "| deletion avg5 | insertion avg5 | rho vs IG | seed rho | slower than random |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        slow = s["slower_than_random"]
        lines.append(f"| {s['budget']} | {s['method']} | {s['photos']} | {show(s['del_avg4'], 4)} | "
                     f"{show(s['ins_avg4'], 4)} | {show(s['del_own'], 4)} | {show(s['ins_own'], 4)} | "
                     f"{show(s['del_avg5'], 4)} | {show(s['ins_avg5'], 4)} | {show(s['rho_ig'], 2)} | "
                     f"{show(s['seed_rho'], 2)} | {len(slow)}{': ' + ', '.join(slow) if slow else ''} |")
    return "\n".join(lines)


def operators_table(board: Board, photos, budget: int) -> str:
    """Mean deletion / insertion under each fill at one budget (intervals in the means table)."""
    ops = removal.OPERATORS
    lines = ["| method | " + " | ".join(f"del {op}" for op in ops) + " | " + " | ".join(f"ins {op}" for op in ops)
             + " |", "|---|" + "---|" * (2 * len(ops))]
    rows = []
    for method in board.methods:
        runs = board.runs(method, budget, photos)
        if runs:
            d = [np.mean([r["fills"][op][0] for r in runs.values()]) for op in ops]
            i = [np.mean([r["fills"][op][1] for r in runs.values()]) for op in ops]
            rows.append((np.mean(d[1:]), f"| {method} | " + " | ".join(f"{v:.4f}" for v in d + i) + " |"))
    return "\n".join(lines + [line for _, line in sorted(rows)])


def random_table(board: Board) -> str:
    """Per photo and fill: the random orders' deletion mean ± sd, and the bound a map must exceed
    to count as slower (mean + 2 standard errors)."""
    ops = removal.OPERATORS
    lines = ["| photo | top-2 (p) | " + " | ".join(ops) + " |", "|---|---|" + "---|" * len(ops)]
    for p in board.photos:
        ref, top = board.refs[p]["random"], board.refs[p]["top"]
        cells = []
        for op in ops:
            m, sd, bound = removal.random_bound(ref[op]["deletion"])
            cells.append(f"{m:.4f} ± {sd:.4f} (> {bound:.4f})")
        lines.append(f"| {p}{' (competing)' if p in board.competing else ''} | {top[0][0]} {top[0][1]:.3f}, "
                     f"{top[1][0]} {top[1][1]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the default against every row
def is_peer(board: Board, method: str) -> bool:
    """Black-box peers: every row that is not one of the library's own settings, and Kernel
    Banzhaf (a peer method the library's banzhaf computes without its prior)."""
    return method == KERNEL_BANZHAF or (method not in (DEFAULT, WHITEBOX) and not _library(board, method))


def _library(board: Board, method: str) -> bool:
    row = next(r for k, r in board.maps.items() if k[0] == method)
    return str(row.get("config", "")).startswith(("quarters", "banzhaf", "ig ", "ig-steps"))


def paired_rows(board: Board, photos, budget: int) -> list[dict]:
    """The default minus every other row at ``budget``, paired by photo, on avg4 deletion and insertion."""
    mine = board.runs(DEFAULT, budget, photos)
    out = []
    for method in board.methods:
        theirs = board.runs(method, budget, photos)
        common = [p for p in mine if p in theirs]
        if method == DEFAULT or not common:
            continue
        dd = [scores(mine[p])["del_avg4"] - scores(theirs[p])["del_avg4"] for p in common]
        di = [scores(mine[p])["ins_avg4"] - scores(theirs[p])["ins_avg4"] for p in common]
        out.append({"method": method, "peer": is_peer(board, method), "photos": len(common),
                    "deletion_diff": mean_ci(dd), "lower_on": int(np.sum(np.array(dd) < 0)),
                    "insertion_diff": mean_ci(di), "higher_on": int(np.sum(np.array(di) > 0))})
    return out


def paired_table(board: Board, photos) -> str:
    lines = ["| budget | row | peer | deletion avg4: default - row | default lower on | insertion avg4: default - row "
             "| default higher on |", "|---|---|---|---|---|---|---|"]
    for budget in TARGET_BUDGETS:
        for r in paired_rows(board, photos, budget):
            lines.append(f"| {budget} | {r['method']} | {'yes' if r['peer'] else 'library'} | "
                         f"{show(r['deletion_diff'], 4)} | {r['lower_on']}/{r['photos']} | "
                         f"{show(r['insertion_diff'], 4)} | {r['higher_on']}/{r['photos']} |")
    return "\n".join(lines)


def below(stat) -> bool:
    """The interval of a mean difference lies below 0."""
    return stat[0] + stat[1] < 0


def above(stat) -> bool:
    return stat[0] - stat[1] > 0


def targets(board: Board) -> dict:
    """The issue's targets on this model: per budget, whether the default's mean avg4 deletion is
    below and insertion above every peer's (and how many of those gaps are beyond the noise); the
    photo x fill cells where it deletes slower than random; its seed-to-seed rho."""
    out = {"budgets": {}}
    for budget in TARGET_BUDGETS:
        photos = len(board.runs(DEFAULT, budget, board.photos))
        # peers measured on fewer of the default's photos are shown in the tables but not judged here
        rows = [r for r in paired_rows(board, board.photos, budget) if r["peer"] and r["photos"] == photos]
        if not rows:
            continue
        worst_del = max(rows, key=lambda r: r["deletion_diff"][0])
        worst_ins = min(rows, key=lambda r: r["insertion_diff"][0])
        out["budgets"][budget] = {
            "photos": photos, "peers": len(rows), "peer_names": [r["method"] for r in rows],
            "deletion_lower_than_every_peer": all(r["deletion_diff"][0] < 0 for r in rows),
            "insertion_higher_than_every_peer": all(r["insertion_diff"][0] > 0 for r in rows),
            "closest_deletion": [worst_del["method"], worst_del["deletion_diff"]],
            "closest_insertion": [worst_ins["method"], worst_ins["insertion_diff"]],
            "deletion_beyond_noise": sum(below(r["deletion_diff"]) for r in rows),
            "insertion_beyond_noise": sum(above(r["insertion_diff"]) for r in rows),
            "slower_than_random": [f"{p}/{op}" for p, r in board.runs(DEFAULT, budget, board.photos).items()
                                   for op in board.slower(r)]}
    rho = board.seed_rho(DEFAULT, board.photos)
    out["seed_rho"], out["seed_rho_photos"] = mean_ci(rho), len(rho)
    return out


def targets_lines(t: dict) -> list[str]:
    lines = []
    for budget, v in t["budgets"].items():
        d, i = v["closest_deletion"], v["closest_insertion"]
        lines.append(
            f"- {budget} queries ({v['photos']} photos; peers measured on all of them: "
            f"{', '.join(v['peer_names'])}): mean avg4 deletion below every peer's: "
            f"**{'yes' if v['deletion_lower_than_every_peer'] else 'no'}** (closest: {d[0]}, default - peer "
            f"{show(d[1], 4)}; beyond the noise against {v['deletion_beyond_noise']} of {v['peers']}); insertion "
            f"above every peer's: **{'yes' if v['insertion_higher_than_every_peer'] else 'no'}** (closest: {i[0]}, "
            f"{show(i[1], 4)}; beyond the noise against {v['insertion_beyond_noise']}); photo x fill cells where the "
            f"default deletes slower than random: {len(v['slower_than_random'])}"
            + (f" ({', '.join(v['slower_than_random'])})" if v["slower_than_random"] else ""))
    lines.append(f"- seed-to-seed rho of the default at {SEED_BUDGET} queries: {show(t['seed_rho'], 2)} "
                 f"({t['seed_rho_photos']} photos)")
    return lines


def per_photo(board: Board, budget: int) -> str:
    lines = [f"| method | " + " | ".join(board.photos) + " |", "|---|" + "---|" * len(board.photos)]
    for method in board.methods:
        runs = board.runs(method, budget, board.photos)
        if runs:
            lines.append(f"| {method} | " + " | ".join(
                f"{scores(runs[p])['del_avg4']:.4f} / {scores(runs[p])['ins_avg4']:.3f}" if p in runs else "-"
                for p in board.photos) + " |")
    return "\n".join(lines)


def partial_note(board: Board) -> str:
    partial = board.partial()
    return ("Rows measured on only some photos are left out of the tables (their rows are in the .json): "
            + "; ".join(partial) + ".\n") if partial else ""


def rescore_note(board: Board) -> str:
    checked = [r["own_check"] for r in board.maps.values() if "own_check" in r]
    if not checked:
        return "Every map was computed and scored in this run."
    off = sum(c > 1e-4 for c in checked)
    return (f"{len(checked)} stored maps were re-scored from their stored cells (their maps did not change); "
            f"the cells reproduce the stored own-fill AUCs on {len(checked) - off} of them (largest difference "
            f"{max(checked):.5f}).")


# ---------------------------------------------------------------- choosing the default (tuning photos)
SELECTION_RULE = (
    f"Every candidate against the default at {SEED_BUDGET} queries, paired by photo (deletion and insertion "
    "averaged over seeds 0 and 1, seed-to-seed rho per photo; 95% t-intervals), judged on avg4 (the four fills "
    "other than the own blur) and, as before the fills, on the own blur. A candidate would replace the default "
    "only if it deletes faster beyond the noise (the interval of the paired difference below 0) while neither "
    "its insertion nor its stability is lower beyond the noise (both intervals reach 0).")


def selection(board: Board, default: str, key: str) -> str:
    """:data:`SELECTION_RULE` on the averages ``key`` (``avg4`` or ``own``): every candidate
    against the default and the verdict."""
    def stats(method: str) -> dict:
        a, b = board.runs(method, SEED_BUDGET, board.photos, 0), board.runs(method, SEED_BUDGET, board.photos, 1)
        return {p: (np.mean([scores(r[p])[f"del_{key}"] for r in (a, b)]),
                    np.mean([scores(r[p])[f"ins_{key}"] for r in (a, b)]),
                    spearman(a[p]["cells"], b[p]["cells"])) for p in a if p in b and "fills" in b[p]}

    mine = stats(default)
    lines = [f"| candidate | deletion {key}: candidate - default | insertion {key}: candidate - default "
             "| seed-to-seed rho: candidate - default | verdict |", "|---|---|---|---|---|"]
    for name in board.methods:
        theirs = stats(name) if name != default else {}
        common = [p for p in mine if p in theirs]
        if not common:
            continue
        diff = [mean_ci([theirs[p][k] - mine[p][k] for p in common]) for k in range(3)]
        reasons = ([] if below(diff[0]) else ["deletes no faster beyond the noise"]) + \
                  ([] if diff[1][0] + diff[1][1] >= 0 else ["inserts worse"]) + \
                  ([] if diff[2][0] + diff[2][1] >= 0 else ["less stable"])
        verdict = "would replace the default" if not reasons else "; ".join(reasons)
        lines.append(f"| {name} | {show(diff[0], 4)} | {show(diff[1], 4)} | {show(diff[2], 2)} | {verdict} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the files
def header(which: str, boards: dict) -> list[str]:
    photos = ", ".join(next(iter(boards.values())).photos)
    return [
        f"# Saliency benchmark ({which})\n",
        f"Written by `python -m benchmarks.saliency{' --set ' + which if which != 'table' else ''} --combine` from the "
        f"part files under `benchmarks/parts/saliency/` (git-ignored; the script rebuilds them). Photos: {photos}. "
        "Target = the model's top-1 class on the photo.\n",
        f"- `default` is the library's default map: `{describe({})}` (above {PRIOR_QUERIES} queries every ridge "
        f"row's smoothness fades as S x {PRIOR_QUERIES} / N). The row before it, `banzhaf`, is "
        f"`{describe({'method': 'banzhaf'})}`.",
        "- Deletion / insertion: the target's softmax probability while the 14x14 cells are removed into "
        "(inserted from) a fill, most salient first (cells ranked by the map's mean per cell); AUC on a "
        "normalised axis, 29 points per curve. Fills (removal operators) at the working image's resolution: "
        "`blur-lib` = the library's blurred copy (radius max(H, W) / 16; the fill every method's own masks use), "
        "`blur10` / `blur4` = Gaussian blur of 10 / 4 px, `mean` = the photo's mean colour, `grey` = 0.5. "
        "**avg4** = the mean over blur10, blur4, mean and grey (the four fills no method was made with; the "
        "targets are judged on it), avg5 = over all five, own = blur-lib.",
        f"- Random reference: {removal.RANDOM_ORDERS} random cell orders per photo and fill. A map deletes "
        "*slower than random* under a fill when its deletion AUC exceeds the random orders' mean by more than two "
        "standard errors of that mean (`benchmarks/removal.py`); the column lists those photo/fill cells.",
        f"- Competing photos: the model's top-2 classes within {COMPETING_GAP} (computed per model).",
        "- rho vs IG: Spearman correlation over the cells with Integrated Gradients by torch autograd on the "
        "model's twin (32 midpoint path points from the blurred copy). Seed rho: Spearman correlation of the "
        f"cell maps of seeds 0 and 1 at {SEED_BUDGET} queries.",
        "- Intervals: 95% Student-t intervals of the mean over photos (mean ± half-width); paired differences "
        "photo by photo.",
        "- Peers explain the probability (RISE 7x7, occlusion, Captum KernelSHAP and LIME on the 14x14 cells, "
        "HSIC 8x8, Sobol; shapiq 1.4.1 KernelSHAP and RegressionFBII of order 1, Leverage SHAP), the library's "
        "rows the log-probability. shapiq's approximators and Leverage SHAP use the pairing trick (each "
        "coalition with its complement) at 500 and 1000 queries but not at 250: 125 pairs for 196 cells leave "
        "the regression underdetermined (their maps of a linear game correlate 0.006 and 0.05 with the truth "
        "there, 0.999 without pairing). Kernel Banzhaf (Liu et al. 2024: random halves in complement pairs, "
        "least squares) is the library's `banzhaf` with `noise=\"rademacher\", smoothness=0`.\n"]


def model_section(board: Board) -> list[str]:
    out = [f"## {board.model}\n", f"Photos ({len(board.photos)}): " + ", ".join(
        f"{p} ({board.gap(p):.3f})" for p in board.photos) + " (top-1 minus top-2 probability); competing: "
        + (", ".join(board.competing) or "none") + ".\n", rescore_note(board) + "\n", partial_note(board),
        "### Targets (the default against every black-box peer, avg4)\n", *targets_lines(targets(board)),
        "\n### Means over photos\n", means_table(summarise(board, board.photos))]
    if board.competing:
        out += [f"\n### Competing photos only ({', '.join(board.competing)})\n",
                means_table(summarise(board, board.competing))]
    out += ["\n### The default against every other row, paired by photo (avg4)\n", paired_table(board, board.photos)]
    if board.competing:
        out += ["\nCompeting photos only:\n", paired_table(board, board.competing)]
    for budget in board.budgets:
        out += [f"\n### Each fill at {budget} queries (means over photos)\n", operators_table(board, board.photos, budget)]
    out += ["\n### Random cell orders: deletion AUC, mean ± sd (> the slower-than-random bound)\n", random_table(board)]
    for budget in TARGET_BUDGETS:
        if budget in board.budgets:
            out += [f"\n### Per photo at {budget} queries (deletion avg4 / insertion avg4)\n", per_photo(board, budget)]
    return out


def slim(row: dict) -> dict:
    """A row for the results file: no cell map; the random orders as their means and sds."""
    r = {k: v for k, v in row.items() if k not in ("cells", "rho_gradient", "seconds")}
    if "random" in r:
        r["random"] = {op: [round(float(np.mean(v["deletion"])), 5), round(float(np.std(v["deletion"], ddof=1)), 5),
                            round(float(np.mean(v["insertion"])), 5)] for op, v in r["random"].items()}
    return r


def combine(which: str, log) -> None:
    loaded = load_rows(which)
    boards = {m: Board(m, rows) for m, rows in sorted(loaded.items())}
    md = header(which, boards)
    summary = {}
    for model, board in boards.items():
        md += model_section(board)
        if which == "tuning":
            md += [f"\n### Choosing the default: every candidate against it at {SEED_BUDGET} queries\n",
                   SELECTION_RULE + "\n", "On avg4:\n", selection(board, describe({}), "avg4"),
                   "\nOn the own blur:\n", selection(board, describe({}), "own")]
        # the verdicts only: the means are the .md's tables, derivable from the rows
        summary[model] = {"photos": board.photos, "competing": board.competing, "targets": targets(board)}
    stem = stem_of(which)
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    rows = [slim(r) for m in boards for r in loaded[m]]
    (RESULTS / f"{stem}.json").write_text(json.dumps({"default": describe({}), "previous_default":
                                                      describe(PREVIOUS_DEFAULT), "summary": summary, "rows": rows}))
    log(f"wrote {RESULTS / stem}.md and .json ({len(rows)} rows)")
