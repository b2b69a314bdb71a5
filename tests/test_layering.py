"""Layering rules that keep the architecture visible (docs/architecture.md).

- lamina_operator never imports torch or lamina_engine: the operator image stays small.
- lamina_engine never imports kopf.
- The scheduler core (sequence, block manager, scheduler) imports no torch, so it is tested
  exactly on CPU and reused by the router's prefix matcher.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


ENGINE = "engine/lamina_engine"
OPERATOR = "operator/lamina_operator"


def module_package(path: Path) -> list[str]:
    """The dotted package a file belongs to, e.g. engine/lamina_engine/core/x.py ->
    [lamina_engine, core]: the layer folder (engine/, operator/) is not part of the name."""
    return list(path.relative_to(ROOT).parent.parts[1:])


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = []
            if node.level:
                pkg = module_package(path)
                base = pkg[: len(pkg) - node.level + 1]
            mod = ".".join([*base, *([node.module] if node.module else [])])
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def top_level(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files(OPERATOR), ids=lambda p: str(p.relative_to(ROOT)))
def test_operator_imports_no_torch_or_engine(path):
    bad = top_level(imported_modules(path)) & {"torch", "triton", "lamina_engine"}
    assert not bad, (
        f"{path.relative_to(ROOT)} imports {sorted(bad)}; the operator must stay torch-free"
    )


@pytest.mark.parametrize("path", python_files(ENGINE), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_imports_no_kopf(path):
    bad = top_level(imported_modules(path)) & {"kopf", "lamina_operator"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


SCHEDULER_CORE = [
    f"{ENGINE}/sequence.py",
    *[str(p.relative_to(ROOT)) for p in python_files(f"{ENGINE}/core")],
]


@pytest.mark.parametrize("rel", SCHEDULER_CORE)
def test_scheduler_core_imports_no_torch(rel):
    names = imported_modules(ROOT / rel)
    bad = top_level(names) & {"torch", "triton", "numpy"}
    bad |= {n for n in names if n.startswith(("lamina_engine.runner", "lamina_engine.models"))}
    assert not bad, f"{rel} imports {sorted(bad)}; the scheduler core must stay pure Python"


def test_no_top_level_package_named_operator():
    import operator

    import lamina_operator

    assert Path(lamina_operator.__file__).parent == ROOT / OPERATOR
    # The stdlib module must win even with the repo root on sys.path (as `python -m` puts it):
    # operator/ holds no __init__.py, only the lamina_operator package.
    assert hasattr(operator, "itemgetter"), operator.__file__
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_editable_install_is_plain_paths():
    """Imports resolve through plain sys.path entries (engine/, operator/), not an import hook,
    so IDEs and type checkers follow them and tracebacks name the files that were imported."""
    import importlib.util

    for name, folder in (("lamina_engine", ENGINE), ("lamina_operator", OPERATOR)):
        spec = importlib.util.find_spec(name)
        assert Path(spec.origin).parent == ROOT / folder, spec.origin


def test_ruff_clean():
    import shutil
    import subprocess

    ruff = shutil.which("ruff") or str(Path(__import__("sys").executable).parent / "ruff")
    proc = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
