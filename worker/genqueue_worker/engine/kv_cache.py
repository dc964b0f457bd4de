"""The decode batch's KV cache, laid out so that a decode step copies nothing on the Python side.

The ONNX contract takes ``past`` [B,H,P,D] per layer and returns ``present`` [B,H,P+1,D] = concat(past,
new) (that concat inside the graph is unavoidable). Rows are left-padded: row r's real tokens are the last
``lens[r]`` positions, so every row's newest token is in the last column and one decode step serves rows of
any length.

Measured on 2 CPU cores with a 4-layer d256 model, 32 rows x 144 positions (38 MB of cache): a decode step
costs ~3.8 ms, while copying the cache into *freshly allocated* numpy arrays costs ~9 ms (page faults
dominate) and into preallocated ones ~1.5 ms. That is why a prototype that re-padded the cache on every
step was no faster than static batching. So :class:`HostKVCache`:

* keeps two preallocated flat buffers per tensor (ping-pong): ORT reads ``past`` from one and writes
  ``present`` straight into the other through IO binding, then they swap. No allocation, no copy;
* removes a finished row by moving the last row into its slot (swap-remove, :class:`KVCacheBase`, which
  every cache shares: one row copied, not the batch);
* appends newly prefilled rows into the free rows after the batch (only the new rows are copied);
* re-lays the whole batch out (one copy into the spare buffer) only when a joining row is longer than the
  batch, or when the common left padding has grown past ``trim_slack`` after the longest rows left, which
  keeps the cache length bounded by the longest live row.

:class:`DeviceKVCache` keeps the cache as ORT values on the device (CUDA) between decode steps; membership
changes go through a host copy (one round trip per step at most, batched by the engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class KVBlock:
    """KV rows outside the batch: a prefill's output, or rows extracted for a solo retry."""

    arrays: list[np.ndarray]  # 2 x n_layer host arrays [k,H,L,D] (k0, v0, k1, v1, ...)
    lens: np.ndarray  # int64 [k]: real tokens per row
    # True: a row's tokens are the last lens[r] of L (left padding); False: the first (a ragged prefill's
    # output, which then joins a ragged cache without being re-padded).
    left_padded: bool = True

    @property
    def rows(self) -> int:
        return int(self.lens.shape[0])

    def tokens(self, t: int, r: int) -> np.ndarray:
        """Tensor ``t``'s real columns of row ``r``: [H, lens[r], D], whichever side the padding is on."""
        a, n = self.arrays[t], int(self.lens[r])
        return a[r, :, a.shape[2] - n :] if self.left_padded else a[r, :, :n]


class KVCache(Protocol):
    """What the engine needs from a batch cache; runners also use their own concrete type's step API."""

    @property
    def rows(self) -> int: ...

    @property
    def length(self) -> int:
        """P: padded length shared by every row."""
        ...

    @property
    def lens(self) -> np.ndarray:
        """int64 [rows]: real tokens per row."""
        ...

    def remove(self, rows: Sequence[int]) -> list[int]:
        """Drop rows; returns, for each surviving row in its new position, its old index."""
        ...

    def append(self, block: KVBlock, take: Sequence[int]) -> None:
        """Append ``block`` rows ``take`` (repeats allowed: n candidates share one prefill) at the end."""
        ...

    def extract(self, rows: Sequence[int]) -> KVBlock: ...

    def clear(self) -> None: ...

    def nbytes(self) -> int:
        """Bytes held for the cache (both buffers where double-buffered)."""
        ...


def attention_mask(lens: np.ndarray, length: int) -> np.ndarray:
    """int64 [rows, length]: 1 on each row's last ``lens[r]`` positions (left padding)."""
    return (np.arange(length)[None, :] >= (length - lens)[:, None]).astype(np.int64)


