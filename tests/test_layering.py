"""The layering the README promises, checked on the source: no import cycles between modules, the
core never imports adapters or the CLI, adapters never import the CLI, and importing the core loads
no heavy or HTTP dependency."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"blackbox": "blackbox", "blackbox.adapters": "adapters", "blackbox.cli": "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imports(module: str, path: Path, known) -> set[str]:
    """Every module of the package that ``module`` imports, at the top or inside a function."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            names = [name] + [f"{name}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known and n != module)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_a_module_that_imports_it_back():
    assert _cycles(_graph()) == []


def test_core_never_imports_adapters_or_cli_and_adapters_never_import_cli():
    bad = []
    for module, deps in _graph().items():
        layer = "cli" if module.startswith("blackbox.cli") else (
            "adapters" if module.startswith("blackbox.adapters") else "core")
        for dep in deps:
            if layer != "cli" and dep.startswith("blackbox.cli"):
                bad.append((module, dep))
            if layer == "core" and dep.startswith("blackbox.adapters"):
                bad.append((module, dep))
    assert bad == []


def test_importing_the_core_loads_no_heavy_or_http_dependency():
    code = ("import sys, blackbox, blackbox.saliency, blackbox.forward_learning; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'transformers', 'openai', 'httpx2', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_every_package_folder_is_shipped():
    """A folder with an __init__.py that pyproject does not list is left out of the wheel: a user's
    `pip install blackbox-lr` would then fail to import it (an editable install hides this)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, folders = set(config["packages"]), config["package-dir"]
    assert all(folders[package] == folder for package, folder in FOLDERS.items())
    found = set()
    for package, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([package, *init.parent.relative_to(ROOT / folder).parts]))
    assert found <= listed, f"not shipped: {sorted(found - listed)}"
