"""Run-to-run reproducible CPU results: the same values give bitwise the same outputs wherever
the buffers sit in memory (MKL's CNR mode, which `import lamina_engine` turns on; see
lamina_engine/cpu_reproducibility.py). Without it, MKL's fp32 kernels round differently for
operands 4 instead of 8 or 16 bytes aligned (measured on an AMD EPYC with AVX2, no AVX-512;
these tests fail there when MKL ran before lamina_engine was imported)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lamina_engine  # noqa: F401  (before any matmul: sets MKL_CBWR)
from lamina_engine.bench.random_models import make_random_model
from lamina_engine.cpu_reproducibility import cnr_warning, mkl_cnr_branch
from lamina_engine.models import AttentionMetadata, CausalLM, allocate_kv_caches
from lamina_engine.models.layers import linear

needs_mkl = pytest.mark.skipif(mkl_cnr_branch() is None, reason="this torch does not use MKL")


def _at_offset(t: torch.Tensor, floats: int) -> torch.Tensor:
    """A copy of t whose first element sits `floats` fp32 past a 64-byte boundary."""
    buf = torch.empty(t.numel() + 16 + floats, dtype=t.dtype)
    base = (-(buf.data_ptr() // t.element_size())) % 16
    view = buf[base + floats : base + floats + t.numel()].view_as(t)
    view.copy_(t)
    assert view.data_ptr() % 64 == floats * t.element_size() % 64
    return view


@needs_mkl
def test_mkl_runs_in_cnr_mode():
    assert mkl_cnr_branch() != "OFF", cnr_warning()
    assert cnr_warning() is None


@needs_mkl
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
def test_linear_does_not_depend_on_buffer_alignment(rows):
    """Every kernel `linear` picks (MKL mm for 2-4 rows, oneDNN otherwise) and F.linear, bmm
    (decode attention): same values at 0-15 floats past a 64-byte boundary, bitwise equal."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(rows)
    w, x = torch.randn(512, 256, generator=g), torch.randn(rows, 256, generator=g)
    want = linear(x, w)
    want_f = torch.nn.functional.linear(x, w)
    for offset in range(16):
        xo, wo = _at_offset(x, offset), _at_offset(w, (offset * 5) % 16)
        assert torch.equal(linear(xo, wo), want), f"linear, offset {offset}"
        assert torch.equal(torch.nn.functional.linear(xo, wo), want_f), f"F.linear, {offset}"
    q, k = torch.randn(4, 2, 64, generator=g), torch.randn(4, 64, 300, generator=g)
    want_b = torch.bmm(q, k)
    for offset in range(16):
        assert torch.equal(torch.bmm(_at_offset(q, offset), _at_offset(k, 15 - offset)), want_b)


@needs_mkl
def test_same_batch_same_logits_wherever_the_weights_sit(tmp_path):
    """A prefill of three prompts and three decode steps through the tiny MoE model, its weights
    copied to 1, 2, 3 and 8 floats past a 64-byte boundary: bitwise the same logits every step
    (without CNR the 4-, 8- and 12-byte offsets differ by ~1e-6)."""
    torch.set_num_threads(2)
    path = make_random_model("tiny", tmp_path)

    def run(offset: int) -> list[torch.Tensor]:
        model = CausalLM.from_pretrained(path)
        for p in model.parameters():
            p.data = _at_offset(p.data, offset)
        caches = allocate_kv_caches(model.config, 16, 16, torch.float32, "cpu")
        g = torch.Generator().manual_seed(1)
        starts, qlens, tables = [0, 0, 0], [37, 20, 9], [[0, 1, 2], [3, 4], [5]]
        ids = torch.randint(1, model.config.vocab_size, (sum(qlens),), generator=g)
        pos = torch.cat([torch.arange(s, s + q) for s, q in zip(starts, qlens)])
        outs = []
        for _ in range(4):
            md = AttentionMetadata.build(starts, qlens, tables, 16)
            outs.append(model.compute_logits(model(ids, pos, md, caches)))
            starts, qlens = [s + q for s, q in zip(starts, qlens)], [1, 1, 1]
            ids = torch.randint(1, model.config.vocab_size, (3,), generator=g)
            pos = torch.tensor(starts)
        return outs

    want = run(0)
    for offset in (1, 2, 3, 8):
        got = run(offset)
        for step, (a, b) in enumerate(zip(want, got)):
            assert torch.equal(a, b), f"weights at +{offset} floats, step {step}"


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@needs_mkl
def test_import_sets_cnr_unless_mkl_ran_first_or_the_user_chose():
    probe = "from lamina_engine.cpu_reproducibility import mkl_cnr_branch; print(mkl_cnr_branch())"
    assert _python("import lamina_engine, torch\n" + probe) == "AUTO"
    assert _python("import lamina_engine\n" + probe, MKL_CBWR="COMPATIBLE") == "COMPATIBLE"
    # MKL already ran: too late, and the engine's warning says so
    late = "import torch; torch.mm(torch.ones(4, 4), torch.ones(4, 4))\nimport lamina_engine\n"
    assert _python(late + probe) == "OFF"
    warning = "from lamina_engine.cpu_reproducibility import cnr_warning; print(cnr_warning())"
    assert "MKL_CBWR=AUTO" in _python(late + warning)
