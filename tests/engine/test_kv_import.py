"""Prefilled requests (engine/lamina_engine/kv_import.py): a decode engine reserves blocks, loads the prompt KV
a prefill engine computed one layer group at a time, activates the request and decodes on with
exactly the greedy tokens of a local run (fp32, the shipped demo checkpoint, no transformers).
A group that does not fit raises ValueError and release gives back every block."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from lamina_engine.config import EngineConfig
from lamina_engine.demo import demo_model_path
from lamina_engine.engine import Engine, InvalidRequest
from lamina_engine.kv_export import KVExport
from lamina_engine.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
TEXT = (
    "Once upon a time a little fox found a box of old letters under the stairs, and every "
    "night she read one of them aloud to the owls who lived in the garden behind the house."
)
SPEED = {"prefill_layers": 2, "anchors": 1}  # the demo model has L = 4 layers


def make_engine(**kw) -> Engine:
    kw = {"dtype": "float32", "device": "cpu", "num_gpu_blocks": 64, "block_size": 8, **kw}
    return Engine(EngineConfig(model=str(demo_model_path()), **kw))


@dataclass
class Shipped:
    first_token: int
    groups: list[tuple[int, torch.Tensor]]  # (layer_start, [2, Lg, T, Hkv*D]) in layer order
    tokens: list[int]  # every greedy token of the local run


def prefill(src: Engine, ids: list[int], num_groups: int, rid: str = "src") -> Shipped:
    """Run `ids` on `src` and take its prompt KV the way a prefill pod ships it: the lower
    layers [0, K) split in `num_groups`, then with SPEED layers [K, L) of the full-depth
    prompt tokens' upper slots."""
    shipped: list[tuple[int, torch.Tensor]] = []

    def ship(_rid, _group, layer_start, kv, _first_token) -> None:
        shipped.append((layer_start, kv))

    src.connect_kv_export(KVExport(ship, num_groups))
    src.add_request(rid, ids, GREEDY)
    tokens = run(src)[rid]
    src.connect_kv_export(None)
    return Shipped(tokens[0], shipped, tokens)


def run(engine: Engine) -> dict[str, list[int]]:
    """Step until idle; the output tokens of every request that finished meanwhile."""
    done = {}
    while engine.has_unfinished():
        for out in engine.step().outputs:
            if out.finished:
                done[out.request_id] = out.token_ids
    return done


def load_all(dst: Engine, rid: str, ids: list[int], shipped: Shipped) -> None:
    assert dst.reserve_prefilled(rid, ids, GREEDY)
    for start, kv in shipped.groups:
        dst.load_prefilled_group(rid, start, kv)
    dst.activate_prefilled(rid, shipped.first_token)


def assert_all_free(engine: Engine) -> None:
    bm = engine.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    if getattr(bm, "upper", None) is not None:
        assert bm.upper.num_free_blocks == bm.upper.num_blocks
    assert len(engine.kv_import) == 0 and engine.scheduler.num_reserved == 0


@pytest.fixture(scope="module")
def ids() -> list[int]:
    return make_engine().tokenizer.encode(TEXT)


