"""BlockManager: exact block ids for allocation, prefix hits, chained hashes, LRU eviction."""

import hashlib
import struct

import pytest

from lamina_engine.core.block_manager import BlockManager, NoFreeBlocksError, block_hashes
from lamina_engine.sequence import Sequence

BS = 4  # tokens per block in these tests


def computed(bm: BlockManager, tokens, seq_id=None) -> Sequence:
    """A sequence allocated in `bm` whose whole prompt has been computed and cached."""
    seq = Sequence(tokens, seq_id=seq_id)
    bm.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_blocks(seq)
    return seq


def test_block_hashes_are_chained_blake2b_of_little_endian_tokens():
    # The router recomputes these from prompts, so the encoding is part of the contract.
    def expected(parent, toks):
        h = hashlib.blake2b(digest_size=8, person=b"lamina-kv")
        if parent is not None:
            h.update(parent.to_bytes(8, "little"))
        h.update(struct.pack(f"<{len(toks)}I", *toks))
        return int.from_bytes(h.digest(), "little")

    h0 = expected(None, [1, 2, 3, 4])
    h1 = expected(h0, [5, 6, 7, 8])
    assert block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], BS) == [h0, h1]  # token 9: partial, no hash
    assert block_hashes([1, 2, 3], BS) == []
    # the same block after a different prefix is a different block
    assert block_hashes([9, 9, 9, 9, 5, 6, 7, 8], BS)[1] != h1


def test_block_hashes_reject_tokens_outside_uint32():
    with pytest.raises(ValueError, match="token ids"):
        block_hashes([-1, 2, 3, 4], BS)


def test_a_waiting_prompt_is_hashed_once_and_its_memo_grows_with_its_tokens():
    bm = BlockManager(num_blocks=3, block_size=BS)
    computed(bm, list(range(12)))  # 3 blocks cached, none free: the next prompt must wait
    waiting = Sequence(list(range(8)) + [50, 51, 52, 53, 54])  # 2 hits, then a miss
    memo = waiting.block_hash_memo(BS)
    for _ in range(3):  # each step asks again while the prompt waits
        assert not bm.can_allocate(waiting)
        # hashed up to the first miss, once: the same list, no longer on later steps
        assert waiting.block_hash_memo(BS) is memo
        assert memo == block_hashes(waiting.all_token_ids, BS)[:3]
    # the memo serves lookups as the fresh hashes would, and grows as tokens are appended
    bm2 = BlockManager(num_blocks=8, block_size=BS)
    seq = computed(bm2, waiting.prompt_token_ids)
    assert seq.block_hash_memo(BS) == block_hashes(seq.all_token_ids, BS)
    for t in (60, 61, 62):
        seq.append_token(t)
        bm2.append_slots(seq, 1)
        seq.num_computed_tokens += 1
        bm2.cache_blocks(seq)
    assert seq.block_hash_memo(BS) == block_hashes(seq.all_token_ids, BS)  # 4 full blocks
    assert set(bm2.cached_hashes) == set(block_hashes(seq.all_token_ids, BS))
    # another block size is another chain: the memo starts over
    assert seq.block_hash_memo(BS * 2) == []


def test_allocation_takes_blocks_in_free_list_order():
    bm = BlockManager(num_blocks=10, block_size=BS)
    a, b = Sequence(range(10)), Sequence(range(100, 105))
    assert bm.allocate(a) == 0
    assert bm.allocate(b) == 0
    assert a.block_table == [0, 1, 2]
    assert b.block_table == [3, 4]
    assert bm.num_free_blocks == 5 and bm.usage == 0.5
    assert bm.ref_counts[:6] == [1, 1, 1, 1, 1, 0]

    bm.free(a)
    assert a.block_table == [] and bm.ref_counts[:3] == [0, 0, 0]
    assert bm.num_free_blocks == 8
    # never-computed blocks carry nothing worth keeping: they go to the back of the free list
    c = Sequence(range(200, 220))
    bm.allocate(c)
    assert c.block_table == [5, 6, 7, 8, 9]


def test_prefix_hit_shares_blocks_and_bumps_ref_counts():
    bm = BlockManager(num_blocks=10, block_size=BS)
    a = computed(bm, list(range(10)))  # blocks 0, 1 full and cached; block 2 partial
    assert bm.num_cached_blocks == 2

    b = Sequence([*range(8), 50, 51, 52, 53])
    assert bm.allocate(b) == 8
    assert b.block_table == [0, 1, 3]
    assert (b.num_cached_tokens, b.num_computed_tokens) == (8, 8)
    assert bm.ref_counts[:4] == [2, 2, 1, 1]
    assert (bm.num_hit_tokens, bm.num_queried_tokens) == (8, 10 + 12)
    # what a router sees: the same hashes it computes from the prompt itself
    assert set(bm.cached_hashes) == set(block_hashes(list(range(10)), BS))

    bm.free(a)
    assert bm.ref_counts[:4] == [1, 1, 0, 1]
    bm.free(b)
    assert bm.ref_counts[:4] == [0, 0, 0, 0]
    assert bm.num_free_blocks == 10


def test_same_block_after_a_different_prefix_does_not_hit():
    bm = BlockManager(num_blocks=10, block_size=BS)
    computed(bm, [1, 2, 3, 4, 5, 6, 7, 8, 0])  # blocks 0, 1, 2
    c = Sequence([9, 9, 9, 9, 5, 6, 7, 8, 0])  # second block equal, first differs
    assert bm.allocate(c) == 0
    assert c.block_table == [3, 4, 5]


