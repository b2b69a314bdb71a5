"""NixlKVTransport between two real processes: a prefill child serves, this process READs.

The child is a script (tests use --import-mode=importlib, so spawn cannot import from here)
that takes commands on stdin, one per line: `put REQUEST GROUP LAST FIRST_TOKEN BLOB_PATH`,
`quit`. UCX picks its CPU transports (shared memory, TCP) on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time

import nixl_cu12  # noqa: F401  (installed by `make install`; missing, this file fails)
import pytest
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
from lamina_engine.transfer.nixl_backend import NixlKVTransport

CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from lamina_engine.transfer.nixl_backend import NixlKVTransport

    async def main():
        t = NixlKVTransport("d", listen=("127.0.0.1", 0), staging_bytes=int(sys.argv[2]),
                            ttl_s=float(sys.argv[1]))
        print("port", t.address[1], flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            rid, group, last, token, path = line[1:]
            with open(path, "rb") as f:
                blob = f.read()
            await t.put(rid, int(group), blob, last=last == "1",
                        first_token=None if token == "-" else int(token))
            print("ok", flush=True)
        await t.close()

    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)  # skip NIXL's destructors at interpreter exit (they may crash)
    """
)


class Prefill:
    """The child process and a way to make it put blobs."""

    def __init__(self, tmp_path, ttl_s: float = 60.0, staging_bytes: int = 8 << 20) -> None:
        script = tmp_path / "prefill_child.py"
        script.write_text(CHILD)
        env = dict(os.environ, UCX_LOG_LEVEL="error")
        self.tmp = tmp_path
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(ttl_s), str(staging_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        self.port = int(self.reply("port")[1])

    def reply(self, word: str) -> list[str]:
        """The child's next protocol line (NIXL logs to stdout too: skip its lines)."""
        for line in self.proc.stdout:
            if line.split()[:1] == [word]:
                return line.split()
        raise AssertionError(f"prefill child exited with {self.proc.wait(timeout=10)}")

    def put(self, rid: str, group: int, blob: bytes, last=False, first_token=None) -> None:
        path = self.tmp / f"{rid}-{group}.bin"
        path.write_bytes(blob)
        token = "-" if first_token is None else str(first_token)
        self.proc.stdin.write(f"put {rid} {group} {int(last)} {token} {path}\n")
        self.proc.stdin.flush()
        self.reply("ok")

    def stop(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prefill(tmp_path_factory):  # one child for the module: each test uses its own request ids
    child = Prefill(tmp_path_factory.mktemp("nixl"))
    yield child
    child.stop()
    assert child.proc.poll() is not None


def group_blob(group: int, last=False, first_token=None, tokens=33):
    torch.manual_seed(group)
    tensor = torch.randn(2, 2, tokens, 4 * 8).to(torch.bfloat16)
    meta = KVMeta(torch.bfloat16, 2 * group, 2, 0, tokens, 4, 8, last=last, first_token=first_token)
    return tensor, encode_kv(tensor, meta)


def run_decode(port: int, body) -> None:
    async def main():
        decode = NixlKVTransport("d", peer=("127.0.0.1", port), staging_bytes=8 << 20)
        try:
            await body(decode)
        finally:
            await decode.close()

    asyncio.run(main())


def test_groups_round_trip_bit_exact_between_processes(prefill):
    sent = {}
    for g in range(4):
        last = g == 3
        tensor, blob = group_blob(g, last=last, first_token=901 if last else None, tokens=40 + g)
        sent[g] = (tensor, blob)
        prefill.put("req-1", g, blob, last=last, first_token=901 if last else None)

    async def body(decode):
        ready = await decode.groups_ready("req-1")
        assert ready.groups == (0, 1, 2, 3) and ready.complete and ready.first_token == 901
        for g in (2, 0, 3, 1):  # any order: each READ goes to the blob's own staging range
            got = await decode.wait_group("req-1", g, deadline_s=5.0)
            assert got == sent[g][1]
            meta, tensor = decode_kv(got)
            assert torch.equal(tensor, sent[g][0]) and meta.layer_start == 2 * g
        assert decode.stats.get_objects == 4
        assert decode.stats.get_bytes == sum(len(b) for _, b in sent.values())
        await decode.delete("req-1")
        assert not (await decode.groups_ready("req-1")).groups
        with pytest.raises(KVTimeout):
            await decode.wait_group("req-1", 0, deadline_s=0.2)

    run_decode(prefill.port, body)


def test_waiting_decode_wakes_when_the_group_is_put(prefill):
    tensor, blob = group_blob(0, last=True, first_token=5)

    async def body(decode):
        waiter = asyncio.create_task(decode.wait_group("late", 0, deadline_s=10.0))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await asyncio.to_thread(prefill.put, "late", 0, blob, True, 5)
        start = time.perf_counter()
        got = await waiter
        assert time.perf_counter() - start < 2.0
        assert torch.equal(decode_kv(got)[1], tensor)

    run_decode(prefill.port, body)


def test_group_that_never_arrives_times_out_at_the_deadline(prefill):
    prefill.put("r", 0, group_blob(0)[1])

    async def body(decode):
        start = time.perf_counter()
        with pytest.raises(KVTimeout, match="group 1 of request 'r'"):
            await decode.wait_group("r", 1, deadline_s=0.5)
        assert 0.45 <= time.perf_counter() - start < 2.5
        assert decode.stats.failure_kinds == {"KVTimeout": 1}

    run_decode(prefill.port, body)


def test_corrupt_blob_is_caught_after_the_read(prefill):
    blob = bytearray(group_blob(0, last=True, first_token=1)[1])
    blob[len(blob) // 2] ^= 0x10  # one flipped payload bit
    prefill.put("bad", 0, bytes(blob), last=True, first_token=1)

    async def body(decode):
        got = await decode.wait_group("bad", 0, deadline_s=5.0)
        assert got == bytes(blob)  # the transport moved the bytes faithfully
        with pytest.raises(KVCorrupt, match="checksum mismatch"):
            decode_kv(got)

    run_decode(prefill.port, body)


def test_expired_blob_reads_missing(tmp_path):
    child = Prefill(tmp_path, ttl_s=0.5)  # blobs live 0.5 s, readiness records 1.0 s
    try:

        async def body(decode):
            await asyncio.to_thread(child.put, "old", 0, group_blob(0)[1])
            await asyncio.sleep(0.6)
            with pytest.raises(KVMissing, match="expired or was deleted"):
                await decode.wait_group("old", 0, deadline_s=1.0)

        run_decode(child.port, body)
    finally:
        child.stop()


def test_unreachable_peer_and_bad_addresses_say_what_to_do():
    with pytest.raises(ValueError, match="listen= .* or peer="):
        NixlKVTransport("d")
    with pytest.raises(ValueError, match="host:port"):
        NixlKVTransport("d", peer="nowhere")
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now

    async def body(decode):
        with pytest.raises(KVTransportError, match="is the prefill pod up"):
            await decode.wait_group("r", 0, deadline_s=1.0)

    run_decode(port, body)


def test_source_side_bookkeeping_and_full_staging_buffer():
    async def main():
        source = NixlKVTransport("d", listen="127.0.0.1:0", staging_bytes=20 << 10)
        try:
            await source.put("a", 0, group_blob(0, tokens=8)[1])  # 2,112 bytes
            await source.put("a", 1, group_blob(1, tokens=8)[1], last=True, first_token=4)
            ready = await source.groups_ready("a")
            assert ready.complete and ready.first_token == 4
            with pytest.raises(KVTransportError, match="staging buffer full"):
                await source.put("b", 0, group_blob(2, tokens=64)[1])  # 16,448 bytes
            await source.delete("a")  # frees the ranges: now it fits
            await source.put("b", 0, group_blob(2, tokens=64)[1])
            assert source.stats.failure_kinds == {"KVTransportError": 1}
        finally:
            await source.close()

    asyncio.run(main())


def test_make_transport_builds_the_nixl_side_of_each_role():
    from lamina_engine.serving.config import config_from
    from lamina_engine.serving.kv_shipping import make_transport

    def transport(role: str, **env: str):
        env = {"LAMINA_ROLE": role, "LAMINA_KV_BACKEND": "nixl", **env}
        return make_transport(config_from(argparse.Namespace(), env))

    with pytest.raises(ValueError, match="LAMINA_NIXL_PEER=host:port"):
        transport("decode")

    async def main():
        source = transport("prefill", LAMINA_NIXL_LISTEN="127.0.0.1:0")
        reader = transport("decode", LAMINA_NIXL_PEER=f"127.0.0.1:{source.address[1]}")
        try:
            tensor, blob = group_blob(0, last=True, first_token=2)
            await source.put("m", 0, blob, last=True, first_token=2)
            assert torch.equal(decode_kv(await reader.wait_group("m", 0, 5.0))[1], tensor)
        finally:
            await reader.close()
            await source.close()

    asyncio.run(main())
