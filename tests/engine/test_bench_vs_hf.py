"""`lamina bench vs-hf`'s agreement report: divergences come with HF's closest routing choice."""

from __future__ import annotations

from pathlib import Path

import torch

from lamina_engine.bench.vs_hf import (
    changed_requests,
    compare,
    cpu_model,
    explain_divergences,
    router_margin,
)


def test_compare_reports_the_first_differing_position():
    margins = [torch.tensor([0.5, 0.25, 0.125]), torch.tensor([1.0, 2.0])]
    got = compare([[1, 2, 3], [4, 5]], [[1, 2, 9], [4, 5]], margins)
    assert got == {
        "identical_requests": 1,
        "divergences": [{"request": 0, "position": 2, "hf_top2_margin": 0.125}],
    }


def test_router_margin_finds_an_exact_routing_tie(tmp_path, make_checkpoint, hf_model):
    path = make_checkpoint(tmp_path, "qwen3_moe", mlp_only_layers=[])
    model = hf_model(path)
    tokens = list(range(3, 12))
    untied = router_margin(model, tokens)
    assert untied["router_margin"] > 0
    # Equal router rows give every expert the same probability: a tie at every choice.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight[:] = layer.mlp.gate.weight[0]
    tied = router_margin(model, tokens)
    assert tied["router_margin"] == 0.0
    assert 0 <= tied["layer"] < len(model.model.layers) and 0 <= tied["position"] < len(tokens)


def test_explain_divergences_adds_the_routing_margin(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3_moe", mlp_only_layers=[])
    reqs = [([5, 6, 7, 8], 3)]
    divergences = [{"request": 0, "position": 2, "hf_top2_margin": 0.1}]
    explain_divergences(path, reqs, [[9, 10, 11]], divergences)
    (d,) = divergences
    assert d["hf_router_margin"] > 0
    assert d["hf_router_margin_at"]["position"] < 4 + 2  # the path: prompt + 2 HF tokens
    assert d["hf_router_margin_at"]["in_prompt"] == (d["hf_router_margin_at"]["position"] < 4)


def test_changed_requests_names_the_side_and_requests_that_drifted():
    first = [[1, 2], [3, 4], [5]]
    assert changed_requests(first, [[1, 2], [3, 4], [5]]) == set()
    assert changed_requests(first, [[1, 2], [3, 9], [5]]) == {1}


def test_cpu_model_reads_the_model_name_and_vector_flags():
    info = cpu_model()
    assert info["model"] and isinstance(info["avx512"], list) and isinstance(info["amx"], list)
    flags = Path("/proc/cpuinfo").read_text().split()
    assert all(f in flags for f in info["avx512"] + info["amx"])
