"""The notebooks in examples/ run top to bottom (nbclient, a real IPython kernel) and show their
pictures; committed notebooks carry no outputs, so the repository stays small and reviewable.

To strip a notebook after working in it: ``python tests/test_notebooks.py examples/NAME.ipynb``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def strip(nb) -> bool:
    """Remove outputs and execution counts in place; True if there were any."""
    dirty = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            dirty |= bool(cell.outputs) or cell.execution_count is not None
            cell.outputs, cell.execution_count = [], None
    return dirty


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"saliency", "prompt_tuning", "alignment"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert not strip(nb), f"{path.name} has outputs: strip them with python tests/test_notebooks.py {path}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_and_shows_pictures(path, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell
    pictures = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
                if "image/png" in o.get("data", {})]
    assert pictures, f"{path.name} showed no picture"
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors


if __name__ == "__main__":
    for name in sys.argv[1:] or map(str, NOTEBOOKS):
        notebook = nbformat.read(name, as_version=4)
        if strip(notebook):
            nbformat.write(notebook, name)
            print(f"stripped {name}")
