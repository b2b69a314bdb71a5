"""KV shipping throughput through RedisKVTransport vs raw redis-py SET/GET of the same bytes.

    .venv/bin/python scripts/bench_kv_redis.py [--url redis://127.0.0.1:PORT/0] [--groups 4 8]

Without --url it starts its own redis-server on a free loopback port (never the shared 6379)
and stops it at the end. The KV is a realistic prompt: L layers x T tokens x Hkv heads x D in
bf16, split into G layer groups; one "request" ships all G groups in order, as a prefill pod
does. Reported per G (medians over --repeats requests):

    transport put   RedisKVTransport.put of the pre-encoded blobs (SET PX + XADD + PEXPIRE)
    raw async SET   redis.asyncio SET of the same blobs, same pool settings
    raw sync SET    redis.Redis SET of the same blobs (for reference: no event loop)
    transport get   wait_group of every group (XREAD + GET) vs raw async GET
    encode / decode wire.encode_kv / decode_kv (checksum + one copy), no network

The serving issue's target: transport put >= 70% of raw SET on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import time

import redis
import redis.asyncio as aioredis
import torch

from lamina_engine.transfer.redis_backend import RedisKVTransport
from lamina_engine.transfer.wire import KVMeta, decode_kv, encode_kv

GB = 1e9


def start_redis() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found: apt-get install redis-server, or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise SystemExit(f"redis-server did not start on port {port}")


def make_blobs(args, groups: int) -> list[bytes]:
    """G blobs of a [2, L, T, Hkv*D] bf16 KV, layers split evenly (the last group takes the rest)."""
    g = torch.Generator().manual_seed(0)
    hidden = args.kv_heads * args.head_dim
    kv = torch.randn(2, args.layers, args.tokens, hidden, generator=g).to(torch.bfloat16)
    per = -(-args.layers // groups)
    blobs = []
    for i, start in enumerate(range(0, args.layers, per)):
        n = min(per, args.layers - start)
        last = start + n == args.layers
        meta = KVMeta(torch.bfloat16, start, n, 0, args.tokens, args.kv_heads, args.head_dim,
                      last=last, first_token=42 if last else None)  # fmt: skip
        blobs.append(encode_kv(kv[:, start : start + n], meta))
        assert i < groups
    return blobs


def median_rate(nbytes: int, seconds: list[float]) -> float:
    return nbytes / statistics.median(seconds) / GB


async def bench_async(url: str, blobs: list[bytes], repeats: int) -> dict[str, float]:
    total = sum(len(b) for b in blobs)
    flush = redis.Redis.from_url(url)
    transport = RedisKVTransport.from_url(url, deployment="bench", ttl_s=600)
    raw = aioredis.Redis.from_url(url, socket_timeout=30)
    times: dict[str, list[float]] = {k: [] for k in ("put", "set", "get", "rawget")}
    try:
        await transport.ping()
        for r in range(repeats + 1):  # the first round warms connections up and is dropped
            rid = f"req-{r}"
            start = time.perf_counter()
            for g, blob in enumerate(blobs):
                await transport.put(rid, g, blob, last=g == len(blobs) - 1)
            t_put = time.perf_counter() - start
            start = time.perf_counter()
            for g in range(len(blobs)):
                got = await transport.wait_group(rid, g, deadline_s=30.0)
                assert len(got) == len(blobs[g])
            t_get = time.perf_counter() - start
            flush.flushall()
            start = time.perf_counter()
            for g, blob in enumerate(blobs):
                await raw.set(f"raw:{rid}:g{g}", blob, px=600_000)
            t_set = time.perf_counter() - start
            start = time.perf_counter()
            for g in range(len(blobs)):
                await raw.get(f"raw:{rid}:g{g}")
            t_rawget = time.perf_counter() - start
            flush.flushall()
            if r:
                for key, t in zip(times, (t_put, t_set, t_get, t_rawget), strict=True):
                    times[key].append(t)
    finally:
        await transport.close()
        await raw.aclose()
        flush.close()
    return {key: median_rate(total, t) for key, t in times.items()}


def bench_sync_set(url: str, blobs: list[bytes], repeats: int) -> float:
    total, client, times = sum(len(b) for b in blobs), redis.Redis.from_url(url), []
    for r in range(repeats + 1):
        start = time.perf_counter()
        for g, blob in enumerate(blobs):
            client.set(f"sync:{r}:g{g}", blob, px=600_000)
        if r:
            times.append(time.perf_counter() - start)
        client.flushall()
    client.close()
    return median_rate(total, times)


def bench_codec(args, blobs: list[bytes], repeats: int) -> tuple[float, float]:
    total = sum(len(b) for b in blobs)
    metas_tensors = [decode_kv(b) for b in blobs]
    enc, dec = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for meta, tensor in metas_tensors:
            encode_kv(tensor, meta)
        enc.append(time.perf_counter() - start)
        start = time.perf_counter()
        for blob in blobs:
            decode_kv(blob)
        dec.append(time.perf_counter() - start)
    return median_rate(total, enc), median_rate(total, dec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing Redis; default: start one on a free port")
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    proc, url = (None, args.url) if args.url else start_redis()
    try:
        kv_bytes = 2 * args.layers * args.tokens * args.kv_heads * args.head_dim * 2
        print(f"KV: {args.layers} layers x {args.tokens} tokens x {args.kv_heads} kv heads x "
              f"{args.head_dim} head_dim, bf16 = {kv_bytes / 2**20:.0f} MiB; Redis {url}; "
              f"median of {args.repeats} requests")  # fmt: skip
        header = f"{'G':>3} {'MiB/grp':>8} {'put':>6} {'rawSET':>7} {'syncSET':>8} {'put/SET':>8}"
        header += f" {'put/sync':>9} {'get':>6} {'rawGET':>7} {'get/GET':>8} {'enc':>6} {'dec':>6}"
        print(header + "   (GB/s; ratios in %)")
        for groups in args.groups:
            blobs = make_blobs(args, groups)
            rates = asyncio.run(bench_async(url, blobs, args.repeats))
            sync_set = bench_sync_set(url, blobs, args.repeats)
            enc, dec = bench_codec(args, blobs, args.repeats)
            print(f"{len(blobs):>3} {len(blobs[0]) / 2**20:>8.1f} {rates['put']:>6.2f} "
                  f"{rates['set']:>7.2f} {sync_set:>8.2f} {100 * rates['put'] / rates['set']:>7.0f}% "
                  f"{100 * rates['put'] / sync_set:>8.0f}% {rates['get']:>6.2f} "
                  f"{rates['rawget']:>7.2f} {100 * rates['get'] / rates['rawget']:>7.0f}% "
                  f"{enc:>6.2f} {dec:>6.2f}")  # fmt: skip
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
