"""The decode batch's KV cache for "ragged" graphs (exporter/genqueue_exporter/gpt_ragged.py): rows of their own lengths, updated
in place by the graph.

A ragged graph's attention (onnxruntime's GroupQueryAttention) reads row r's first ``lens[r]`` cached
positions and writes the new token's keys/values at position ``lens[r]`` of the very buffer it read, when
``present`` is bound to ``past``'s memory. So the cache is one live buffer per tensor, [rows, H, cap, D] with
each row's tokens from column 0 (plus a spare buffer that relayouts copy into): a step copies nothing, and
no row pays for another row's length (a left-padded cache makes every row attend over the longest one).

Measured with ``python -m bench.kvstep`` (tiny-lm's shape, 32 rows, 2 CPU cores, through the runner): a
decode step with lengths spread over 10..140 took 1.00-1.16 ms against 1.21-1.28 ms for the append graph
and 2.72-2.81 ms for the concat graph; with every row 140 long the append graph was faster (1.26 vs
1.52-1.56 ms): GroupQueryAttention's CPU kernel costs more per position, and pays off when rows differ in
length, as they do under continuous batching.

Every row has ``cap`` columns. Spare columns cost a step nothing (the graph reads each row's own length), so
the engine reserves the whole batch at the whole context when it starts (:meth:`reserve`) and no step ever
grows the buffer; without a reservation ``cap`` follows the longest live row plus ``block`` columns, and
growing or trimming it is a whole-cache copy ("relayout", a few ms at 32 rows of ~100 tokens here). Rows
leave by swap-remove and join by copying just their prompt's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genqueue_worker.engine.kv_cache import KVBlock, KVCacheBase


class RaggedKVCache(KVCacheBase):
    """Host cache for ragged graphs; implements the engine's ``KVCache`` protocol."""

    def __init__(self, n_tensors: int, n_head: int, head_dim: int, dtype: Any = np.float32, block: int = 64) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        super().__init__(n_tensors, n_head, head_dim, dtype)
        self.block = block  # spare columns after a relayout; trims happen past 2 x block
        self._bufs: list[np.ndarray] = [np.zeros(0, self.dtype) for _ in range(n_tensors)]  # flat, live
        self._spare: list[np.ndarray] = [np.zeros(0, self.dtype) for _ in range(n_tensors)]  # relayout target
        self._ptrs: list[int] | None = None
        self._cap = 0  # columns per row in the current layout
        self._reserved_cap = 0  # the layout reserve() set up; never trimmed below
        self._row_room = 0  # rows the live buffer was sized for (relayouts keep that many at the new cap)
        self.relayouts = 0  # whole-cache copies so far; for profiling

    # -- shape -----------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """The longest row (rows are not padded to a common length)."""
        return int(self._lens.max()) if self._rows else 0

    @property
    def capacity(self) -> int:
        return self._cap

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bufs) + sum(b.nbytes for b in self._spare)

    def _view(self, t: int, rows: int, cap: int, buf: np.ndarray | None = None) -> np.ndarray:
        b = self._bufs[t] if buf is None else buf
        return b[: rows * self.n_head * cap * self.head_dim].reshape(rows, self.n_head, cap, self.head_dim)

    def reserve(self, rows: int, cap: int) -> None:
        """Allocate and touch room for ``rows`` rows of ``cap`` columns up front (engine start). Growing
        during a run costs page faults on fresh memory and whole-cache copies, while spare columns cost a
        step nothing (the graph reads each row's own length); with ``cap`` past the context, a served job
        never needs a relayout."""
        if self._rows:
            raise RuntimeError("reserve() needs an empty cache")
        n = rows * self.n_head * cap * self.head_dim
        self._bufs = [np.empty(n, self.dtype) for _ in range(self.n_tensors)]
        for b in self._bufs:
            b.fill(0)  # touch every page now rather than inside the first steps
        self._ptrs = None
        self._cap = self._reserved_cap = cap
        self._row_room = rows

    def _ensure_rows(self, rows: int) -> None:
        elems = rows * self.n_head * self._cap * self.head_dim
        for t in range(self.n_tensors):
            buf = self._bufs[t]
            if buf.shape[0] < elems:
                new = np.empty(max(elems, buf.shape[0] * 3 // 2), self.dtype)
                keep = self._rows * self.n_head * self._cap * self.head_dim
                new[:keep] = buf[:keep]  # rows are the outer axis: the live rows keep their offsets
                self._bufs[t] = new
                self._ptrs = None
        self._row_room = max(self._row_room, rows)

    def _relayout(self, cap: int) -> None:
        """Re-lay every row out with ``cap`` columns, copying only each row's real columns.

        The copy goes into the spare buffer of the previous relayout when it is big enough: a fresh 10+ MB
        array costs more in page faults than the copy itself (measured ~1.8 ms per relayout at 32 rows of
        ~80 tokens with fresh arrays). Columns past a row's length are never read (the graph reads each row's
        first ``lens[r]`` positions and writes position ``lens[r]`` before reading it), so stale values in a
        reused buffer are harmless and nothing is zeroed.
        """
        per_row = self.n_head * self.head_dim
        # Room for as many rows as before (joins), counted in rows: a count derived from the buffer's length
        # at the old cap grew about 3x per job once spare buffers were larger than the rows needed.
        n = max(self._rows, self._row_room, 1) * per_row * cap
        longest = self.length
        for t in range(self.n_tensors):
            spare = self._spare[t]
            new = spare if spare.shape[0] >= n else np.empty(max(n, spare.shape[0] * 3 // 2), self.dtype)
            if self._rows:
                src = self._view(t, self._rows, self._cap)
                self._view(t, self._rows, cap, new)[:, :, :longest] = src[:, :, :longest]
            self._spare[t], self._bufs[t] = self._bufs[t], new
        self._ptrs = None
        self._cap = cap
        self.relayouts += 1

    # -- the decode step (used by runners) ------------------------------------------------------------
    def past(self) -> list[np.ndarray]:
        return [self._view(t, self._rows, self._cap) for t in range(self.n_tensors)]

    def step_binding(self) -> tuple[list[int], list[int]]:
        """(shape, pointers) to bind as both ``past_key_values.*`` and ``present.*``: the graph writes each
        row's new column in place. Makes room for that column first."""
        if self.length + 1 > self._cap:
            self._relayout(self.length + self.block)
        if self._ptrs is None:
            self._ptrs = [int(b.ctypes.data) for b in self._bufs]
        return [self._rows, self.n_head, self._cap, self.head_dim], self._ptrs

    def commit_step(self) -> None:
        self._lens = self._lens + 1

    # -- membership -----------------------------------------------------------------------------------
    def _move_row(self, dst: int, src: int, n: int) -> None:
        for t in range(self.n_tensors):  # only the moving row's own n columns
            v = self._view(t, self._rows, self._cap)
            v[dst, :, :n] = v[src, :, :n]

    def _removed(self) -> None:
        if self._rows == 0:
            self._cap = self._reserved_cap
        elif self._cap > self._reserved_cap and self._cap - self.length > 2 * self.block:
            self._relayout(max(self.length + self.block, self._reserved_cap))

    def append(self, block: KVBlock, take: Sequence[int]) -> None:
        if not take:
            return
        need = int(block.lens[list(take)].max())
        if need + 1 > self._cap:
            self._relayout(max(need, self.length) + self.block)
        rows = self._rows + len(take)
        self._ensure_rows(rows)
        for t in range(self.n_tensors):
            dst = self._view(t, rows, self._cap)
            for j, r in enumerate(take):
                dst[self._rows + j, :, : int(block.lens[r])] = block.tokens(t, r)
        self._lens = np.concatenate([self._lens, block.lens[list(take)].astype(np.int64)])
        self._rows = rows

    def extract(self, rows: Sequence[int]) -> KVBlock:
        """Rows as a left-padded block (what solo retries and the other caches were written against)."""
        idx = list(rows)
        lens = self._lens[idx].copy()
        width = int(lens.max()) if idx else 0
        arrays = []
        for t in range(self.n_tensors):
            v = self._view(t, self._rows, self._cap)
            out = np.zeros((len(idx), self.n_head, width, self.head_dim), self.dtype)
            for j, r in enumerate(idx):
                n = int(lens[j])
                out[j, :, width - n :] = v[r, :, :n]
            arrays.append(out)
        return KVBlock(arrays, lens)

    def clear(self) -> None:
        self._rows, self._cap, self._lens = 0, self._reserved_cap, np.zeros(0, np.int64)
