"""KV transfer between prefill and decode pods (docs/design.md §3.7).

    wire.py           encode_kv / decode_kv: one (request, layer group) as a checksummed blob
    base.py           KVTransport interface, KVReadiness, KVProgress, TransferStats, keys
    redis_backend.py  RedisKVTransport (default), configured by RedisTransportConfig
    local_backend.py  LocalKVTransport (in-process, for tests and single-process runs)
    errors.py         KVTransferError and its kinds: the decode side recomputes on any of them

The Redis backend is imported lazily so the wire format and the local backend work without
redis-py installed.
"""

from lamina_engine.transfer.base import KVProgress, KVReadiness, KVTransport, TransferStats
from lamina_engine.transfer.errors import (
    KVCorrupt,
    KVLost,
    KVMissing,
    KVStalled,
    KVTimeout,
    KVTransferError,
    KVTransportError,
)
from lamina_engine.transfer.local_backend import LocalKVStore, LocalKVTransport
from lamina_engine.transfer.wire import KVMeta, decode_kv, encode_kv, read_header

__all__ = [
    "KVCorrupt",
    "KVLost",
    "KVMeta",
    "KVMissing",
    "KVProgress",
    "KVReadiness",
    "KVStalled",
    "KVTimeout",
    "KVTransferError",
    "KVTransport",
    "KVTransportError",
    "LocalKVStore",
    "LocalKVTransport",
    "RedisKVTransport",
    "RedisTransportConfig",
    "TransferStats",
    "decode_kv",
    "encode_kv",
    "read_header",
]


def __getattr__(name: str):
    if name == "RedisKVTransport":
        from lamina_engine.transfer.redis_backend import RedisKVTransport

        return RedisKVTransport
    if name == "RedisTransportConfig":
        from lamina_engine.transfer.redis_config import RedisTransportConfig

        return RedisTransportConfig
    raise AttributeError(name)
