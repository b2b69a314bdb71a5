"""RedisKVTransport against a real redis-server started on a free loopback port."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import pytest
import redis
import torch

from lamina_engine.transfer import (
    KVCorrupt,
    KVMeta,
    KVMissing,
    KVTimeout,
    KVTransportError,
    decode_kv,
    encode_kv,
)
from lamina_engine.transfer.redis_backend import RedisKVTransport


def load_redis_fixture():
    name = "lamina_tests_redis_fixture"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("redis_fixture.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


rf = load_redis_fixture()  # needs Debian's redis-server, which `make install` installs


@pytest.fixture(scope="module")
def server():
    with rf.RedisServer() as srv:
        yield srv


@pytest.fixture
def raw(server):
    client = redis.Redis(host="127.0.0.1", port=server.port)
    client.flushall()
    yield client
    client.close()


def transport(server, **settings) -> RedisKVTransport:
    settings.setdefault("deployment", "dep")
    return RedisKVTransport.from_url(server.url, **settings)


def group_blob(group, dtype=torch.bfloat16, tokens=33, last=False, first_token=None):
    torch.manual_seed(group)
    tensor = torch.randn(2, 3, tokens, 2 * 16).to(dtype)
    meta = KVMeta(dtype, 3 * group, 3, 0, tokens, 2, 16, last=last, first_token=first_token)
    return tensor, encode_kv(tensor, meta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_groups_round_trip_bit_exact_with_readiness_and_first_token(server, raw, dtype):
    async def main():
        async with transport(server) as prefill, transport(server) as decode:
            sent = {}
            for g in range(4):
                last = g == 3
                sent[g], blob = group_blob(g, dtype, last=last, first_token=9 if last else None)
                await prefill.put("req", g, blob, last=last, first_token=9 if last else None)
                ready = await decode.groups_ready("req")
                assert ready.groups == tuple(range(g + 1)) and ready.complete == last
            assert ready.first_token == 9
            for g in range(4):
                meta, got = decode_kv(await decode.wait_group("req", g, deadline_s=2.0))
                assert got.view(torch.uint8).equal(sent[g].view(torch.uint8))
                assert meta.layer_start == 3 * g and meta.last == (g == 3)
            assert meta.first_token == 9
            assert decode.stats.get_objects == 4 and prefill.stats.put_objects == 4
            assert decode.stats.get_bytes == prefill.stats.put_bytes > 0

    asyncio.run(main())
    assert raw.pttl("lamina:kv:dep:req:g0") > 290_000  # default TTL 300 s on every object
    assert 0 < raw.pttl("lamina:kvready:dep:req") <= 600_000
    assert raw.xlen("lamina:kvready:dep:req") == 4


def test_waiter_blocked_in_xread_gets_the_group_as_soon_as_it_lands(server, raw):
    async def main():
        # socket_timeout_s=0.2: XREAD blocks in 0.1 s slices, so the wait spans several.
        async with transport(server) as prefill, transport(server, socket_timeout_s=0.2) as decode:
            waiter = asyncio.create_task(decode.wait_group("r", 2, deadline_s=5.0))
            await prefill.put("r", 0, group_blob(0)[1])
            await asyncio.sleep(0.35)
            assert not waiter.done()
            tensor, blob = group_blob(2)
            start = time.perf_counter()
            await prefill.put("r", 2, blob, last=True, first_token=1)
            assert torch.equal(decode_kv(await waiter)[1], tensor)
            assert time.perf_counter() - start < 0.5

    asyncio.run(main())


def test_group_that_never_arrives_times_out_at_the_deadline(server, raw):
    async def main():
        async with transport(server) as t:
            await t.put("r", 0, group_blob(0)[1])
            start = time.perf_counter()
            with pytest.raises(KVTimeout, match="group 1 of request 'r' was not announced"):
                await t.wait_group("r", 1, deadline_s=0.3)
            assert 0.3 <= time.perf_counter() - start < 1.5
            assert t.stats.failure_kinds == {"KVTimeout": 1}

    asyncio.run(main())


def test_expired_object_raises_kvmissing(server, raw):
    async def main():
        async with transport(server, ttl_s=0.1, ready_ttl_s=10) as t:
            await t.put("r", 0, group_blob(0)[1], last=True)
            await asyncio.sleep(0.25)
            with pytest.raises(KVMissing, match="announced but 1 of 1 object"):
                await t.wait_group("r", 0, deadline_s=1.0)

    asyncio.run(main())


def test_corrupt_and_truncated_blobs_are_caught_on_decode(server, raw):
    async def main():
        async with transport(server) as t:
            blob = group_blob(0)[1]
            flipped = bytearray(blob)
            flipped[len(blob) // 2] ^= 0x01
            await t.put("r", 0, flipped)
            await t.put("r", 1, blob[:-100])
            with pytest.raises(KVCorrupt, match="checksum mismatch"):
                decode_kv(await t.wait_group("r", 0, deadline_s=1.0))
            with pytest.raises(KVCorrupt, match="truncated"):
                decode_kv(await t.wait_group("r", 1, deadline_s=1.0))

    asyncio.run(main())


def test_large_group_is_split_into_parts_and_reassembled(server, raw):
    async def main():
        async with transport(server, max_object_bytes=4096) as t:
            tensor, blob = group_blob(0, torch.float32, tokens=200)  # 153,664 bytes -> 38 parts
            await t.put("big", 0, blob, last=True)
            got = await t.wait_group("big", 0, deadline_s=1.0)
            assert got == blob and torch.equal(decode_kv(got)[1], tensor)
            assert t.stats.put_objects == t.stats.get_objects == 38
            raw.delete("lamina:kv:dep:big:g0:p17")  # one part evicted: the group is unusable
            with pytest.raises(KVMissing, match="1 of 38 object"):
                await t.wait_group("big", 0, deadline_s=1.0)
            await t.delete("big")

    asyncio.run(main())
    parts = raw.keys("lamina:kv:dep:big:*")
    assert parts == [] and raw.dbsize() == 0  # delete removed every part and the stream


def test_concurrent_requests(server, raw):
    async def main():
        # 12 waiters share 4 connections on the decode side: they take turns, none fails.
        decode_side = transport(server, max_connections=4)
        async with transport(server, max_connections=8) as prefill, decode_side as decode:
            want = {
                (r, g): group_blob(10 * r + g, tokens=17)[1] for r in range(12) for g in range(3)
            }

            async def produce(r):
                for g in range(3):
                    await prefill.put(f"r{r}", g, want[r, g], last=g == 2, first_token=r)

            async def consume(r):
                got = [await decode.wait_group(f"r{r}", g, deadline_s=5.0) for g in range(3)]
                return r, got, (await decode.groups_ready(f"r{r}")).first_token

            results = await asyncio.gather(*map(consume, range(12)), *map(produce, range(12)))
            for r, got, first in results[:12]:
                assert got == [want[r, g] for g in range(3)] and first == r

    asyncio.run(main())


def test_redis_killed_mid_request_fails_fast_with_the_address():
    async def main(srv):
        async with transport(srv, connect_timeout_s=1.0, socket_timeout_s=2.0) as t:
            await t.put("r", 0, group_blob(0)[1])
            waiter = asyncio.create_task(t.wait_group("r", 1, deadline_s=30.0))
            await asyncio.sleep(0.1)
            srv.kill()
            start = time.perf_counter()
            with pytest.raises(KVTransportError, match=f"Redis at 127.0.0.1:{srv.port}"):
                await waiter
            with pytest.raises(KVTransportError, match="is it running"):
                await t.put("r", 1, group_blob(1)[1])
            with pytest.raises(KVTransportError):
                await t.wait_group("r", 0, deadline_s=30.0)
            assert time.perf_counter() - start < 3.0  # never the 30 s deadline
            assert t.stats.failures == 3

    with rf.RedisServer() as srv:
        asyncio.run(main(srv))


def test_auth_with_requirepass():
    async def main(srv):
        url = srv.url
        async with RedisKVTransport.from_url(url, deployment="d", password="s3cret-pw") as t:
            tensor, blob = group_blob(0)
            await t.put("r", 0, blob, last=True)
            assert torch.equal(decode_kv(await t.wait_group("r", 0, deadline_s=1.0))[1], tensor)
        url_with_pw = url.replace("redis://", "redis://:s3cret-pw@")
        async with RedisKVTransport.from_url(url_with_pw, deployment="d") as t:
            await t.ping()
            assert "s3cret" not in repr(t)
        async with RedisKVTransport.from_url(url, deployment="d", password="wrong-pw") as t:
            with pytest.raises(KVTransportError, match="refused .*check the username") as info:
                await t.put("r", 1, blob)
            assert "wrong-pw" not in str(info.value) and f"127.0.0.1:{srv.port}" in str(info.value)
        async with RedisKVTransport.from_url(url, deployment="d") as t:
            with pytest.raises(KVTransportError, match="password"):
                await t.wait_group("r", 0, deadline_s=1.0)

    with rf.RedisServer(password="s3cret-pw") as srv:
        asyncio.run(main(srv))


def test_config_rejects_bad_settings_and_hides_credentials():
    t = RedisKVTransport.from_url("rediss://bob:hunter2@kv.example:6380/1", username="bob")
    assert t.address == "kv.example:6380" and t.config.use_tls
    assert "hunter2" not in repr(t) and "hunter2" not in repr(t.config)
    assert t.config.url == "rediss://kv.example:6380/1"
    assert t.config.password.get_secret_value() == "hunter2"
    with pytest.raises(ValueError, match="scheme 'http' not supported"):
        RedisKVTransport.from_url("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="max_object_bytes"):
        RedisKVTransport.from_url("redis://127.0.0.1:1", max_object_bytes=1 << 30)
    with pytest.raises(ValueError, match="ready_ttl_s"):
        RedisKVTransport.from_url("redis://127.0.0.1:1", ttl_s=10, ready_ttl_s=5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_with_a_private_ca(tmp_path):
    ca, _, _ = tls = rf.make_tls_files(tmp_path)

    async def main(srv):
        assert srv.url.startswith("rediss://")
        async with RedisKVTransport.from_url(srv.url, deployment="d", ssl_ca_certs=str(ca)) as t:
            tensor, blob = group_blob(0)
            await t.put("r", 0, blob, last=True)
            assert torch.equal(decode_kv(await t.wait_group("r", 0, deadline_s=1.0))[1], tensor)
        plain = srv.url.replace("rediss://", "redis://")
        async with RedisKVTransport.from_url(plain, deployment="d", ssl=True) as t:
            with pytest.raises(KVTransportError, match=f"127.0.0.1:{srv.port}"):
                await t.ping()  # TLS on, but the server's CA is not trusted

    with rf.RedisServer(tls=tls) as srv:
        asyncio.run(main(srv))
