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


PACKAGES = {"engine": "lamina_engine", "operator": "lamina_operator"}


def module_package(path: Path) -> list[str]:
    """The dotted package a file belongs to, e.g. engine/core/x.py -> [lamina_engine, core]."""
    parts = list(path.relative_to(ROOT).parent.parts)
    return [PACKAGES[parts[0]], *parts[1:]]


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


@pytest.mark.parametrize("path", python_files("operator"), ids=lambda p: str(p.relative_to(ROOT)))
def test_operator_imports_no_torch_or_engine(path):
    bad = top_level(imported_modules(path)) & {"torch", "triton", "lamina_engine"}
    assert not bad, (
        f"{path.relative_to(ROOT)} imports {sorted(bad)}; the operator must stay torch-free"
    )


@pytest.mark.parametrize("path", python_files("engine"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_imports_no_kopf(path):
    bad = top_level(imported_modules(path)) & {"kopf", "lamina_operator"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


SCHEDULER_CORE = [
    "engine/sequence.py",
    *[str(p.relative_to(ROOT)) for p in python_files("engine/core")],
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

    assert Path(lamina_operator.__file__).parent == ROOT / "operator"
    # The stdlib module must win: the folder is only ever imported as lamina_operator.
    assert hasattr(operator, "itemgetter"), operator.__file__


def test_ruff_clean():
    import shutil
    import subprocess

    ruff = shutil.which("ruff") or str(Path(__import__("sys").executable).parent / "ruff")
    proc = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
