"""LocalKVTransport: the in-process backend keeps the Redis backend's semantics."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from lamina_engine.transfer import (
    KVMeta,
    KVMissing,
    KVTimeout,
    LocalKVStore,
    LocalKVTransport,
    decode_kv,
    encode_kv,
)


def group_blob(group: int, dtype=torch.bfloat16, last=False, first_token=None, tokens=9):
    torch.manual_seed(group)
    tensor = torch.randn(2, 2, tokens, 4 * 8).to(dtype)
    meta = KVMeta(dtype, 2 * group, 2, 0, tokens, 4, 8, last=last, first_token=first_token)
    return tensor, encode_kv(tensor, meta)


def test_groups_round_trip_in_order_with_first_token():
    async def main():
        store = LocalKVStore()
        prefill, decode = LocalKVTransport("d", store=store), LocalKVTransport("d", store=store)
        sent = {}
        for g in range(3):
            last = g == 2
            tensor, blob = group_blob(g, last=last, first_token=77 if last else None)
            sent[g] = tensor
            await prefill.put("req-1", g, blob, last=last, first_token=77 if last else None)
        ready = await decode.groups_ready("req-1")
        assert ready.groups == (0, 1, 2) and ready.complete and ready.first_token == 77
        for g in range(3):
            meta, got = decode_kv(await decode.wait_group("req-1", g, deadline_s=1.0))
            assert torch.equal(got, sent[g]) and meta.layer_start == 2 * g
        assert decode.stats.get_objects == 3 and prefill.stats.put_bytes == sum(
            len(group_blob(g)[1]) for g in range(3)
        )

    asyncio.run(main())


def test_waiter_wakes_when_its_group_arrives():
    async def main():
        t = LocalKVTransport("d")
        waiter = asyncio.create_task(t.wait_group("r", 1, deadline_s=5.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await t.put("r", 0, group_blob(0)[1])
        await asyncio.sleep(0.02)
        assert not waiter.done()  # group 0 is not the one it waits for
        tensor, blob = group_blob(1)
        start = time.perf_counter()
        await t.put("r", 1, blob, last=True, first_token=3)
        got = await waiter
        assert time.perf_counter() - start < 0.5
        assert torch.equal(decode_kv(got)[1], tensor)
        assert (await t.groups_ready("r")).complete  # 0 and 1 (last) arrived

    asyncio.run(main())


def test_put_from_another_thread_and_loop_wakes_the_waiter():
    store = LocalKVStore()
    tensor, blob = group_blob(0)

    def producer():
        time.sleep(0.1)
        asyncio.run(LocalKVTransport("d", store=store).put("x", 0, blob, last=True))

    async def main():
        thread = threading.Thread(target=producer)
        thread.start()
        got = await LocalKVTransport("d", store=store).wait_group("x", 0, deadline_s=3.0)
        thread.join()
        return got

    assert torch.equal(decode_kv(asyncio.run(main()))[1], tensor)


def test_deadline_raises_kvtimeout_and_counts_a_failure():
    async def main():
        t = LocalKVTransport("d")
        await t.put("r", 0, group_blob(0)[1])
        start = time.perf_counter()
        with pytest.raises(KVTimeout, match="group 1 of request 'r' did not arrive within"):
            await t.wait_group("r", 1, deadline_s=0.2)
        assert 0.2 <= time.perf_counter() - start < 1.0
        with pytest.raises(KVTimeout):
            await t.wait_group("never-sent", 0, deadline_s=0)
        assert t.stats.failures == 2 and t.stats.failure_kinds == {"KVTimeout": 2}

    asyncio.run(main())


def test_expired_object_is_missing_not_a_timeout():
    async def main():
        t = LocalKVTransport("d", ttl_s=0.1, ready_ttl_s=5.0)
        await t.put("r", 0, group_blob(0)[1], last=True)
        await asyncio.sleep(0.15)
        with pytest.raises(KVMissing, match="announced but its object is gone"):
            await t.wait_group("r", 0, deadline_s=1.0)
        assert len(t.store) == 0

    asyncio.run(main())


def test_delete_and_deployments_are_separate_namespaces():
    async def main():
        store = LocalKVStore()
        a, b = LocalKVTransport("a", store=store), LocalKVTransport("b", store=store)
        await a.put("r", 0, group_blob(0)[1], last=True)
        with pytest.raises(KVTimeout):
            await b.wait_group("r", 0, deadline_s=0.05)
        await a.delete("r")
        assert len(store) == 0 and (await a.groups_ready("r")).groups == ()

    asyncio.run(main())


def test_concurrent_requests_do_not_mix():
    async def main():
        t = LocalKVTransport("d")
        want = {(r, g): group_blob(10 * r + g)[1] for r in range(8) for g in range(4)}

        async def produce(r):
            for g in range(4):
                await t.put(f"r{r}", g, want[r, g], last=g == 3, first_token=r)
                await asyncio.sleep(0.001)

        async def consume(r):
            got = [await t.wait_group(f"r{r}", g, deadline_s=2.0) for g in range(4)]
            return r, got, (await t.groups_ready(f"r{r}")).first_token

        results = await asyncio.gather(*map(consume, range(8)), *map(produce, range(8)))
        for r, got, first in results[:8]:
            assert got == [want[r, g] for g in range(4)] and first == r

    asyncio.run(main())


def test_bad_arguments_say_what_is_wrong():
    async def main():
        t = LocalKVTransport("d")
        with pytest.raises(ValueError, match="request_id"):
            await t.put("", 0, b"x")
        with pytest.raises(ValueError, match="layer group"):
            await t.put("r", -1, b"x")
        with pytest.raises(ValueError, match="first_token"):
            await t.put("r", 0, b"x", last=True, first_token=-1)
        with pytest.raises(ValueError, match="deadline_s"):
            await t.wait_group("r", 0, deadline_s=float("inf"))
        await t.close()
        with pytest.raises(RuntimeError, match="closed"):
            await t.put("r", 0, b"x")

    asyncio.run(main())
    with pytest.raises(ValueError, match="deployment"):
        LocalKVTransport("has:colon")
