"""Fake runners for tests: deterministic numpy stand-ins with fault injection.

:class:`FakeTextRunner` stores each row's token ids and positions *in its KV cache* (1 layer, 1 head,
head_dim 2) and derives a row's logits from the real entries of that cache only. So any cache bookkeeping
bug in the engine (a row moved to the wrong slot, padding not masked, a stale row) changes the tokens,
and the tests that compare a job alone vs batched catch it. It runs on the real :class:`HostKVCache`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from genqueue_worker.engine.kv_cache import HostKVCache, KVBlock, KVCache
from genqueue_worker.engine.runner import ImageModelInfo, TextModelInfo


class FakeRunnerError(RuntimeError):
    """The injected runner failure."""


@dataclass
class FakeCall:
    kind: str  # "prefill" | "decode" | "forward"
    rows: int  # batch rows computed
    width: int  # prefill: padded prompt length; decode: cache length P before the step; forward: 0


def _hash_logits(history: Sequence[int], vocab: int) -> np.ndarray:
    # A fixed pseudo-random function of the whole history: any change in a row's cache changes its logits.
    h = 1469598103934665603
    for t in history:
        h = ((h ^ (t + 1)) * 1099511628211) & ((1 << 64) - 1)
    return np.random.default_rng(h).standard_normal(vocab).astype(np.float32) * 3.0


@dataclass
class FakeTextRunner:
    """Deterministic text runner. Fault knobs act on a row's whole history (prompt + fed tokens).

    ``next_token``: when set, logits put a large margin on ``next_token(history)`` (scripted outputs);
    otherwise logits are a hash of the history. ``poison_token``: any call whose rows include a history
    with it raises FakeRunnerError (alone too, so the job fails with engine_error). ``nan_token``: rows
    whose history holds it get NaN logits. ``fail_calls``: indices of calls that raise once (transient).
    """

    info: TextModelInfo = field(
        default_factory=lambda: TextModelInfo(
            vocab_size=257, n_layer=1, n_head=1, head_dim=2, context_length=256,
            bos_token_id=256, eos_token_id=256, pad_token_id=256,
        )
    )
    next_token: Callable[[list[int]], int] | None = None
    poison_token: int | None = None
    nan_token: int | None = None
    fail_calls: set[int] = field(default_factory=set)
    provider: str = "fake"
    calls: list[FakeCall] = field(default_factory=list)  # every call, in order
    delay_s: float = 0.0  # sleep per call, to make timing-dependent tests (cancel) deterministic enough

    def new_cache(self) -> KVCache:
        return HostKVCache(2 * self.info.n_layer, self.info.n_head, self.info.head_dim, np.float32)

    def _check(self, histories: list[list[int]]) -> None:
        idx = len(self.calls) - 1
        if idx in self.fail_calls:
            self.fail_calls.discard(idx)
            raise FakeRunnerError(f"injected transient failure on call {idx}")
        if self.poison_token is not None and any(self.poison_token in h for h in histories):
            raise FakeRunnerError("injected failure: poison token in the batch")
        if self.delay_s:
            import time

            time.sleep(self.delay_s)

    def _logits(self, histories: list[list[int]]) -> np.ndarray:
        v = self.info.vocab_size
        out = np.empty((len(histories), v), np.float32)
        for i, h in enumerate(histories):
            if self.nan_token is not None and self.nan_token in h:
                out[i] = np.nan
            elif self.next_token is not None:
                out[i] = 0.0
                out[i, self.next_token(h) % v] = 20.0
            else:
                out[i] = _hash_logits(h, v)
                # Fault tokens are never sampled, only fed (in a prompt or by next_token), so a run with
                # the knobs set gives exactly the same tokens as one without for the other jobs.
                for t in (self.poison_token, self.nan_token):
                    if t is not None:
                        out[i, t] = -1e9
        return out

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> tuple[np.ndarray, KVBlock]:
        b, s = input_ids.shape
        self.calls.append(FakeCall("prefill", b, s))
        lens = attention_mask.sum(axis=1).astype(np.int64)
        histories = [input_ids[i, s - lens[i] :].tolist() for i in range(b)]
        self._check(histories)
        kv = np.zeros((b, 1, s, 2), np.float32)  # [B,H,S,D]: (token id, position + 1); pads stay 0
        kv[:, 0, :, 0] = np.where(attention_mask > 0, input_ids, 0)
        kv[:, 0, :, 1] = np.where(attention_mask > 0, position_ids + 1, 0)
        return self._logits(histories), KVBlock([kv, kv.copy()], lens)

    def decode(self, cache: KVCache, input_ids: np.ndarray) -> np.ndarray:
        assert isinstance(cache, HostKVCache)
        rows, p = cache.rows, cache.length
        self.calls.append(FakeCall("decode", rows, p))
        past = cache.past()[0]  # [rows,1,P,2]
        lens = cache.lens
        histories = []
        for r in range(rows):
            real = past[r, 0, p - lens[r] :]  # the row's real entries, oldest first
            if not np.all(real[:, 1] == np.arange(1, lens[r] + 1)):
                raise AssertionError(f"row {r}: cache positions {real[:, 1].tolist()} are not 1..{lens[r]}")
            histories.append([*real[:, 0].astype(np.int64).tolist(), int(input_ids[r, 0])])
        self._check(histories)
        present = cache.next_present()
        for t in range(2):
            present[t][:, :, :p] = cache.past()[t]
            present[t][:, 0, p, 0] = input_ids[:, 0]
            present[t][:, 0, p, 1] = lens + 1
        logits = self._logits(histories)
        cache.commit_step()
        return logits


@dataclass
class FakeImageRunner:
    """Deterministic image runner: each image is a fixed function of its own z and label only.

    ``poison_label``: a forward whose batch holds that label raises. ``nan_label``: that label's images are
    NaN. ``fail_calls``: indices of forward calls that raise once.
    """

    info: ImageModelInfo = field(default_factory=lambda: ImageModelInfo(16, 10, 1, 8, 8))
    poison_label: int | None = None
    nan_label: int | None = None
    fail_calls: set[int] = field(default_factory=set)
    provider: str = "fake"
    calls: list[FakeCall] = field(default_factory=list)
    delay_s: float = 0.0

    def forward(self, z: np.ndarray, class_label: np.ndarray | None) -> np.ndarray:
        b = z.shape[0]
        self.calls.append(FakeCall("forward", b, 0))
        idx = len(self.calls) - 1
        if idx in self.fail_calls:
            self.fail_calls.discard(idx)
            raise FakeRunnerError(f"injected transient failure on call {idx}")
        labels = class_label if class_label is not None else np.zeros(b, np.int64)
        if self.poison_label is not None and np.any(labels == self.poison_label):
            raise FakeRunnerError("injected failure: poison label in the batch")
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        c, h, w = self.info.channels, self.info.height, self.info.width
        pix = np.arange(c * h * w) % z.shape[1]
        img = np.tanh(z[:, pix] + 0.1 * labels[:, None]).reshape(b, c, h, w).astype(np.float32)
        if self.nan_label is not None:
            img[labels == self.nan_label] = np.nan
        return img
