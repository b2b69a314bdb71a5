"""Sequence: one request's tokens and how many of them have KV in the cache.

The scheduler core keeps no prefill/decode phase. A sequence is described by two counts:
`num_tokens` (prompt + outputs so far) and `num_computed_tokens` (tokens whose KV is cached).
The tokens in `[num_computed_tokens, num_tokens)` still have to run through the model; when the
last of them runs, a new token is sampled. A running "decode" is simply a sequence with exactly
one token left to compute. No torch here: this file is tested exactly on CPU.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterable
from typing import Any


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued; holds no KV blocks
    RUNNING = "running"  # admitted; owns KV blocks for all its tokens scheduled so far
    # owns blocks for its prompt, whose KV is being loaded from a prefill pod; never scheduled
    RESERVED = "reserved"
    FINISHED = "finished"  # done (see finish_reason); blocks returned


# Why a sequence stopped. "stop": EOS or a stop string/token; "length": max_tokens or
# max_model_len reached; "abort": the client went away; "error": the request failed on its own.
FINISH_REASONS = frozenset({"stop", "length", "abort", "error"})

_seq_ids = itertools.count()


class Sequence:
    """One request. `params` is opaque here (the engine's SamplingParams); only `max_tokens`
    is read, to reject requests whose KV could never fit."""

    def __init__(
        self,
        prompt_token_ids: Iterable[int],
        params: Any = None,
        *,
        seq_id: int | None = None,
        arrival_time: float | None = None,
    ) -> None:
        self.seq_id: int = next(_seq_ids) if seq_id is None else seq_id
        # prompt followed by outputs, one list so per-step appends and slices are cheap
        self._token_ids: list[int] = [int(t) for t in prompt_token_ids]
        self._num_prompt_tokens = len(self._token_ids)
        self.params = params
        self.arrival_time: float = time.monotonic() if arrival_time is None else arrival_time
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        # tokens whose KV is in the cache (prefix hits included); reset to 0 on preemption
        self.num_computed_tokens = 0
        # tokens served from the prefix cache at the latest admission (a metric, not state)
        self.num_cached_tokens = 0
        # block ids into the KV cache: token p lives in block_table[p // block_size]
        self.block_table: list[int] = []
        # SPEED only: upper-layer blocks; the j-th full-depth token lives in slot j (core/speed_layout.py)
        self.upper_block_table: list[int] = []
        # chained prefix hashes of the first full blocks (core/block_manager.py fills it in
        # order), kept so a waiting prompt is not rehashed every step; tokens are only ever
        # appended, so a block's hash never changes once computed
        self._block_hashes: list[int] = []
        self._hash_block_size = 0  # the block size _block_hashes were computed for
        # False for KV shipped under an unverified handle: its blocks never enter the prefix cache
        self.prefix_cacheable = True

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, {self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table})"
        )

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._token_ids[: self._num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self._token_ids[self._num_prompt_tokens :]

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt + outputs. The live list, not a copy: read it, never mutate it."""
        return self._token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return self._num_prompt_tokens

    @property
    def num_output_tokens(self) -> int:
        return len(self._token_ids) - self._num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self._token_ids) - self.num_computed_tokens

    @property
    def last_token(self) -> int:
        return self._token_ids[-1]

    @property
    def max_tokens(self) -> int | None:
        """The output-length limit from `params`, if it carries one."""
        return getattr(self.params, "max_tokens", None)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_hash_memo(self, block_size: int) -> list[int]:
        """The hashes of blocks [0, n) of `block_size` tokens computed so far: the live list,
        which the block manager extends. Another block size starts a new list."""
        if block_size != self._hash_block_size:
            self._block_hashes, self._hash_block_size = [], block_size
        return self._block_hashes

    def append_token(self, token_id: int) -> None:
        self._token_ids.append(int(token_id))
