"""The batch KV caches against a reference (a plain list of each row's real entries), under random joins,
leaves and steps."""

from __future__ import annotations

import numpy as np
import pytest

from genqueue_worker.engine.kv_append import AppendKVCache
from genqueue_worker.engine.kv_cache import (
    DeviceKVCache,
    HostKVCache,
    KVBlock,
    attention_mask,
    prefill_inputs,
)
from genqueue_worker.engine.kv_ragged import RaggedKVCache

H, D, T = 2, 3, 4  # heads, head_dim, tensors (2 layers x k/v)


def make_block(rng: np.random.Generator, lens: list[int], width: int | None = None) -> KVBlock:
    width = width or max(lens)
    arrays = []
    for _ in range(T):
        a = np.full((len(lens), H, width, D), np.nan, np.float32)  # pads hold garbage (NaN) on purpose
        for i, n in enumerate(lens):
            a[i, :, width - n :] = rng.standard_normal((H, n, D))
        arrays.append(a)
    return KVBlock(arrays, np.array(lens, np.int64))


def rows_of(block: KVBlock, r: int) -> list[np.ndarray]:
    n = int(block.lens[r])
    return [a[r, :, a.shape[2] - n :].copy() for a in block.arrays]


def check(cache, ref: list[list[np.ndarray]]) -> None:
    assert cache.rows == len(ref)
    if not ref:
        return
    if isinstance(cache, AppendKVCache):
        assert cache.width > cache.length, "an append cache always has a spare column for the next step"
        for a in cache.past():
            # The graph attends over every column it is given; masked ones must hold zeros, not stale NaN.
            assert np.all(a[:, :, cache.length :] == 0)
    assert cache.lens.tolist() == [r[0].shape[1] for r in ref]
    assert cache.length >= int(cache.lens.max())
    block = cache.extract(list(range(cache.rows)))
    for i, want in enumerate(ref):
        got = rows_of(block, i)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        pad = cache.length - want[0].shape[1]
        for a in block.arrays:
            assert np.all(a[i, :, :pad] == 0), "left padding must be zeros, never stale memory"


def step_host(cache: HostKVCache, rng: np.random.Generator, ref: list[list[np.ndarray]]) -> None:
    past, present = cache.past(), cache.next_present()
    p = cache.length
    for t in range(T):
        new = rng.standard_normal((cache.rows, H, 1, D)).astype(np.float32)
        present[t][:, :, :p] = past[t]
        present[t][:, :, p:] = new
        for i in range(cache.rows):
            ref[i][t] = np.concatenate([ref[i][t], new[i]], axis=1)
    cache.commit_step()


def step_device(cache: DeviceKVCache, rng: np.random.Generator, ref: list[list[np.ndarray]]) -> None:
    import onnxruntime as ort

    past = [v.numpy() for v in cache.past_values()]
    present = []
    for t in range(T):
        new = rng.standard_normal((cache.rows, H, 1, D)).astype(np.float32)
        present.append(ort.OrtValue.ortvalue_from_numpy(np.concatenate([past[t], new], axis=2)))
        for i in range(cache.rows):
            ref[i][t] = np.concatenate([ref[i][t], new[i]], axis=1)
    cache.commit_step(present)


def step_append(cache: AppendKVCache, rng: np.random.Generator, ref: list[list[np.ndarray]]) -> None:
    mask = cache.mask_for_step()
    assert mask.shape == (cache.rows, cache.width + 1)
    assert mask.sum(axis=1).tolist() == (cache.lens + 1).tolist()  # each row's real tokens + the new one
    assert np.all(mask[:, -1] == 1) and np.all(mask[:, cache.length : cache.width] == 0)
    news = []
    for t in range(T):
        new = rng.standard_normal((cache.rows, H, 1, D)).astype(np.float32)
        news.append(new)
        for i in range(cache.rows):
            ref[i][t] = np.concatenate([ref[i][t], new[i]], axis=1)
    cache.commit_step(news)


def step_ragged(cache: RaggedKVCache, rng: np.random.Generator, ref: list[list[np.ndarray]]) -> None:
    shape, _ = cache.step_binding()
    assert shape[2] > int(cache.lens.max()), "room for every row's new column"
    past = cache.past()  # what the graph reads and, bound as present, writes in place
    for t in range(T):
        new = rng.standard_normal((cache.rows, H, 1, D)).astype(np.float32)
        for i in range(cache.rows):
            past[t][i, :, int(cache.lens[i])] = new[i, :, 0]
            ref[i][t] = np.concatenate([ref[i][t], new[i]], axis=1)
    cache.commit_step()


