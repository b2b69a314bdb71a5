"""BlockManager: paged KV blocks, a free list, ref counts and a prefix cache. No torch.

The KV cache is `num_blocks` blocks of `block_size` token slots. A sequence's block table maps
its positions to blocks: token p lives in slot `table[p // block_size] * block_size +
p % block_size`.

Prefix caching: once a block is full and its KV computed, it is named by a chained hash,
`hash_i = H(hash_{i-1}, tokens of block i)`, so equal hashes mean equal *prefixes*, not just
equal blocks. A later sequence whose leading blocks hash the same shares those blocks (ref count
+1) instead of recomputing them. A freed block keeps its hash and stays evictable in LRU order
until the allocator needs it; blocks with no cached content are handed out first.

The table-level methods (`allocate_table`, `grow_table`, `cache_table`, `free_table`) take the
block table and tokens explicitly, so one manager can back any table; the sequence-level methods
are the same operations on `seq.block_table`, with the sequence's memo of its block hashes
(`Sequence.block_hash_memo`), so each block is hashed once however many steps it waits. SPEED keeps two independent pools this way (a
lower-layer and an upper-layer manager, each with its own table per sequence).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict, deque
from collections.abc import KeysView
from collections.abc import Sequence as TokenIds

from ..sequence import Sequence


def hash_block(parent: int | None, token_ids: TokenIds[int]) -> int:
    """Stable 64-bit hash of one full block after the prefix hashed as `parent`.

    blake2b over little-endian bytes, so the value is the same in every process and on every
    machine (the router hashes prompts the same way to pick the pod likely to hold them). The
    root block has no parent bytes; every other block starts with its parent's 8 bytes.
    """
    h = hashlib.blake2b(digest_size=8, person=b"lamina-kv")
    if parent is not None:
        h.update(parent.to_bytes(8, "little"))
    try:
        h.update(struct.pack(f"<{len(token_ids)}I", *token_ids))
    except struct.error as e:
        raise ValueError(f"token ids must be integers in [0, 2**32): {e}") from None
    return int.from_bytes(h.digest(), "little")


def block_hashes(token_ids: TokenIds[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (a trailing partial block has none)."""
    hashes: list[int] = []
    parent = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes


