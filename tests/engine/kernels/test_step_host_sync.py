"""No host sync inside a step's layers on the path CUDA takes (kernels="triton"; here under
Triton's interpreter): runner/step.py builds every input before the first layer
(`build_inputs`), and `forward_step` (embed -> layers -> final norm of the sampling rows) must
only launch device work. While it runs, reading a tensor back (.item, .tolist, bool(), int(),
float(), an index, .numpy, .cpu) or making a tensor from host data (torch.tensor, as_tensor,
from_numpy: on CUDA a copy from pageable memory, which waits for every queued kernel) raises.
Plain (chunked) steps, layered-prefill cohorts (first, middle and last groups, stashed rows)
and SPEED (upper layers, compact rows) are all run and checked to have happened."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch

import lamina_engine.runner.step as step_module
from lamina_engine import LLM, SamplingParams

PROMPTS = [[5, 9, 2, 7, 11, 3, 8, 1, 4], [17, 2], [6, 6, 1, 9, 2]]
RUNS = {
    "chunked": dict(max_num_batched_tokens=6, max_num_seqs=3),
    "layered": dict(
        scheduling_policy="layered", layered_group_tokens=4, layered_budget=8, max_num_seqs=3
    ),
    "layered-speed": dict(
        scheduling_policy="layered",
        layered_group_tokens=4,
        layered_budget=8,
        max_num_seqs=3,
        speed={"prefill_layers": 2, "anchors": 1},
    ),  # fmt: skip
    "chunked-speed": dict(
        max_num_batched_tokens=6, max_num_seqs=3, speed={"prefill_layers": 2, "anchors": 1}
    ),
}
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")
MAKERS = ("tensor", "as_tensor", "from_numpy")


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def _no_host_sync(monkeypatch):
    """Within: every read-back or host-data tensor raises HostSync."""
    originals = {}

    def refuse(name):
        def raising(*args, **kwargs):
            raise HostSync(f"{name} inside the step's layers (a host sync on CUDA)")

        return raising

    for name in READS:
        originals[("Tensor", name)] = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, refuse(f"Tensor.{name}"))
    for name in MAKERS:
        originals[("torch", name)] = getattr(torch, name)
        monkeypatch.setattr(torch, name, refuse(f"torch.{name}"))
    try:
        yield
    finally:
        for (owner, name), fn in originals.items():
            monkeypatch.setattr(torch.Tensor if owner == "Tensor" else torch, name, fn)


@pytest.fixture
def qwen3_moe(make_checkpoint, tmp_path_factory):
    # 3 layers (one dense), block size 4: short runs, contexts crossing blocks
    return make_checkpoint(tmp_path_factory.mktemp("m"), "qwen3_moe", num_hidden_layers=3)


@pytest.mark.parametrize("run", list(RUNS))
def test_forward_step_reads_nothing_back(qwen3_moe, monkeypatch, run):
    seen: Counter[str] = Counter()
    syncs: list[str] = []
    forward_step = step_module.forward_step

    def guarded(model, kv_caches, out, stash, inp):
        seen["steps"] += 1
        if out.cohort is not None:
            seen["cohort first" if out.cohort.is_first else "cohort later"] += 1
            seen["cohort last"] += out.cohort.is_last
            seen["stashed rows taken"] += inp.stash_index is not None
            seen["main rows beside a cohort"] += inp.num_main > 0
        if inp.above is not None and inp.above.has_upper:
            seen["upper layers"] += 1
        seen["sampling subset"] += inp.sample_index is not None
        with _no_host_sync(monkeypatch):
            try:
                return forward_step(model, kv_caches, out, stash, inp)
            except HostSync as exc:  # the engine fails the batch's requests; keep why
                syncs.append(str(exc))
                raise

    monkeypatch.setattr(step_module, "forward_step", guarded)
    llm = LLM(str(qwen3_moe), device="cpu", block_size=4, kernels="triton", **RUNS[run])
    assert llm.engine.kernels == "triton"
    # one request leaves early: a later cohort group takes only the others' stashed rows
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (4, 1, 3)]
    outs = llm.generate(PROMPTS, params)
    assert not syncs, syncs[0]
    assert [(o.finish_reason, len(o.token_ids)) for o in outs] == [("length", n) for n in (4, 1, 3)]
    assert seen["steps"] >= 4
    if "layered" in run:
        assert seen["cohort first"] and seen["cohort later"] and seen["cohort last"], seen
    if "speed" in run:  # rows above K that do not sample: a subset samples
        assert seen["upper layers"] and seen["sampling subset"], seen


def test_the_guard_catches_a_read_back(qwen3_moe, monkeypatch):
    """The same guard around a forward_step that reads one value back fails the step."""
    forward_step = step_module.forward_step
    syncs: list[str] = []

    def reads_back(model, kv_caches, out, stash, inp):
        with _no_host_sync(monkeypatch):
            hidden, seqs = forward_step(model, kv_caches, out, stash, inp)
            try:
                hidden.sum().item()
            except HostSync as exc:
                syncs.append(str(exc))
                raise
            return hidden, seqs

    monkeypatch.setattr(step_module, "forward_step", reads_back)
    llm = LLM(str(qwen3_moe), device="cpu", block_size=4, kernels="triton")
    (out,) = llm.generate(PROMPTS[:1], SamplingParams(max_tokens=1, temperature=0))
    assert out.finish_reason == "error"
    assert syncs and "Tensor.item inside the step" in syncs[0]
