"""The `blackbox` command end to end on a real bundled photo, and every bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from blackbox.cli.main import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "blackbox.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env={**os.environ, "TQDM_DISABLE": "1"})


def test_saliency_end_to_end(tmp_path, coffee_png, capsys):
    out, npy = tmp_path / "coffee-saliency.png", tmp_path / "map.npy"
    code = main(["saliency", str(coffee_png), "--queries", "200", "--grid", "7", "--out", str(out),
                 "--save-map", str(npy), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    for key in ("model", "target_label", "target_index", "top5", "queries_used", "seconds"):
        assert key in report
    assert report["model"] == "efficientnet-lite0"
    assert (report["target_label"], report["target_index"]) == ("espresso", 967)
    assert report["top5"][0]["label"] == "espresso" and len(report["top5"]) == 5
    assert report["queries_used"] == 200
    saved = np.load(npy)
    assert saved.shape == (400, 600) and np.isfinite(saved).all() and np.abs(saved).max() > 0
    with Image.open(out) as im:
        assert im.size[0] > 300


def test_focus_spends_the_second_half_on_the_top_patches(coffee_png, capsys):
    code = main(["saliency", str(coffee_png), "--queries", "200", "--grid", "7", "--method", "banzhaf", "--focus", "0.3", "--json",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["focus"] == 0.3 and report["queries_used"] == 200


def _help(capsys, *args) -> str:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_teaches_the_options(capsys):
    text = _help(capsys, "saliency")
    for option in ("--model", "--target", "--queries", "--method", "--grid", "--blocks", "--seed", "--out",
                   "--save-map", "--json", "gpt-vision", "--deadline", "--focus"):
        assert option in text
    assert "saliency" in _help(capsys)


def _bad_inputs(tmp_path, coffee_png):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(coffee_png.read_bytes()[:5000])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    return {
        "missing file": ([str(tmp_path / "nope.png")], "image not found"),
        "directory": ([str(tmp_path)], "directory"),
        "truncated": ([str(truncated)], "cannot decode image"),
        "not an image": ([str(text)], "not an image"),
        "empty file": ([str(empty)], "not an image"),
        "unknown model": ([str(coffee_png), "--model", "resnet-9000"], "unknown model 'resnet-9000'"),
        "unknown target": ([str(coffee_png), "--target", "spaceship pilot"], "unknown target"),
        "zero queries": ([str(coffee_png), "--queries", "0"], "must be at least 1"),
        "negative queries": ([str(coffee_png), "--queries", "-5"], "must be at least 1"),
        "grid larger than the image": ([str(coffee_png), "--grid", "500"], "larger than the image"),
        "missing output folder": ([str(coffee_png), "--out", str(tmp_path / "no" / "x.png")], "does not exist"),
        "focus out of range": ([str(coffee_png), "--focus", "2"], "between 0 and 1"),
        "focus on another method": ([str(coffee_png), "--focus", "0.3", "--method", "ig"], "needs method banzhaf"),
    }


@pytest.mark.parametrize("case", ["missing file", "directory", "truncated", "not an image", "empty file",
                                  "unknown model", "unknown target", "zero queries", "negative queries",
                                  "grid larger than the image", "missing output folder", "focus out of range",
                                  "focus on another method"])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, coffee_png, capsys, case):
    args, message = _bad_inputs(tmp_path, coffee_png)[case]
    out, npy = tmp_path / "o.png", tmp_path / "o.npy"
    extra = [] if "--out" in args else ["--out", str(out), "--save-map", str(npy)]
    try:
        code = main(["saliency", *args, "--queries" if "--queries" not in args else "--seed", "50"
                     if "--queries" not in args else "0", *extra, "--no-progress"])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2
    lines = [l for l in captured.err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], captured.err
    assert "Traceback" not in captured.err
    assert not out.exists() and not npy.exists()  # no partial output left behind
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".blackbox-") or p.endswith(".tmp.npy")]


def test_bad_input_through_the_console_script_has_no_traceback(tmp_path):
    proc = run_cli("saliency", tmp_path / "missing.jpg")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"blackbox: error: image not found: {tmp_path / 'missing.jpg'}"]


def test_sample_image_lists_and_writes(tmp_path, capsys):
    assert main(["sample-image"]) == 0
    assert "coffee" in capsys.readouterr().out
    assert main(["sample-image", "chelsea", str(tmp_path / "cat.png")]) == 0
    assert Image.open(tmp_path / "cat.png").size == (451, 300)
    assert main(["sample-image", "unicorn"]) == 2