class NoFreeBlocksError(RuntimeError):
    """Raised when an allocation is attempted without checking `can_*` first (a bug)."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # hash of a full, computed block's content; None while it is partial or uncomputed
        self.block_hash: list[int | None] = [None] * num_blocks
        # hash -> the one block that serves hits for it (duplicates may exist, unregistered)
        self._cached: dict[int, int] = {}
        # free blocks with no cached content, handed out first (FIFO)
        self._free: deque[int] = deque(range(num_blocks))
        # free blocks whose content is still cached, least recently freed first
        self._evictable: OrderedDict[int, None] = OrderedDict()
        # prefix-cache effectiveness, over all allocations: hit rate = hit / queried tokens
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0

    # ---- accounting ------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence owns (evictable cached blocks included)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks whose content can serve prefix hits (owned or evictable)."""
        return len(self._cached)

    @property
    def cached_hashes(self) -> KeysView[int]:
        """Hashes this pool can serve hits for (a live view; what the router matches against)."""
        return self._cached.keys()

    @property
    def usage(self) -> float:
        """Fraction of blocks owned by sequences, in [0, 1]."""
        return self.num_used_blocks / self.num_blocks

    def blocks_for(self, num_slots: int) -> int:
        return -(-num_slots // self.block_size)

    # ---- prefix lookup ---------------------------------------------------------------------

    def prefix_hash(self, token_ids: TokenIds[int], i: int, memo: list[int]) -> int:
        """The chained hash of block i of `token_ids`. `memo` holds the hashes of blocks
        [0, len(memo)) of these tokens and is extended in order up to block i."""
        bs = self.block_size
        while len(memo) <= i:
            j = len(memo)
            memo.append(hash_block(memo[j - 1] if j else None, token_ids[j * bs : (j + 1) * bs]))
        return memo[i]

    def find_cached_prefix(
        self, token_ids: TokenIds[int], memo: list[int] | None = None
    ) -> list[int]:
        """Block ids of the longest cached prefix of `token_ids` (`memo`: see prefix_hash).

        At most `(len - 1) // block_size` blocks: the last token is always left to compute (its
        logits give the next token), and capping whole blocks means a sequence never writes into
        a block it shares.
        """
        if not self.enable_prefix_caching:
            return []
        memo = [] if memo is None else memo
        hits: list[int] = []
        for i in range((len(token_ids) - 1) // self.block_size):
            block = self._cached.get(self.prefix_hash(token_ids, i, memo))
            if block is None:
                break
            hits.append(block)
        return hits

    # ---- table-level operations ------------------------------------------------------------

    def can_allocate_tokens(self, token_ids: TokenIds[int], memo: list[int] | None = None) -> bool:
        return self._fits(token_ids, self.find_cached_prefix(token_ids, memo))

    def allocate_table(
        self, table: list[int], token_ids: TokenIds[int], memo: list[int] | None = None
    ) -> int:
        """Fill an empty `table` with blocks for every token; return the prefix-hit length."""
        if table:
            raise ValueError(f"allocate_table needs an empty block table, got {table}")
        hits = self.find_cached_prefix(token_ids, memo)
        if not self._fits(token_ids, hits):
            raise NoFreeBlocksError(f"not enough free blocks for {len(token_ids)} tokens")
        self.num_queried_tokens += len(token_ids)
        self.num_hit_tokens += len(hits) * self.block_size
        for block in hits:
            self._take(block)
        table.extend(hits)
        for _ in range(self.blocks_for(len(token_ids)) - len(hits)):
            table.append(self._allocate_block())
        return len(hits) * self.block_size

    def can_grow_table(self, table: list[int], num_slots: int) -> bool:
        return self.blocks_for(num_slots) - len(table) <= self.num_free_blocks

    def grow_table(self, table: list[int], num_slots: int) -> None:
        """Append blocks until `table` covers positions [0, num_slots)."""
        missing = self.blocks_for(num_slots) - len(table)
        if missing > self.num_free_blocks:
            raise NoFreeBlocksError(f"need {missing} blocks, {self.num_free_blocks} free")
        for _ in range(missing):
            table.append(self._allocate_block())

    def cache_table(
        self,
        table: list[int],
        token_ids: TokenIds[int],
        num_computed: int,
        memo: list[int] | None = None,
    ) -> None:
        """Name every full block whose KV is computed, so later prompts can hit it (`memo`:
        see prefix_hash; without one, the chain continues from the named blocks' hashes)."""
        if not self.enable_prefix_caching:
            return
        num_full = min(num_computed // self.block_size, len(table))
        first = num_full  # blocks are named in order: walk back to the first unnamed one
        while first > 0 and self.block_hash[table[first - 1]] is None:
            first -= 1
        if memo is None:
            memo = [self.block_hash[b] for b in table[:first]]  # all named (in order)
        for i in range(first, num_full):
            h = self.prefix_hash(token_ids, i, memo)
            block = table[i]
            self.block_hash[block] = h
            # an identical block computed twice stays a private duplicate; the first one serves
            self._cached.setdefault(h, block)

    def free_table(self, table: list[int]) -> None:
        """Drop one reference to each block and empty `table`.

        Tail blocks are released first so they are evicted first: a prefix's later blocks are
        useless without its earlier ones.
        """
        for block in reversed(table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] < 0:
                raise RuntimeError(f"block {block} freed more often than allocated")
            if self.ref_counts[block] == 0:
                self._release(block)
        table.clear()

    # ---- sequence-level operations (seq.block_table) ---------------------------------------

    def can_allocate(self, seq: Sequence) -> bool:
        return self.can_allocate_tokens(seq.all_token_ids, seq.block_hash_memo(self.block_size))

    def allocate(self, seq: Sequence) -> int:
        """Blocks for all of `seq`'s tokens (the prompt, plus outputs when it is recomputed
        after preemption), reusing cached prefix blocks. Sets `num_cached_tokens` and
        `num_computed_tokens` to the hit length, always < `num_tokens`; returns it."""
        memo = seq.block_hash_memo(self.block_size)
        hit = self.allocate_table(seq.block_table, seq.all_token_ids, memo)
        seq.num_cached_tokens = hit
        seq.num_computed_tokens = hit
        return hit

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.can_grow_table(seq.block_table, seq.num_computed_tokens + num_new_tokens)

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow `seq.block_table` so positions up to num_computed + num_new_tokens fit."""
        self.grow_table(seq.block_table, seq.num_computed_tokens + num_new_tokens)

    def cache_blocks(self, seq: Sequence) -> None:
        if not seq.prefix_cacheable:  # KV from an unverified source: hits stay its own
            return
        memo = seq.block_hash_memo(self.block_size)
        self.cache_table(seq.block_table, seq.all_token_ids, seq.num_computed_tokens, memo)

    def free(self, seq: Sequence) -> None:
        self.free_table(seq.block_table)

    # ---- internals -------------------------------------------------------------------------

    def _fits(self, token_ids: TokenIds[int], hits: list[int]) -> bool:
        new = self.blocks_for(len(token_ids)) - len(hits)
        revived = sum(1 for b in hits if self.ref_counts[b] == 0)  # they leave the free pool
        return new + revived <= self.num_free_blocks

    def _take(self, block: int) -> None:
        """One more owner for a cached block (revives it if it was evictable)."""
        if self.ref_counts[block] == 0:
            del self._evictable[block]
        self.ref_counts[block] += 1

    def _allocate_block(self) -> int:
        if self._free:
            block = self._free.popleft()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            self._forget(block)
        else:
            raise NoFreeBlocksError("no free KV blocks")
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        h = self.block_hash[block]
        if h is not None and self._cached.setdefault(h, block) == block:
            self._evictable[block] = None
        else:  # uncomputed content, or a duplicate of a block that serves the hash
            self.block_hash[block] = None
            self._free.append(block)

    def _forget(self, block: int) -> None:
        h = self.block_hash[block]
        if h is not None and self._cached.get(h) == block:
            del self._cached[h]
        self.block_hash[block] = None
