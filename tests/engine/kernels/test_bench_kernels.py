"""`lamina bench kernels` runs end to end on the CPU (tiny shapes, Triton interpreter)."""

from __future__ import annotations

import json

from lamina_engine.cli import main


def test_bench_kernels_writes_json_and_markdown(tmp_path):
    assert main(["bench", "kernels", "--device", "cpu", "--out", str(tmp_path / "k")]) == 0
    report = json.loads((tmp_path / "k.json").read_text())
    assert report["peaks"]["bandwidth_gbps"] > 0 and report["peaks"]["matmul_tflops"] > 0
    rows = {(r["case"], r["path"]): r for r in report["results"]}
    assert set(rows) == {
        (case, path)
        for case in ("moe_decode", "moe_prefill", "attention")
        for path in ("triton", "torch")
    }
    for r in rows.values():
        assert r["ms"] > 0 and r["bytes"] > 0 and r["flops"] > 0
        assert r["max_abs_err"] < 1e-4  # the Triton output was checked against the torch path
        assert r["meets_target"] is None  # targets are judged on a GPU only
    table = (tmp_path / "k.md").read_text()
    assert "| moe_prefill | triton |" in table and "of peak BW" in table