@pytest.mark.parametrize("speed", [None, SPEED], ids=["full-depth", "speed"])
@pytest.mark.parametrize("num_groups", [1, 3])
def test_groups_loaded_one_at_a_time_decode_like_a_local_prefill(ids, num_groups, speed):
    src, dst = make_engine(speed=speed), make_engine(speed=speed)
    shipped = prefill(src, ids, num_groups)
    lower = 4 if speed is None else 2  # the layers every prompt position has KV in
    assert len(shipped.groups) == min(num_groups, lower) + (speed is not None)
    bm = dst.scheduler.block_manager
    assert dst.reserve_prefilled("r", ids, GREEDY)
    assert bm.num_used_blocks == -(-len(ids) // 8)  # the whole prompt, held from the start
    if speed is not None:
        assert bm.upper.num_used_blocks == 1  # anchor + last prompt token's upper slots
    assert dst.scheduler.num_running == 0 and not dst.has_unfinished()
    for start, kv in shipped.groups:
        dst.load_prefilled_group("r", start, kv)
        assert dst.kv_import.layers_loaded("r") == start + kv.shape[1]
        assert dst.step().outputs == []  # nothing runs: the reserved prompt is invisible to steps
    out = dst.activate_prefilled("r", shipped.first_token)
    assert out.token_ids == [shipped.first_token] and not out.finished
    assert run(dst)["r"] == shipped.tokens
    assert dst.stats.prefill_tokens == 0  # every prompt position came from the wire


def test_prefix_cache_hits_are_kept_and_not_rewritten(ids):
    src, dst = make_engine(), make_engine()
    dst.add_request("warm", ids[:20], GREEDY)  # caches 2 full blocks of 8 on the decode side
    run(dst)
    shipped = prefill(src, ids, 2)
    assert dst.reserve_prefilled("r", ids, GREEDY)
    assert dst.kv_import.sequence("r").num_cached_tokens == 16
    for start, kv in shipped.groups:
        poisoned = kv.clone()
        poisoned[:, :, :16] = float("nan")  # positions the prefix cache holds already
        dst.load_prefilled_group("r", start, poisoned)
    dst.activate_prefilled("r", shipped.first_token)
    assert run(dst)["r"] == shipped.tokens  # any NaN written would wreck these


def test_blocks_serve_prefix_hits_only_once_the_request_is_active(ids):
    src, dst = make_engine(), make_engine()
    shipped = prefill(src, ids, 2)
    assert dst.reserve_prefilled("r", ids, GREEDY)
    dst.load_prefilled_group("r", *shipped.groups[0])
    # layers [2, 4) are not written yet: a request with the same prompt must not hit
    dst.add_request("twin", ids, GREEDY)
    assert run(dst)["twin"] == shipped.tokens and dst.stats.prefill_tokens == len(ids)
    dst.load_prefilled_group("r", *shipped.groups[1])
    dst.activate_prefilled("r", shipped.first_token)
    dst.add_request("later", ids, GREEDY)
    done = run(dst)
    assert done["r"] == done["later"] == shipped.tokens
    hit = (len(ids) - 1) // 8 * 8  # "later" hits every full block but the last token's
    assert dst.stats.prefill_tokens == len(ids) + len(ids) - hit


def test_another_request_decodes_correctly_while_groups_load(ids):
    src, dst = make_engine(), make_engine()
    other = ids[5:40]
    want_other = prefill(src, other, 1, "o").tokens
    shipped = prefill(src, ids, 4)
    dst.add_request("other", other, GREEDY)
    dst.step()  # its prompt
    assert dst.reserve_prefilled("r", ids, GREEDY)
    seq = dst.kv_import.sequence("r")
    for start, kv in shipped.groups:
        dst.load_prefilled_group("r", start, kv)
        for _ in range(2):
            schedule = dst.step().schedule
            assert seq not in [c.seq for c in schedule.scheduled_chunks]
    dst.activate_prefilled("r", shipped.first_token)
    done = run(dst)
    assert done == {"other": want_other, "r": shipped.tokens}


def _out_of_order(groups):
    return [groups[1]]


def _one_token_short(groups):
    start, kv = groups[0]
    return [(start, kv[:, :, 1:])]


def _half_precision(groups):
    start, kv = groups[0]
    return [(start, kv.half())]


def _straddles_k(groups):  # SPEED K = 2: one group of lower layers [0, 3)
    start, kv = groups[0]
    return [(start, torch.cat([kv, kv[:, :1]], dim=1))]


def _upper_for_every_token(groups):  # SPEED: the upper group holds all T, not the F slots
    (_, low), (_, high) = groups
    return [(0, low), (2, torch.cat([low, low], dim=1))]


@pytest.mark.parametrize(
    "speed, mutate, match",
    [
        (None, _out_of_order, r"layers from 2 arrived .* groups must come in layer order"),
        (None, _one_token_short, r"does not fit \[2, <= 4 layers, 35, 128\]"),
        (None, _half_precision, r"torch.float16\) does not fit .* torch.float32"),
        (SPEED, _straddles_k, r"shape \(2, 3, 35, 128\).* <= 2 layers.*cutoff K=2"),
        (SPEED, _upper_for_every_token, r"layer 2, shape \(2, 4, 35, 128\).*\[2, <= 2 layers, 2,"),
    ],
    ids=["out-of-order", "wrong-tokens", "wrong-dtype", "straddles-K", "speed-upper-tokens"],
)
def test_a_group_that_does_not_fit_raises_and_release_frees_every_block(ids, speed, mutate, match):
    prompt = ids[:35]
    src, dst = make_engine(speed=speed), make_engine(speed=speed)
    shipped = prefill(src, prompt, 2 if speed is None else 1)
    assert dst.reserve_prefilled("r", prompt, GREEDY)
    with pytest.raises(ValueError, match=match):
        for start, kv in mutate(shipped.groups):
            dst.load_prefilled_group("r", start, kv)
    dst.release_prefilled("r")
    assert_all_free(dst)
    dst.add_request("r", prompt, GREEDY)  # the id is free again; a recompute is just as good
    assert run(dst)["r"] == shipped.tokens


def test_activate_needs_every_layer_and_abort_releases(ids):
    src, dst = make_engine(), make_engine()
    shipped = prefill(src, ids, 2)
    assert dst.reserve_prefilled("r", ids, GREEDY)
    dst.load_prefilled_group("r", *shipped.groups[0])
    with pytest.raises(ValueError, match="covers 2 of 4 layers"):
        dst.activate_prefilled("r", shipped.first_token)
    with pytest.raises(InvalidRequest, match="already in flight"):
        dst.add_request("r", ids, GREEDY)
    dst.abort("r")  # a client gone mid-transfer
    assert_all_free(dst)
    with pytest.raises(ValueError, match="holds no prefilled reservation"):
        dst.load_prefilled_group("r", *shipped.groups[1])


def test_reserve_is_refused_when_blocks_do_not_fit_now_or_the_request_needs_a_local_prefill(
    ids,
):
    dst = make_engine(num_gpu_blocks=10)
    assert dst.reserve_prefilled("a", ids[:40], GREEDY)  # 5 of 10 blocks
    assert not dst.reserve_prefilled("b", ids[:48], GREEDY)  # 6 more do not fit now
    assert "b" not in dst.kv_import and dst.scheduler.block_manager.num_used_blocks == 5
    assert dst.scheduler.kv_usage == 0.5  # a reservation's blocks count as used
    dst.release_prefilled("a")
    assert dst.reserve_prefilled("b", ids[:48], GREEDY)
    dst.release_prefilled("b")
    with pytest.raises(ValueError, match="logprobs and min_tokens > 1 need the prompt"):
        dst.reserve_prefilled("c", ids, SamplingParams(max_tokens=4, logprobs=2))
    with pytest.raises(InvalidRequest, match="whole KV cache has 10 blocks"):
        dst.reserve_prefilled("d", ids[:8], SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequest, match="prompt token ids must be in"):
        dst.reserve_prefilled("e", [1, 2, 99999], GREEDY)
    assert_all_free(dst)
