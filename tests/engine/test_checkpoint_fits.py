"""An engine whose model does not fit its one device stops before loading, saying how much it
needs and how much the device has (tiny random HF checkpoints from conftest)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lamina_engine.models.checkpoint import (
    CheckpointError,
    check_fits_device,
    find_weight_files,
    plan_tensors,
    read_config,
    weight_bytes,
)


def _shapes(folder):
    located = find_weight_files(folder)
    return plan_tensors(read_config(folder), set(located))[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_bytes_equal_the_checkpoints_tensors_in_that_dtype(make_checkpoint, tmp_path, dtype):
    folder = make_checkpoint(tmp_path, "qwen3_moe")
    numel = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            numel += sum(f.get_tensor(name).numel() for name in f.keys())
    assert weight_bytes(_shapes(folder), dtype) == numel * dtype.itemsize


def test_too_big_for_the_device_says_needed_and_available(make_checkpoint, tmp_path):
    folder = make_checkpoint(tmp_path, "qwen3_moe")
    needed = weight_bytes(_shapes(folder), torch.bfloat16)
    check_fits_device(needed, "cuda:0", folder, free=needed)  # exactly fits: no error
    with pytest.raises(CheckpointError) as info:
        check_fits_device(93 * 2**30, "cuda:0", folder, free=79 * 2**30)
    message = str(info.value)
    assert "need 93.0 GiB on cuda:0" in message and "79.0 GiB free" in message
    assert "one device per pod" in message
    check_fits_device(93 * 2**30, "cpu", folder, free=1)  # host memory is not checked here


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_driver_says_what_is_free(make_checkpoint, tmp_path):
    folder = make_checkpoint(tmp_path, "qwen3_moe")
    free, total = torch.cuda.mem_get_info()
    check_fits_device(weight_bytes(_shapes(folder), torch.float32), "cuda", folder)
    with pytest.raises(CheckpointError, match=f"{free / 2**30:.1f} GiB free"):
        check_fits_device(total + 1, "cuda", folder)