@pytest.mark.parametrize("kind", ["host", "device-cpu", "append", "ragged", "ragged-reserved"])
def test_random_joins_leaves_and_steps_match_the_reference(kind: str) -> None:
    if kind == "device-cpu":
        pytest.importorskip("onnxruntime")
        cache = DeviceKVCache(T, H, D, np.float32, "cpu")
        step = step_device
    elif kind == "append":
        cache = AppendKVCache(T, H, D, np.float32, block=3)
        step = step_append
    elif kind.startswith("ragged"):
        cache = RaggedKVCache(T, H, D, np.float32, block=3)
        if kind == "ragged-reserved":
            cache.reserve(8, 64)  # fewer rows than the test joins (rows may grow), every length fits
        step = step_ragged
    else:
        cache = HostKVCache(T, H, D, np.float32, trim_slack=2)
        step = step_host
    rng = np.random.default_rng(1)
    ref: list[list[np.ndarray]] = []
    for it in range(60):
        op = rng.integers(0, 3)
        if op == 0 or not ref:
            lens = rng.integers(1, 12, size=rng.integers(1, 4)).tolist()
            block = make_block(rng, lens, width=max(lens) + int(rng.integers(0, 3)))
            take = [int(x) for x in rng.integers(0, len(lens), size=rng.integers(1, 4))]  # repeats: n candidates
            cache.append(block, take)
            ref.extend(rows_of(block, r) for r in take)
        elif op == 1:
            k = int(rng.integers(1, len(ref) + 1))
            rm = sorted({int(x) for x in rng.integers(0, len(ref), size=k)})
            order = cache.remove(rm)
            keep = [ref[i] for i in range(len(ref)) if i not in rm]
            assert sorted(order) == [i for i in range(len(ref)) if i not in rm]
            ref = [ref[i] for i in order]
            assert len(ref) == len(keep)
        else:
            step(cache, rng, ref)  # type: ignore[arg-type]
        check(cache, ref)
        if it % 20 == 19:
            cache.clear()
            ref = []
    if kind in ("host", "append", "ragged"):
        assert cache.relayouts > 0  # joins longer than the batch and trims both happened
    if kind == "ragged-reserved":
        assert cache.relayouts == 0 and cache.capacity == 64  # the reserved layout served every length


def test_append_cache_copies_the_batch_once_per_block_of_steps() -> None:
    cache = AppendKVCache(T, H, D, np.float32, block=8)
    rng = np.random.default_rng(0)
    cache.append(make_block(rng, [5] * 4), range(4))
    assert (cache.length, cache.width, cache.relayouts) == (5, 13, 0)
    news = [np.ones((4, H, 1, D), np.float32)] * T
    for _ in range(7):
        cache.commit_step(news)
    assert (cache.length, cache.relayouts) == (12, 0)  # seven steps wrote columns in place
    cache.commit_step(news)
    assert (cache.length, cache.width, cache.relayouts) == (13, 21, 1)  # spare columns ran out: one copy


def test_append_cache_trims_once_the_common_padding_reaches_a_block() -> None:
    cache = AppendKVCache(T, H, D, np.float32, block=4)
    rng = np.random.default_rng(0)
    cache.append(make_block(rng, [40, 3, 3]), [0, 1, 2])
    cache.remove([0])
    assert (cache.length, cache.width, cache.relayouts) == (3, 7, 1)


def test_trim_bounds_the_length_by_the_longest_live_row() -> None:
    cache = HostKVCache(T, H, D, np.float32, trim_slack=4)
    rng = np.random.default_rng(0)
    cache.append(make_block(rng, [40, 3, 3]), [0, 1, 2])
    assert cache.length == 40
    cache.remove([0])
    assert cache.length == 3 and cache.relayouts == 1  # the 40-long row left: 37 columns of pad trimmed


def test_swap_remove_copies_rows_not_the_batch() -> None:
    cache = HostKVCache(T, H, D, np.float32)
    rng = np.random.default_rng(0)
    cache.append(make_block(rng, [5] * 6), range(6))
    order = cache.remove([1])
    assert order == [0, 5, 2, 3, 4]  # the last row moved into the hole
    assert cache.relayouts == 0


def test_masks_and_prefill_inputs() -> None:
    np.testing.assert_array_equal(attention_mask(np.array([1, 3]), 3), [[0, 0, 1], [1, 1, 1]])
    ids, mask, pos = prefill_inputs([[5, 6, 7], [8]], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(pos, [[0, 1, 2], [0, 0, 0]])


def test_ragged_cache_rows_keep_their_own_lengths() -> None:
    cache = RaggedKVCache(T, H, D, np.float32, block=4)
    rng = np.random.default_rng(0)
    cache.append(make_block(rng, [40, 3]), [0, 1])
    assert cache.lens.tolist() == [40, 3] and cache.capacity == 44
    past = cache.past()
    assert np.array_equal(past[0][1, :, :3], make_block(np.random.default_rng(0), [40, 3]).arrays[0][1, :, 37:])
    cache.remove([0])  # the long row leaves: the buffer shrinks to the short row plus spare columns
    assert (cache.capacity, cache.length) == (7, 3)


def test_an_unreserved_ragged_cache_stays_the_size_its_rows_need() -> None:
    # Without a start-up reservation (it did not fit the KV budget): job after job of one row growing to 250
    # positions, the buffers must not compound (they once grew ~3x per job, to gigabytes after a dozen).
    cache = RaggedKVCache(T, H, D, np.float32, block=64)
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(8):
        cache.append(make_block(rng, [1]), [0])
        for _ in range(250):
            cache.step_binding()
            cache.commit_step()
        cache.remove([0])
        sizes.append(cache.nbytes())
    one_row = 2 * T * H * (250 + 64) * D * 4  # live + spare buffers of one row at its longest
    assert sizes[-1] == sizes[1] and sizes[-1] <= 2 * one_row, sizes
