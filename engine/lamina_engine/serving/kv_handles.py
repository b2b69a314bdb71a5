"""KV handles: the router's name for a prompt's shipped KV, bound to that prompt.

    handle = f"kv-{uuid}.{mac}"   mac = HMAC-SHA256(internal_key,
                                        request_id | sha256(prompt ids, int32 LE) | model), hex

`request_id` is the handle's part before the dot. The router mints a handle per disaggregated
request; the prefill pod publishes KV under it only for the prompt it names, and the decode pod
loads KV under it only for the prompt it serves, so one client's KV cannot be loaded as another
prompt's (issue 10 #3). Without an internal key the router mints `kv-{uuid}` alone, which no pod
can verify: such KV is still used for the request itself but never enters a prefix cache.

Every id a client or pod sends (request ids, handles, kv_abort ids) is at most `MAX_ID_LEN`
characters of [A-Za-z0-9._:-].
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import uuid
from enum import Enum

from pydantic import SecretStr

from lamina_engine.serving.protocol import OpenAIError

MAX_ID_LEN = 128
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_ID = re.compile(ID_PATTERN)
_INT32 = (-(2**31), 2**31 - 1)


class Verdict(Enum):
    VERIFIED = "verified"  # the key's HMAC matches this prompt and model
    UNVERIFIABLE = "unverifiable"  # this pod has no internal key: use the KV, never cache it


def check_id(value: object, what: str) -> str:
    """`value` as an id, else OpenAIError 400 naming `what`, the bound and the charset."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = repr(value)[:60]
        raise OpenAIError(
            400, f"{what} {shown} must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : -",
            param=what,
        )  # fmt: skip
    return value


def prompt_digest(prompt_ids: list[int]) -> str | None:
    """sha256 (hex) of the prompt ids as int32 little-endian; None if one does not fit int32."""
    if any(not _INT32[0] <= t <= _INT32[1] for t in prompt_ids):
        return None
    return hashlib.sha256(struct.pack(f"<{len(prompt_ids)}i", *prompt_ids)).hexdigest()


def _mac(key: SecretStr, request_id: str, digest: str, model: str) -> str:
    message = f"{request_id}|{digest}|{model}".encode()
    return hmac.new(key.get_secret_value().encode(), message, hashlib.sha256).hexdigest()


def mint(key: SecretStr | None, prompt_ids: list[int], model: str) -> str:
    """A new handle for `prompt_ids` served as `model` (unsigned without a key)."""
    request_id = f"kv-{uuid.uuid4().hex}"
    digest = prompt_digest(prompt_ids)
    if key is None or digest is None:
        return request_id
    return f"{request_id}.{_mac(key, request_id, digest, model)}"


def verify(key: SecretStr | None, handle: str, prompt_ids: list[int], model: str) -> Verdict:
    """Whether KV under `handle` may be used for `prompt_ids` served as `model`: VERIFIED,
    UNVERIFIABLE (no key here), else OpenAIError 400 (never load KV for it)."""
    check_id(handle, "kv_handle")
    if key is None:
        return Verdict.UNVERIFIABLE
    request_id, dot, mac = handle.rpartition(".")
    digest = prompt_digest(prompt_ids)
    if dot and digest is not None and request_id:
        want = _mac(key, request_id, digest, model)
        if hmac.compare_digest(want.encode(), mac.encode()):
            return Verdict.VERIFIED
    raise OpenAIError(
        400, "kv_handle does not match this prompt and model (or was not minted with this "
        "deployment's internal key): its KV is not loaded; the router and every pod must share "
        "LAMINA_INTERNAL_KEY", param="kv_handle", code="invalid_kv_handle",
    )  # fmt: skip
