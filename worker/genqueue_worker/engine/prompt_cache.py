"""Prefill results kept outside the batch: one prompt's last-token logits and its own keys/values.

Two users:
- prefill-ahead (text_engine.py): a waiting job whose prompt ran inside another admission's call holds its
  result until it is admitted;
- the prompt cache: content backends send the same prompt many times (one template, many seeds; a retried
  batch), and every repeat would otherwise pay for a prefill. The text engine looks each prompt up here
  before it runs a call, and stores what each call computes.

Reuse is exact, because a prompt's logits and keys/values do not depend on which prompts share its call or
when it ran (docs/design.md, invariant 5; the real-model tests compare cached, fresh and batched prefills token for
token). Only whole prompts match: a prompt that merely shares a prefix with a cached one is a miss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genqueue_worker.engine.kv_cache import KVBlock


@dataclass(frozen=True, eq=False)
class Prefilled:
    """One prompt's prefill output. Read-only once built: the batch cache copies it on every append."""

    logits: np.ndarray  # [V] the prompt's last-token logits
    block: KVBlock  # one row: the prompt's own keys/values, its real tokens only

    @classmethod
    def take(cls, logits: np.ndarray, block: KVBlock, row: int) -> Prefilled:
        # Copies, so that the call's whole (padded, many-row) block is not kept alive by one prompt: what is
        # held is exactly the prompt's tokens, which the memory bounds count.
        arrays = [block.tokens(t, row)[None].copy() for t in range(len(block.arrays))]  # [1,H,n,D] each
        return cls(logits[row].copy(), KVBlock(arrays, block.lens[row : row + 1].astype(np.int64), left_padded=False))

    @property
    def nbytes(self) -> int:
        return int(self.logits.nbytes + sum(a.nbytes for a in self.block.arrays))


class PromptCache:
    """Least-recently-used map from prompt token ids to :class:`Prefilled`, bounded in bytes.

    Not thread-safe: the engine's loop thread owns it. ``max_bytes`` 0 turns it off.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("the prompt cache size must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], Prefilled] = OrderedDict()
        self.nbytes = 0  # held by the entries
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, ids: Sequence[int]) -> bool:
        return tuple(ids) in self._entries

    def get(self, ids: Sequence[int]) -> Prefilled | None:
        if self.max_bytes == 0:
            return None
        key = tuple(ids)
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return hit

    def put(self, ids: Sequence[int], value: Prefilled) -> None:
        """Keep ``value`` for ``ids``, evicting the least recently used entries to make room. An entry larger
        than the whole cache, or with NaN/Inf logits (which fail their job anyway), is not kept."""
        size = value.nbytes
        if size > self.max_bytes or not np.isfinite(value.logits).all():
            return
        key = tuple(ids)
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        while self._entries and self.nbytes + size > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= dropped.nbytes
            self.evictions += 1
        self._entries[key] = value
        self.nbytes += size