def test_full_prompt_hit_still_computes_the_last_token():
    bm = BlockManager(num_blocks=10, block_size=BS)
    computed(bm, range(8))  # two full cached blocks: 0, 1

    same = Sequence(range(8))
    # the last block is not reused: its last token must run to produce logits, and a sequence
    # never writes into a block it shares
    assert bm.allocate(same) == 4
    assert same.block_table == [0, 2]
    assert same.num_uncomputed_tokens == 4

    longer = Sequence([*range(8), 99])
    assert bm.allocate(longer) == 8
    assert longer.block_table == [0, 1, 3]
    assert longer.num_uncomputed_tokens == 1


def test_freed_cached_blocks_are_evicted_last_and_in_lru_order():
    bm = BlockManager(num_blocks=6, block_size=BS)
    a = computed(bm, range(12))  # blocks 0, 1, 2, all full and cached
    bm.free(a)  # released tail first: LRU order 2, 1, 0
    assert bm.num_free_blocks == 6 and bm.num_cached_blocks == 3

    x = Sequence(range(100, 116))  # 4 blocks, no hit: 3, 4, 5 (uncached) then evict 2
    bm.allocate(x)
    assert x.block_table == [3, 4, 5, 2]
    assert bm.num_cached_blocks == 2

    # a's first block survived: a prompt sharing it hits it; its second block gets evicted
    y = Sequence([0, 1, 2, 3, 7])
    assert bm.allocate(y) == 4
    assert y.block_table == [0, 1]
    assert bm.num_cached_blocks == 1
    assert bm.num_free_blocks == 0
    assert not bm.can_allocate(Sequence([1]))


def test_hit_on_an_evictable_block_revives_it_and_counts_against_free_blocks():
    bm = BlockManager(num_blocks=3, block_size=BS)
    bm.free(computed(bm, range(8)))  # blocks 0, 1 evictable; block 2 free
    seq = Sequence([*range(8), 1, 2, 3, 4])  # hits 0, 1 and needs one new block: exactly fits
    assert bm.can_allocate(seq)
    assert bm.allocate(seq) == 8
    assert seq.block_table == [0, 1, 2]
    assert bm.num_free_blocks == 0

    bm.free(seq)
    # four new blocks' worth of tokens plus two hits could never fit in three blocks
    assert not bm.can_allocate(Sequence([*range(8), *range(50, 58)]))


def test_identical_blocks_computed_twice_keep_one_cache_entry():
    bm = BlockManager(num_blocks=6, block_size=BS)
    a, b = Sequence(range(5)), Sequence(range(5))
    bm.allocate(a)
    bm.allocate(b)  # nothing cached yet: no sharing
    assert (a.block_table, b.block_table) == ([0, 1], [2, 3])
    for s in (a, b):
        s.num_computed_tokens = 5
        bm.cache_blocks(s)
    assert bm.num_cached_blocks == 1  # block 0 serves the hash; block 2 is a private duplicate

    bm.free(b)
    bm.free(a)
    c = Sequence(range(6))
    assert bm.allocate(c) == 4
    assert c.block_table[0] == 0
    # the duplicate went back as a plain free block, handed out before the cached ones
    assert c.block_table[1] == 4


def test_append_slots_grows_only_at_block_boundaries():
    bm = BlockManager(num_blocks=3, block_size=BS)
    seq = Sequence(range(4))
    bm.allocate(seq)
    seq.num_computed_tokens = 3
    bm.append_slots(seq, 1)  # position 3 fits in block 0
    assert seq.block_table == [0]
    seq.num_computed_tokens = 4
    bm.append_slots(seq, 1)  # position 4 needs a second block
    assert seq.block_table == [0, 1]
    assert bm.can_append(seq, 8) and not bm.can_append(seq, 9)
    with pytest.raises(NoFreeBlocksError):
        bm.append_slots(seq, 9)


def test_prefix_caching_disabled_never_hits():
    bm = BlockManager(num_blocks=5, block_size=BS, enable_prefix_caching=False)
    a = computed(bm, range(8))
    b = Sequence(range(9))
    assert bm.allocate(b) == 0
    assert b.block_table == [2, 3, 4]
    bm.free(a)
    assert bm.num_cached_blocks == 0
    c = Sequence(range(8))
    assert bm.allocate(c) == 0
    assert c.block_table == [1, 0]  # a's blocks, released tail first


def test_allocation_errors_say_what_is_wrong():
    bm = BlockManager(num_blocks=2, block_size=BS)
    seq = Sequence(range(4))
    bm.allocate(seq)
    with pytest.raises(ValueError, match="empty block table"):
        bm.allocate(seq)
    with pytest.raises(NoFreeBlocksError):
        bm.allocate(Sequence(range(100, 112)))
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(num_blocks=0, block_size=BS)


def test_two_pools_keep_independent_tables():
    # SPEED: a lower-layer pool holds every token, an upper-layer pool only some of them.
    lower, upper = BlockManager(8, BS), BlockManager(2, BS)
    seq = Sequence(range(10))
    upper_table: list[int] = []
    lower.allocate(seq)
    anchor_and_last = [seq.all_token_ids[0], seq.last_token]
    assert upper.allocate_table(upper_table, anchor_and_last) == 0
    assert seq.block_table == [0, 1, 2] and upper_table == [0]
    upper.grow_table(upper_table, 5)
    assert upper_table == [0, 1] and lower.num_free_blocks == 5
    upper.free_table(upper_table)
    assert upper_table == [] and upper.num_free_blocks == 2 and lower.num_free_blocks == 5
