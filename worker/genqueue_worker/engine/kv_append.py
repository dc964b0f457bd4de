"""The decode batch's KV cache for "append" graphs: a step reads the cache in place and copies none of it.

An append graph (registry.py, ``text.kv_contract``) takes ``past`` [B,H,W,D] and returns only the new
token's keys and values [B,H,1,D]; attention reads past and new as two operands. So the cache can keep
spare columns: the graph sees W columns, of which the first P hold the cache (left-padded, every row's
newest token in column P-1) and columns P..W-1 are masked out. After a step the engine writes the new
column into column P, a copy of rows x H x D values per tensor instead of the whole cache.

Measured with ``python -m bench.kvstep`` (tiny-lm's shape, 32 rows, 2 CPU cores, through the runner): a
decode step took 1.26-1.27 ms with this graph against 2.81-3.00 ms for the concat graph with every row 140
long, and 1.21-1.28 vs 2.72-2.81 ms with lengths spread over 10..140. A calibration run of an early prototype found that
moving the cache, not computing attention, is what limits continuous batching on a CPU.

Like :class:`~genqueue_worker.engine.kv_cache.HostKVCache`, rows leave by swap-remove and join into the free
rows after the batch; a whole-batch copy (a "relayout", into the spare buffer) happens only when the spare
columns run out (every ``block`` steps), when a joining row is longer than the batch, or when the common
left padding has grown past ``block`` columns after the longest rows left. The graph attends over at most
``block`` masked columns per row, which is the price of copying the cache once per ``block`` steps instead
of on every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genqueue_worker.engine.kv_cache import KVBlock, PingPongBuffers


class AppendKVCache(PingPongBuffers):
    """Host cache for append graphs; implements the engine's ``KVCache`` protocol. ``length`` is P, the
    columns in use; ``width`` is W, the columns the graph sees (P < W once rows exist)."""

    def __init__(self, n_tensors: int, n_head: int, head_dim: int, dtype: Any = np.float32, block: int = 16) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        super().__init__(n_tensors, n_head, head_dim, dtype)
        self.block = block  # spare columns after a relayout; also the trim threshold
        self._new: list[np.ndarray] = [np.zeros(0, self.dtype) for _ in range(n_tensors)]  # step outputs [rows,H,1,D]
        self._width = 0
        self._new_ptrs: list[int] | None = None

    @property
    def width(self) -> int:
        return self._width

    def nbytes(self) -> int:
        return super().nbytes() + sum(b.nbytes for b in self._new)

    # -- the decode step (used by runners) ------------------------------------------------------------
    def past(self) -> list[np.ndarray]:
        """Views [rows,H,W,D] of the live buffers: bind these as ``past_key_values.*``."""
        return [self._view(self._cur, t, self._rows, self._width) for t in range(self.n_tensors)]

    def step_binding(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """(past shape, past pointers, new shape, new pointers) for binding by address."""
        elems = self._rows * self.n_head * self.head_dim
        if self._new[0].shape[0] < elems:
            self._new = [np.zeros(max(elems, b.shape[0] * 3 // 2), self.dtype) for b in self._new]
            self._new_ptrs = None
        if self._new_ptrs is None:
            self._new_ptrs = [int(b.ctypes.data) for b in self._new]
        past_shape = [self._rows, self.n_head, self._width, self.head_dim]
        new_shape = [self._rows, self.n_head, 1, self.head_dim]
        return past_shape, self._pointers(self._cur), new_shape, self._new_ptrs

    def mask_for_step(self) -> np.ndarray:
        """int64 [rows, W+1]: each row's cached columns, then the new token (the graph's last column)."""
        cols = np.arange(self._width + 1)
        start = (self._length - self._lens)[:, None]
        return (((cols >= start) & (cols < self._length)) | (cols == self._width)).astype(np.int64)

    def commit_step(self, new: Sequence[np.ndarray] | None = None) -> None:
        """Write the step's new keys/values (the bound buffers, or ``new`` [rows,H,1,D]) into column P."""
        rows, p = self._rows, self._length
        n = rows * self.n_head * self.head_dim
        for t in range(self.n_tensors):
            src = new[t] if new is not None else self._new[t][:n].reshape(rows, self.n_head, 1, self.head_dim)
            self._view(self._cur, t, rows, self._width)[:, :, p, :] = src[:, :, 0, :]
        self._length = p + 1
        self._lens = self._lens + 1
        if self._length >= self._width:  # no spare column for the next step
            self._relayout(self._length)

    # -- membership -----------------------------------------------------------------------------------
    def _relayout(self, new_length: int) -> None:
        """Copy every row into the spare buffer at ``new_length`` used columns plus ``block`` spare ones.

        A longer length grows every row's left padding (a longer row joins); a shorter one drops common left
        padding (the longest rows left). Everything outside the copied columns is zeroed: masked columns get
        probability 0, but 0 x NaN from stale memory would still be NaN.
        """
        other = 1 - self._cur
        width = new_length + self.block
        self._ensure(other, self._rows * self._row_elems(width))
        keep = min(self._length, new_length)
        for t in range(self.n_tensors):
            src = self._view(self._cur, t, self._rows, self._width)
            dst = self._view(other, t, self._rows, width)
            dst[:, :, : new_length - keep] = 0
            dst[:, :, new_length - keep : new_length] = src[:, :, self._length - keep : self._length]
            dst[:, :, new_length:] = 0
        self._cur, self._length, self._width = other, new_length, width
        self.relayouts += 1

    def _columns(self) -> int:
        return self._width

    def _removed(self) -> None:
        if self._rows == 0:
            self._length = self._width = 0
        elif self._length - int(self._lens.max()) >= self.block:
            # One copy now saves attention over the dropped columns on every later step.
            self._relayout(int(self._lens.max()))

    def _start(self, length: int) -> None:
        self._length, self._width = length, length + self.block

    def extract(self, rows: Sequence[int]) -> KVBlock:
        idx = list(rows)
        arrays = [
            self._view(self._cur, t, self._rows, self._width)[idx][:, :, : self._length].copy()
            for t in range(self.n_tensors)
        ]
        return KVBlock(arrays, self._lens[idx].copy())

    def clear(self) -> None:
        self._rows, self._length, self._width, self._lens = 0, 0, 0, np.zeros(0, np.int64)
