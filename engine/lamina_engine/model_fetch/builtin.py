"""builtin://lamina-demo -> a folder: a copy of the demo checkpoint shipped in the package, so
a cluster with no storage set-up (kind, minikube) serves the same model `lamina up` does."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from .source import ModelSource


def fetch_builtin(source: ModelSource, dest: Path) -> str:
    from lamina_engine.demo import demo_model_path

    folder = demo_model_path()  # raises FileNotFoundError naming what is missing
    copied = 0
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:
        target = dest / path.name
        if target.is_file() and filecmp.cmp(path, target, shallow=False):
            continue
        shutil.copyfile(path, target)
        copied += 1
    return f"{source}: {len(files)} files from {folder}, {copied} copied"
