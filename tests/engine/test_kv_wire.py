"""The KV blob format: bit-exact round trips and a precise KVCorrupt for every kind of damage."""

from __future__ import annotations

import struct

import pytest
import torch

from lamina_engine.transfer import wire
from lamina_engine.transfer.errors import KVCorrupt
from lamina_engine.transfer.wire import HEADER_SIZE, KVMeta, decode_kv, encode_kv, read_header


def make_kv(dtype=torch.bfloat16, layers=3, tokens=7, heads=2, head_dim=8, seed=0, **flags):
    g = torch.Generator().manual_seed(seed)
    tensor = torch.randn(2, layers, tokens, heads * head_dim, generator=g).to(dtype)
    meta = KVMeta(dtype, layer_start=4, num_layers=layers, token_start=128, num_tokens=tokens,
                  num_kv_heads=heads, head_dim=head_dim, **flags)  # fmt: skip
    return tensor, meta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_bit_exact_and_keeps_meta(dtype):
    tensor, meta = make_kv(dtype, last=True, first_token=151_643)
    blob = encode_kv(tensor, meta)
    assert len(blob) == HEADER_SIZE + tensor.numel() * tensor.element_size()
    got_meta, got = decode_kv(blob)
    assert got_meta == meta
    assert got.dtype == dtype and got.shape == (2, 3, 7, 16)
    # Bit-exact, including NaN payloads and signed zeros: compare the raw bits.
    assert torch.equal(got.view(torch.uint8), tensor.contiguous().view(torch.uint8))
    assert read_header(blob) == meta


def test_five_d_and_non_contiguous_inputs_are_packed_in_kltd_order():
    tensor, meta = make_kv(torch.float32, heads=2, head_dim=4)
    five_d = tensor.view(2, 3, 7, 2, 4)
    assert torch.equal(decode_kv(encode_kv(five_d, meta))[1], tensor)
    strided = tensor.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not strided.is_contiguous()
    assert torch.equal(decode_kv(encode_kv(strided, meta))[1], tensor)


def test_flags_absent_by_default_and_empty_group():
    tensor, meta = make_kv(torch.float16, tokens=0)
    got_meta, got = decode_kv(encode_kv(tensor, meta))
    assert got_meta.last is False and got_meta.first_token is None
    assert got.shape == (2, 3, 0, 16)


def test_decoded_tensor_aliases_the_blob_without_copying():
    tensor, meta = make_kv(torch.float32)
    blob = bytearray(encode_kv(tensor, meta))
    _, got = decode_kv(blob)
    blob[HEADER_SIZE : HEADER_SIZE + 4] = struct.pack("<f", 42.0)
    assert got[0, 0, 0, 0].item() == 42.0


def test_every_flipped_byte_is_detected():
    tensor, meta = make_kv(torch.bfloat16, last=True, first_token=5)
    blob = encode_kv(tensor, meta)
    # Every header byte and a spread of payload bytes, including the checksum itself.
    positions = list(range(HEADER_SIZE)) + list(range(HEADER_SIZE, len(blob), 37))
    for pos in positions:
        damaged = bytearray(blob)
        damaged[pos] ^= 0x10
        with pytest.raises(KVCorrupt):
            decode_kv(damaged)


def test_payload_flip_reports_a_checksum_mismatch():
    tensor, meta = make_kv()
    damaged = bytearray(encode_kv(tensor, meta))
    damaged[-1] ^= 1
    with pytest.raises(KVCorrupt, match="checksum mismatch"):
        decode_kv(damaged)


def test_bad_magic_version_and_truncation_say_what_is_wrong():
    tensor, meta = make_kv()
    blob = encode_kv(tensor, meta)
    with pytest.raises(KVCorrupt, match="magic"):
        decode_kv(b"XXXX" + blob[4:])
    with pytest.raises(KVCorrupt, match="version 9"):
        decode_kv(blob[:4] + struct.pack("<H", 9) + blob[6:])
    with pytest.raises(KVCorrupt, match="shorter than the 64-byte header"):
        decode_kv(blob[:40])
    with pytest.raises(KVCorrupt, match=r"truncated: 10 payload bytes"):
        decode_kv(blob[: HEADER_SIZE + 10])
    with pytest.raises(KVCorrupt, match="3 trailing bytes"):
        decode_kv(blob + b"abc")


def _restamp(header_fields: list, payload: bytes) -> bytes:
    """A blob with a valid checksum over arbitrary (wrong) header fields."""
    header_fields[-1] = 0
    prefix = struct.pack(wire.HEADER_FORMAT, *header_fields)[: HEADER_SIZE - 8]
    header_fields[-1] = wire._checksum(header_fields[5], prefix, memoryview(payload))
    return struct.pack(wire.HEADER_FORMAT, *header_fields) + payload


def test_payload_length_that_disagrees_with_the_shape_is_rejected():
    tensor, meta = make_kv(torch.float32)
    blob = encode_kv(tensor, meta)
    fields = list(struct.unpack_from(wire.HEADER_FORMAT, blob))
    fields[13] = 16  # head_dim 8 -> 16: the shape now needs twice the payload
    with pytest.raises(KVCorrupt, match="payload length mismatch"):
        decode_kv(_restamp(fields, blob[HEADER_SIZE:]))
    fields = list(struct.unpack_from(wire.HEADER_FORMAT, blob))
    fields[3] = 9  # unknown dtype code
    with pytest.raises(KVCorrupt, match="unknown dtype code 9"):
        decode_kv(_restamp(fields, blob[HEADER_SIZE:]))


def test_crc32_fallback_without_xxhash(monkeypatch):
    tensor, meta = make_kv(torch.float16)
    monkeypatch.setattr(wire, "xxhash", None)
    blob = encode_kv(tensor, meta)
    assert blob[10] == wire.CHECKSUM_CRC32
    assert torch.equal(decode_kv(blob)[1], tensor)
    damaged = bytearray(blob)
    damaged[HEADER_SIZE + 3] ^= 0x80
    with pytest.raises(KVCorrupt, match="checksum mismatch"):
        decode_kv(damaged)


def test_encode_rejects_tensors_that_disagree_with_meta():
    tensor, meta = make_kv(torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        encode_kv(tensor.half(), meta)
    with pytest.raises(ValueError, match="does not match meta"):
        encode_kv(tensor[:, :2], meta)
    with pytest.raises(ValueError, match="cannot be shipped"):
        encode_kv(tensor.double(), KVMeta(torch.float64, 0, 3, 0, 7, 2, 8))
    with pytest.raises(ValueError, match="first_token"):
        encode_kv(tensor, KVMeta(torch.float32, 0, 3, 0, 7, 2, 8, first_token=-3))
