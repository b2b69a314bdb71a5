"""The KV blob: one (request, layer group) of KV cache as self-describing bytes.

    blob = header (64 bytes, little-endian) + payload
    payload = tensor [2, L, T, Hkv*D] contiguous, C order   # 2 = K then V, L layers of the
                                                             # group, T tokens, Hkv*D per token

Header fields, in order (struct `HEADER_FORMAT`):

    off size field
      0    4 magic          b"LMKV"
      4    2 version        1
      6    2 header_len     64 (lets a later version append fields)
      8    1 dtype          1 float32, 2 bfloat16, 3 float16
      9    1 layout         1 = [2, layers, tokens, kv_heads*head_dim] ("KLTD")
     10    1 checksum_kind  1 zlib.crc32, 2 xxh3_64 (xxhash)
     11    1 reserved       0
     12    4 flags          bit 0 last group of the request, bit 1 first_token is set
     16    4 layer_start    first layer of the group (absolute layer index)
     20    4 num_layers
     24    4 token_start    first token position in the group (absolute position)
     28    4 num_tokens
     32    4 num_kv_heads
     36    4 head_dim
     40    8 first_token    int64, -1 when absent
     48    8 payload_len    bytes after the header
     56    8 checksum       over header bytes [0, 56) followed by the payload

The checksum covers the header too, so a flipped byte anywhere is caught. xxh3_64 (about
5 GB/s on this machine's CPU) is used when the `xxhash` package is installed, zlib.crc32
(about 1 GB/s, as slow as the Redis SET itself) otherwise; the decoder reads the kind from the
header. K is stored RoPE-rotated, exactly as the cache holds it.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass

import torch

from lamina_engine.transfer.errors import KVCorrupt

try:  # optional: 5x faster than zlib.crc32, so checksumming does not halve the throughput
    import xxhash
except ImportError:  # pragma: no cover - exercised only where xxhash is absent
    xxhash = None

MAGIC = b"LMKV"
VERSION = 1
HEADER_FORMAT = "<4sHHBBBBIIIIIIIqQQ"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 64
_CHECKED_PREFIX = HEADER_SIZE - 8  # the checksum field is last and not covered by itself

LAYOUT_KLTD = 1  # payload [2, layers, tokens, kv_heads*head_dim]
FLAG_LAST = 1 << 0
FLAG_HAS_FIRST_TOKEN = 1 << 1
CHECKSUM_CRC32 = 1
CHECKSUM_XXH3_64 = 2

DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 1, torch.bfloat16: 2, torch.float16: 3}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class KVMeta:
    """What a blob holds: which layers and tokens, the shape of a token's KV, and flags."""

    dtype: torch.dtype
    layer_start: int
    num_layers: int
    token_start: int
    num_tokens: int
    num_kv_heads: int
    head_dim: int
    last: bool = False  # the request's last group; the decode side can start after it
    first_token: int | None = None  # the token prefill sampled, carried by the last group
    layout: int = LAYOUT_KLTD

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (2, self.num_layers, self.num_tokens, self.num_kv_heads * self.head_dim)

    @property
    def payload_nbytes(self) -> int:
        n = 2 * self.num_layers * self.num_tokens * self.num_kv_heads * self.head_dim
        return n * torch.empty((), dtype=self.dtype).element_size()

    def validate(self) -> None:
        if self.dtype not in DTYPE_CODES:
            names = ", ".join(str(d) for d in DTYPE_CODES)
            raise ValueError(f"KV dtype {self.dtype} cannot be shipped; use one of {names}")
        if self.layout != LAYOUT_KLTD:
            raise ValueError(f"unknown KV layout code {self.layout}; only {LAYOUT_KLTD} (KLTD)")
        for name in ("layer_start", "num_layers", "token_start", "num_tokens"):
            value = getattr(self, name)
            if not 0 <= value <= _U32_MAX:
                raise ValueError(f"KVMeta.{name}={value} is outside [0, 2**32)")
        for name in ("num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not 1 <= value <= _U32_MAX:
                raise ValueError(f"KVMeta.{name}={value} must be a positive 32-bit integer")
        if self.first_token is not None and self.first_token < 0:
            raise ValueError(f"first_token={self.first_token} must be a token id >= 0")


def _checksum(kind: int, prefix: bytes | memoryview, payload: memoryview) -> int:
    if kind == CHECKSUM_XXH3_64:
        if xxhash is None:
            raise KVCorrupt(
                "blob is checksummed with xxh3_64 but the xxhash package is not installed "
                "here; pip install xxhash on the decode side"
            )
        h = xxhash.xxh3_64()
        h.update(prefix)
        h.update(payload)
        return h.intdigest()
    if kind == CHECKSUM_CRC32:
        return zlib.crc32(payload, zlib.crc32(prefix))
    raise KVCorrupt(f"unknown checksum kind {kind} in KV blob header (known: 1 crc32, 2 xxh3_64)")


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A flat byte view of a CPU tensor without copying (bf16 has no numpy dtype: go via u8)."""
    flat = tensor.reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def encode_kv(tensor: torch.Tensor, meta: KVMeta) -> bytes:
    """Pack `tensor` [2, L, T, Hkv*D] (or [2, L, T, Hkv, D]) into one blob described by `meta`.

    A CUDA tensor is copied to the host first; the payload is copied once more, into the blob.
    """
    meta.validate()
    if tensor.dtype != meta.dtype:
        raise ValueError(f"KV tensor dtype {tensor.dtype} differs from meta.dtype {meta.dtype}")
    expected = meta.shape
    five_d = (*expected[:3], meta.num_kv_heads, meta.head_dim)
    if tuple(tensor.shape) not in (expected, five_d):
        raise ValueError(
            f"KV tensor shape {tuple(tensor.shape)} does not match meta: expected {expected} "
            f"[2, layers, tokens, kv_heads*head_dim] or {five_d}"
        )
    host = tensor.detach().to("cpu").contiguous()
    payload = _tensor_bytes(host)
    flags = (FLAG_LAST if meta.last else 0) | (
        FLAG_HAS_FIRST_TOKEN if meta.first_token is not None else 0
    )
    kind = CHECKSUM_XXH3_64 if xxhash is not None else CHECKSUM_CRC32
    fields = [
        MAGIC, VERSION, HEADER_SIZE, DTYPE_CODES[meta.dtype], meta.layout, kind, 0, flags,
        meta.layer_start, meta.num_layers, meta.token_start, meta.num_tokens,
        meta.num_kv_heads, meta.head_dim,
        -1 if meta.first_token is None else meta.first_token, len(payload), 0,
    ]  # fmt: skip
    prefix = struct.pack(HEADER_FORMAT, *fields)[:_CHECKED_PREFIX]
    fields[-1] = _checksum(kind, prefix, payload)
    return b"".join((struct.pack(HEADER_FORMAT, *fields), payload))


def _parse(view: memoryview) -> tuple:
    """The raw header fields, after the checks that decide whether the rest can be trusted."""
    if len(view) < HEADER_SIZE:
        raise KVCorrupt(
            f"KV blob truncated: {len(view)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    fields = struct.unpack_from(HEADER_FORMAT, view)
    magic, version, header_len = fields[0], fields[1], fields[2]
    if magic != MAGIC:
        raise KVCorrupt(f"not a KV blob: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION or header_len != HEADER_SIZE:
        raise KVCorrupt(
            f"unsupported KV blob version {version} (header {header_len} bytes); this build "
            f"reads version {VERSION} ({HEADER_SIZE} bytes): run the same Lamina version on "
            "prefill and decode pods"
        )
    return fields


def _meta(fields: tuple) -> KVMeta:
    (_magic, _version, _header_len, dtype_code, layout, _kind, _reserved, flags, layer_start,
     num_layers, token_start, num_tokens, kv_heads, head_dim, first_token, payload_len,
     _checksum) = fields  # fmt: skip
    if dtype_code not in CODE_DTYPES:
        raise KVCorrupt(f"unknown dtype code {dtype_code} in KV blob header (known: 1, 2, 3)")
    if layout != LAYOUT_KLTD:
        raise KVCorrupt(f"unknown layout code {layout} in KV blob header (known: {LAYOUT_KLTD})")
    if bool(flags & FLAG_HAS_FIRST_TOKEN) != (first_token >= 0):
        raise KVCorrupt(f"KV blob flags {flags:#x} disagree with first_token={first_token}")
    meta = KVMeta(
        dtype=CODE_DTYPES[dtype_code],
        layer_start=layer_start,
        num_layers=num_layers,
        token_start=token_start,
        num_tokens=num_tokens,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        last=bool(flags & FLAG_LAST),
        first_token=first_token if flags & FLAG_HAS_FIRST_TOKEN else None,
        layout=layout,
    )
    if meta.payload_nbytes != payload_len:
        raise KVCorrupt(
            f"KV blob payload length mismatch: header says {payload_len} bytes, shape "
            f"{meta.shape} of {meta.dtype} needs {meta.payload_nbytes}"
        )
    return meta


def read_header(blob: bytes | bytearray | memoryview) -> KVMeta:
    """The blob's metadata from its header alone (no checksum or length check of the payload)."""
    return _meta(_parse(memoryview(blob).cast("B")))


def decode_kv(blob: bytes | bytearray | memoryview) -> tuple[KVMeta, torch.Tensor]:
    """Check a blob and view its payload as a [2, L, T, Hkv*D] CPU tensor, without copying.

    The tensor aliases `blob`: treat it as read-only (copy it into the cache, don't write it).
    Raises KVCorrupt saying what is wrong: magic, version, truncation, length or checksum.
    """
    view = memoryview(blob).cast("B")
    fields = _parse(view)
    kind, payload_len, checksum = fields[5], fields[15], fields[16]
    got = len(view) - HEADER_SIZE
    if got < payload_len:
        raise KVCorrupt(f"KV blob truncated: {got} payload bytes, header says {payload_len}")
    if got > payload_len:
        raise KVCorrupt(f"KV blob has {got - payload_len} trailing bytes after the payload")
    payload = view[HEADER_SIZE:]
    actual = _checksum(kind, view[:_CHECKED_PREFIX], payload)
    if actual != checksum:
        raise KVCorrupt(
            f"KV blob checksum mismatch: header {checksum:#x}, computed {actual:#x} "
            "(the blob was damaged in transit or in the store)"
        )
    meta = _meta(fields)
    if payload_len == 0:
        return meta, torch.empty(meta.shape, dtype=meta.dtype)
    with warnings.catch_warnings():
        # frombuffer warns on read-only buffers (bytes from Redis); the tensor is only read.
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(payload, dtype=meta.dtype)
    return meta, flat.view(meta.shape)
