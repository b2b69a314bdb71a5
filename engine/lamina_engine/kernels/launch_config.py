"""Launch parameters (tile sizes, warps, stages) read from configs/<kernel>.json, not code.

File layout: {"about": str, "default": TABLE, "<device name>": {"<shape key>": TABLE}}, where a
TABLE maps a token count M (as a string) to one launch config, and the entry whose M is nearest
the call's M is used (vLLM's fused_moe convention). The device name is
torch.cuda.get_device_name() ("NVIDIA H200"), or "interpreter" under TRITON_INTERPRET. A device
or shape without an entry falls back to "default". Only measured configs belong under a device
name: scripts/gpu_check.sh prints the shapes it ran so a tuning run can add them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


@functools.cache
def _load(kernel: str) -> dict:
    path = CONFIG_DIR / f"{kernel}.json"
    with path.open() as f:
        return json.load(f)


@functools.cache
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())
    return "interpreter"


def _nearest(table: dict[str, dict], m: int) -> dict:
    key = min(table, key=lambda k: (abs(int(k) - m), int(k)))
    return dict(table[key])


def launch_config(kernel: str, device: torch.device, shape_key: str, m: int) -> dict:
    """The config for `kernel` on `device` at shape `shape_key` (e.g. "E=128,N=768,D=2048")
    nearest token count m."""
    data = _load(kernel)
    table = data.get(device_name(device), {}).get(shape_key) or data["default"]
    if device.type != "cuda":
        # The interpreter runs each program in numpy: the smallest legal tiles are fastest.
        table = data.get("interpreter", table)
    return _nearest(table, m)
