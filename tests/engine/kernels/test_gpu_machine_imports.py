"""What scripts/gpu_check.sh runs must import on the GPU machine, which has torch, triton,
transformers, safetensors, tokenizers, numpy and pytest but no pydantic, fastapi, uvicorn or
redis client (docs: NOTES on the GPU machine)."""

from __future__ import annotations

import subprocess
import sys

_BLOCKED = ("pydantic", "fastapi", "uvicorn", "redis", "kopf", "prometheus_client")

SCRIPT = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {_BLOCKED!r}:
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, Block())
import lamina_engine.bench.kernels
import lamina_engine.kernels.paged_attention
import lamina_engine.models
print("ok")
"""


def test_kernels_bench_and_models_import_without_server_packages():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