def prefill_inputs(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad prompts into (input_ids [B,S], attention_mask [B,S], position_ids [B,S]).

    Positions count real tokens from 0 and pads get 0 (the exporter's ``position_ids_from_mask``), so a
    padded row sees exactly the positions it would see alone.
    """
    s = max(len(p) for p in prompts)
    lens = np.array([len(p) for p in prompts], np.int64)
    ids = np.full((len(prompts), s), pad_id, np.int64)
    for i, p in enumerate(prompts):
        ids[i, s - len(p) :] = p
    mask = attention_mask(lens, s)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
    return ids, mask, pos


class KVCacheBase:
    """What every batch cache shares: its tensors' shape, its rows and their real lengths, the padded length,
    and removal by swap-remove. A subclass says how one row moves (``_move_row``) and what follows a removal
    (``_removed``: trimming padding, resetting an empty cache)."""

    def __init__(self, n_tensors: int, n_head: int, head_dim: int, dtype: Any = np.float32) -> None:
        self.n_tensors = n_tensors  # 2 x n_layer
        self.n_head = n_head
        self.head_dim = head_dim
        self.dtype = np.dtype(dtype)
        self._rows = 0
        self._length = 0
        self._lens = np.zeros(0, np.int64)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def length(self) -> int:
        """P: padded length shared by every row."""
        return self._length

    @property
    def lens(self) -> np.ndarray:
        """int64 [rows]: real tokens per row."""
        return self._lens

    def remove(self, rows: Sequence[int]) -> list[int]:
        """Drop ``rows`` by moving the last row into each hole (one row copied per removal, not the batch);
        returns, for each surviving row in its new position, its old index."""
        count = self._rows
        order = list(range(count))
        lens = self._lens.copy()
        for i in sorted(set(rows), reverse=True):
            last = count - 1
            if i != last:
                self._move_row(i, last, int(lens[last]))
                lens[i] = lens[last]
                order[i] = order[last]
            order.pop()
            count -= 1
        self._rows, self._lens = count, lens[:count]
        self._removed()
        return order

    def _move_row(self, dst: int, src: int, n: int) -> None:
        """Copy the row at ``src`` (``n`` real tokens) to ``dst``."""
        raise NotImplementedError

    def _removed(self) -> None:
        """Rows just left (there may be none left)."""


class PingPongBuffers(KVCacheBase):
    """Two sets of flat host buffers per cache tensor (the live one and the one a copy goes into), with
    row-major [rows, H, columns, D] views; shared by the left-padded host caches."""

    def __init__(self, n_tensors: int, n_head: int, head_dim: int, dtype: Any = np.float32) -> None:
        super().__init__(n_tensors, n_head, head_dim, dtype)
        self._bufs: list[list[np.ndarray]] = [
            [np.zeros(0, self.dtype) for _ in range(n_tensors)] for _ in range(2)
        ]  # [which][tensor] flat buffers
        self._cur = 0  # index of the buffer that holds the live cache
        self._ptrs: list[list[int] | None] = [None, None]  # cached data pointers per buffer set
        self.relayouts = 0  # full-batch copies so far; for profiling

    def _columns(self) -> int:
        """Columns per row in the live buffer."""
        return self._length

    def _move_row(self, dst: int, src: int, n: int) -> None:
        for t in range(self.n_tensors):
            v = self._view(self._cur, t, self._rows, self._columns())
            v[dst] = v[src]

    def _start(self, length: int) -> None:
        """The first rows join an empty cache, ``length`` columns long."""
        self._length = length

    def _relayout(self, new_length: int) -> None:
        raise NotImplementedError

    def append(self, block: KVBlock, take: Sequence[int]) -> None:
        """Copy ``block``'s rows ``take`` into the free rows after the batch (only the new rows are copied);
        the whole batch is re-laid out first when a joining row is longer than it."""
        if not take:
            return
        need = int(block.lens[list(take)].max())
        if self._rows == 0:
            self._start(need)
        elif need > self._length:
            self._relayout(need)
        rows = self._rows + len(take)
        width, length = self._columns(), self._length
        self._ensure(self._cur, rows * self._row_elems(width), keep=self._rows * self._row_elems(width))
        for t in range(self.n_tensors):
            dst = self._view(self._cur, t, rows, width)
            for j, r in enumerate(take):
                n = int(block.lens[r])
                row = dst[self._rows + j]
                # Zero the pad and any spare columns: masked keys get probability 0, but 0 x NaN from stale
                # memory would be NaN.
                row[:, : length - n] = 0
                row[:, length - n : length] = block.tokens(t, r)
                row[:, length:] = 0
        self._lens = np.concatenate([self._lens, block.lens[list(take)].astype(np.int64)])
        self._rows = rows

    def nbytes(self) -> int:
        return sum(b.nbytes for pair in self._bufs for b in pair)

    def _row_elems(self, length: int) -> int:
        return self.n_head * length * self.head_dim

    def _view(self, which: int, t: int, rows: int, length: int) -> np.ndarray:
        n = rows * self._row_elems(length)
        return self._bufs[which][t][:n].reshape(rows, self.n_head, length, self.head_dim)

    def _ensure(self, which: int, elems: int, keep: int = 0) -> None:
        """Grow buffer ``which`` to hold ``elems``, keeping its first ``keep`` elements. Grows by 1.5x so
        that capacity settles after a few steps and steady state allocates nothing."""
        for t in range(self.n_tensors):
            buf = self._bufs[which][t]
            if buf.shape[0] >= elems:
                continue
            new = np.zeros(max(elems, buf.shape[0] * 3 // 2), self.dtype)
            if keep:
                new[:keep] = buf[:keep]
            self._bufs[which][t] = new
            self._ptrs[which] = None

    def _pointers(self, which: int) -> list[int]:
        ptrs = self._ptrs[which]
        if ptrs is None:
            ptrs = self._ptrs[which] = [int(b.ctypes.data) for b in self._bufs[which]]
        return ptrs


class HostKVCache(PingPongBuffers):
    """Host (numpy) cache in two ping-pong buffers; see the module docstring for the why."""

    def __init__(self, n_tensors: int, n_head: int, head_dim: int, dtype: Any = np.float32, trim_slack: int = 2) -> None:
        super().__init__(n_tensors, n_head, head_dim, dtype)
        self.trim_slack = trim_slack  # re-lay out once the common left padding exceeds this many columns

    # -- the decode step (used by runners) ------------------------------------------------------------
    def past(self) -> list[np.ndarray]:
        """Views [rows,H,P,D] of the live cache: bind these as ``past_key_values.*``."""
        return [self._view(self._cur, t, self._rows, self._length) for t in range(self.n_tensors)]

    def next_present(self) -> list[np.ndarray]:
        """Views [rows,H,P+1,D] in the spare buffer: bind these as ``present.*`` outputs."""
        other = 1 - self._cur
        self._ensure(other, self._rows * self._row_elems(self._length + 1))
        return [self._view(other, t, self._rows, self._length + 1) for t in range(self.n_tensors)]

    def step_binding(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """(past shape, past pointers, present shape, present pointers) for binding by address.

        Every view starts at its buffer's start, so the pointers only change when a buffer grows; caching
        them keeps numpy's ctypes machinery out of the per-step path.
        """
        other = 1 - self._cur
        self._ensure(other, self._rows * self._row_elems(self._length + 1))
        past_shape = [self._rows, self.n_head, self._length, self.head_dim]
        present_shape = [self._rows, self.n_head, self._length + 1, self.head_dim]
        return past_shape, self._pointers(self._cur), present_shape, self._pointers(other)

    def commit_step(self) -> None:
        """The step wrote ``next_present()``: it becomes the live cache."""
        self._cur = 1 - self._cur
        self._length += 1
        self._lens = self._lens + 1

    def mask_for_step(self) -> np.ndarray:
        return attention_mask(self._lens + 1, self._length + 1)

    # -- membership -----------------------------------------------------------------------------------
    def _removed(self) -> None:
        if self._rows == 0:
            self._length = 0
        else:
            # Trimming costs one copy into the spare buffer; every later step then saves concat and attention
            # over the dropped columns. Measured on the built-in tiny-lm: slack 2 instead of max(16, P/4)
            # lowered the mean cache length from 105 to 97 and the run time by ~5%.
            slack = self._length - int(self._lens.max())
            if slack > self.trim_slack:
                self._relayout(int(self._lens.max()))

    def _relayout(self, new_length: int) -> None:
        """Copy every row into the spare buffer at a new padded length (left pad grows or is trimmed)."""
        other = 1 - self._cur
        self._ensure(other, self._rows * self._row_elems(new_length))
        for t in range(self.n_tensors):
            src = self._view(self._cur, t, self._rows, self._length)
            dst = self._view(other, t, self._rows, new_length)
            if new_length >= self._length:
                dst[:, :, : new_length - self._length] = 0
                dst[:, :, new_length - self._length :] = src
            else:
                dst[...] = src[:, :, self._length - new_length :]
        self._cur, self._length = other, new_length
        self.relayouts += 1

    def extract(self, rows: Sequence[int]) -> KVBlock:
        idx = list(rows)
        arrays = [self._view(self._cur, t, self._rows, self._length)[idx].copy() for t in range(self.n_tensors)]
        return KVBlock(arrays, self._lens[idx].copy())

    def load(self, arrays: Sequence[np.ndarray], lens: np.ndarray) -> None:
        """Replace the contents with full arrays [rows,H,P,D] (DeviceKVCache's host staging)."""
        self.clear()
        self.append(KVBlock(list(arrays), np.asarray(lens, np.int64)), range(len(lens)))

    def clear(self) -> None:
        self._rows, self._length, self._lens = 0, 0, np.zeros(0, np.int64)


class DeviceKVCache(KVCacheBase):
    """Cache held as ORT values on a device between decode steps (CUDA IO binding).

    Decode steps bind the previous step's ``present`` values as ``past`` and let ORT allocate the new
    ``present`` on the device, so a step moves no cache between host and device. Membership changes
    (remove/append/extract) download the cache into a :class:`HostKVCache` once, apply every change there,
    and upload before the next step: one round trip per step at most. Works with device "cpu" too, which is
    how the tests exercise it on machines without a GPU.
    """

    def __init__(self, n_tensors: int, n_head: int, head_dim: int, dtype: Any, device: str, device_id: int = 0) -> None:
        super().__init__(n_tensors, n_head, head_dim, dtype)
        self.device = device  # ORT device name: "cuda" or "cpu"
        self.device_id = device_id
        self._host = HostKVCache(n_tensors, n_head, head_dim, dtype)
        self._dev: list[Any] | None = None  # OrtValues [rows,H,P,D] when the device copy is authoritative
        self.round_trips = 0  # host round trips so far; for profiling

    def nbytes(self) -> int:
        per = self.n_head * self.head_dim * self.dtype.itemsize * self.n_tensors
        return self.rows * self._length * per + self._host.nbytes()

    def _to_host(self) -> HostKVCache:
        if self._dev is not None:
            # Loading re-lays rows out at the longest live length, which also trims stale left padding.
            self._host.load([v.numpy() for v in self._dev], self._lens)
            self._dev = None
            self.round_trips += 1
            self._sync()
        return self._host

    def _sync(self) -> None:
        h = self._host
        self._lens, self._length, self._rows = h.lens.copy(), h.length, h.rows

    def past_values(self) -> list[Any]:
        """OrtValues to bind as ``past_key_values.*`` (uploads pending host changes first)."""
        import onnxruntime as ort

        if self._dev is None:
            self._dev = [
                ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, self.device_id)
                for a in self._host.past()
            ]
        return self._dev

    def commit_step(self, present: list[Any]) -> None:
        self._dev = list(present)
        self._length += 1
        self._lens = self._lens + 1

    def mask_for_step(self) -> np.ndarray:
        return attention_mask(self._lens + 1, self._length + 1)

    def remove(self, rows: Sequence[int]) -> list[int]:
        if not rows:
            return list(range(self.rows))
        order = self._to_host().remove(rows)
        self._sync()
        return order

    def append(self, block: KVBlock, take: Sequence[int]) -> None:
        if not take:
            return
        self._to_host().append(block, take)
        self._sync()

    def extract(self, rows: Sequence[int]) -> KVBlock:
        return self._to_host().extract(rows)

    def clear(self) -> None:
        self._dev = None
        self._host.clear()
        self._sync()
