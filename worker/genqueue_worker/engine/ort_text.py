"""ONNX Runtime text runner: prefill and decode over the explicit KV cache (registry.py's contract).

Ragged graphs (the exporter's default): the cache lives in :class:`RaggedKVCache`; ``present`` is bound to
``past``'s memory, so the graph writes each row's new column in place (see kv_ragged.py).

Append graphs: the cache lives in :class:`AppendKVCache`, bound by pointer through IO binding with spare
masked columns; the graph returns only the new column, which the cache writes into its spare column, so a
step never copies the whole cache. Both keep the cache on the host: on CUDA, ORT would upload it every step,
so GPU serving wants ``--kv-contract concat``, whose cache stays on the device.

Concat graphs (older exports, and the one for CUDA): CPU: the cache lives in :class:`HostKVCache`'s ping-pong buffers, so ORT
writes ``present`` straight into the buffer the next step reads as ``past`` (no allocation, no copy on the
Python side). CUDA: :class:`DeviceKVCache`; ``present`` stays on the device between steps and only the
logits come back to the host.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genqueue_worker.engine.kv_append import AppendKVCache
from genqueue_worker.engine.kv_cache import DeviceKVCache, HostKVCache, KVBlock, KVCache
from genqueue_worker.engine.kv_ragged import RaggedKVCache
from genqueue_worker.engine.ort_session import CUDA, SessionConfig, create_session
from genqueue_worker.engine.runner import TextModelInfo

log = logging.getLogger("genqueue.worker.engine")

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtTextRunner:
    def __init__(
        self,
        model_path: Path,
        info: TextModelInfo,
        session: SessionConfig | None = None,
        trim_slack: int = 2,
        cache_device: str | None = None,
    ) -> None:
        """``cache_device`` (concat graphs): None picks by the provider that runs (CUDA: device-resident
        cache; CPU: host ping-pong buffers); "cpu" forces the device-resident code path on the CPU, which is
        how tests exercise the CUDA path's logic on machines without a GPU. Ragged and append graphs always
        keep a host cache."""
        self.info = info
        self.session_config = session or SessionConfig()
        self.session, self.provider = create_session(model_path, self.session_config, f"text model {model_path}")
        self.trim_slack = trim_slack
        n = info.n_layer
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        # The graph's I/O says which contract it follows (older manifests predate text.kv_contract).
        self.ragged = "seqlens_k" in inputs
        self.append = "new_key_values.0.key" in outputs
        self.contract = "ragged" if self.ragged else "append" if self.append else "concat"
        prefix = "new_key_values" if self.append else "present"
        self.present_names = [f"{prefix}.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        self.on_device = self.contract == "concat" and (self.provider == CUDA or cache_device is not None)
        self.cache_device = cache_device or ("cuda" if self.provider == CUDA else "cpu")
        if self.contract != "concat" and self.provider == CUDA:
            log.warning("%s: a %s-contract graph on CUDA keeps its KV cache on the host; export with "
                        "--kv-contract concat to keep it on the device", model_path, self.contract)
        if info.kv_contract is not None and info.kv_contract != self.contract:
            raise ValueError(f"{model_path}: the manifest says kv_contract={info.kv_contract!r} but the graph's "
                             f"inputs and outputs follow {self.contract!r}; re-export the model")
        step_inputs = ["seqlens_k", "total_sequence_length"] if self.ragged else ["attention_mask"]
        missing = [x for x in ["input_ids", *step_inputs, "position_ids", *self.past_names] if x not in inputs]
        missing += [x for x in ["logits", *self.present_names] if x not in outputs]
        if missing:
            raise ValueError(f"{model_path}: graph does not follow the text contract, missing {missing}")
        self.kv_dtype = np.dtype(_ORT_TYPES.get(inputs[self.past_names[0]].type, np.float32))
        self.logits_dtype = np.dtype(_ORT_TYPES.get(outputs["logits"].type, np.float32))
        self._init_call_state()

    def _init_call_state(self) -> None:
        """What one calling thread needs of its own: an IO binding and the reused output buffers."""
        self._io = self.session.io_binding()
        self._bind = _Binder(self._io)
        self._logits_buf = np.zeros(0, self.logits_dtype)  # reused [rows,1,V] logits output of decode steps
        self._logits_ptr = 0
        self._empty_past: dict[int, list[np.ndarray]] = {}

    def sibling(self) -> OrtTextRunner:
        """A runner on the same session (one copy of the weights) with its own binding and buffers, for
        another thread: ORT sessions take concurrent runs, IO bindings do not."""
        twin = copy.copy(self)
        twin._init_call_state()
        return twin

    # -- cache ------------------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        n = 2 * self.info.n_layer
        if self.ragged:
            return RaggedKVCache(n, self.info.n_head, self.info.head_dim, self.kv_dtype)
        if self.append:
            return AppendKVCache(n, self.info.n_head, self.info.head_dim, self.kv_dtype)
        if self.on_device:
            return DeviceKVCache(
                n, self.info.n_head, self.info.head_dim, self.kv_dtype, self.cache_device, self.session_config.device_id
            )
        return HostKVCache(n, self.info.n_head, self.info.head_dim, self.kv_dtype, self.trim_slack)

    def _empty(self, batch: int) -> list[np.ndarray]:
        if batch not in self._empty_past:
            shape = (batch, self.info.n_head, 0, self.info.head_dim)  # [B,H,0,D]: the prefill call
            self._empty_past[batch] = [np.zeros(shape, self.kv_dtype) for _ in self.past_names]
        return self._empty_past[batch]

    # -- calls ------------------------------------------------------------------------------------------
    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> tuple[np.ndarray, KVBlock]:
        """Left-padded prompts (the engine's convention) -> (last-token logits [B,V], left-padded KVBlock)."""
        if self.ragged:
            return self._prefill_ragged(input_ids, attention_mask, position_ids)
        b = input_ids.shape[0]
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds.update(zip(self.past_names, self._empty(b), strict=True))
        out = self.session.run(["logits", *self.present_names], feeds)
        # [B,V]: left padding puts every row's last token in the last column; graphs exported with all
        # positions' logits [B,S,V] and those with the last one's [B,1,V] both end there.
        logits = out[0][:, -1, :]
        return logits, KVBlock(list(out[1:]), attention_mask.sum(axis=1).astype(np.int64))

    def _prefill_ragged(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> tuple[np.ndarray, KVBlock]:
        # The ragged graph wants each row's tokens first (right padding) and its length in seqlens_k.
        b, s = input_ids.shape
        lens = attention_mask.sum(axis=1).astype(np.int64)
        ids = np.full_like(input_ids, self.info.pad_token_id)
        pos = np.zeros_like(position_ids)
        for r in range(b):
            n = int(lens[r])
            ids[r, :n] = input_ids[r, s - n :]
            pos[r, :n] = position_ids[r, s - n :]
        feeds: dict[str, Any] = {
            "input_ids": ids, "position_ids": pos, "seqlens_k": (lens - 1).astype(np.int32),
            "total_sequence_length": np.array(s, np.int32),
        }
        feeds.update(zip(self.past_names, self._empty(b), strict=True))
        out = self.session.run(["logits", *self.present_names], feeds)
        # [B,1,V]: the graph kept each row's last real token; [B,S,V] (graphs exported before it did): pick it.
        logits = out[0][:, 0, :] if out[0].shape[1] == 1 else out[0][np.arange(b), lens - 1, :]  # [B,V]
        # present [B,H,S,D] holds each row's tokens first; the block says so and joins the cache as it is.
        return logits, KVBlock(list(out[1:]), lens, left_padded=False)

    def _positions(self, cache: KVCache) -> np.ndarray:
        # A static batch's finished rows keep decoding as padding; clamp them inside the position table.
        return np.minimum(cache.lens, self.info.context_length - 1).astype(np.int64)[:, None]  # [rows,1]

    def decode(self, cache: KVCache, input_ids: np.ndarray) -> np.ndarray:
        if isinstance(cache, RaggedKVCache):
            return self._decode_ragged(cache, input_ids)
        if isinstance(cache, HostKVCache | AppendKVCache):
            return self._decode_host(cache, input_ids)
        if isinstance(cache, DeviceKVCache):
            return self._decode_device(cache, input_ids)
        raise TypeError(f"unsupported cache {type(cache).__name__}")

    def _decode_host(self, cache: HostKVCache | AppendKVCache, input_ids: np.ndarray) -> np.ndarray:
        """Both host caches bind by address: past from the live buffer, the KV output into the buffer the
        cache names (the spare ping-pong buffer of a concat cache, the new-column buffer of an append one)."""
        io = self._io
        rows = cache.rows
        mask = cache.mask_for_step()  # [rows,P+1]
        pos = self._positions(cache)
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        io.bind_cpu_input("position_ids", pos)
        past_shape, past_ptrs, present_shape, present_ptrs = cache.step_binding()
        kv = self.kv_dtype
        for name, ptr in zip(self.past_names, past_ptrs, strict=True):
            self._bind.input(name, kv, past_shape, ptr)
        for name, ptr in zip(self.present_names, present_ptrs, strict=True):
            self._bind.output(name, kv, present_shape, ptr)
        logits = self._run_bound(rows)
        cache.commit_step()
        return logits

    def _run_bound(self, rows: int) -> np.ndarray:
        """Bind the logits to the reused host buffer, run the bound step and clear the bindings; returns
        logits [rows,V], a view of that buffer (valid until the next step; the sampler copies what it needs)."""
        logits = self._logits_view(rows)
        try:
            self.session.run_with_iobinding(self._io)
        finally:
            self._io.clear_binding_inputs()
            self._io.clear_binding_outputs()
        return logits

    def _logits_view(self, rows: int) -> np.ndarray:
        """Binds the logits output to the reused host buffer; returns its [rows,V] view."""
        v = self.info.vocab_size
        if self._logits_buf.shape[0] < rows * v:
            self._logits_buf = np.zeros(rows * v, self.logits_dtype)
            self._logits_ptr = int(self._logits_buf.ctypes.data)
        self._bind.output("logits", self.logits_dtype, [rows, 1, v], self._logits_ptr)
        return self._logits_buf[: rows * v].reshape(rows, v)

    def _decode_ragged(self, cache: RaggedKVCache, input_ids: np.ndarray) -> np.ndarray:
        """One step with ``present`` bound to ``past``'s memory: the graph reads each row's own length and
        writes its new column in place, so nothing is copied before or after."""
        io = self._io
        rows = cache.rows
        shape, ptrs = cache.step_binding()
        lens = cache.lens
        io.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        io.bind_cpu_input("position_ids", self._positions(cache))
        io.bind_cpu_input("seqlens_k", lens.astype(np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(int(lens.max()) + 1, np.int32))
        kv = self.kv_dtype
        for past, present, ptr in zip(self.past_names, self.present_names, ptrs, strict=True):
            self._bind.input(past, kv, shape, ptr)
            self._bind.output(present, kv, shape, ptr)
        logits = self._run_bound(rows)
        cache.commit_step()
        return logits

    def _decode_device(self, cache: DeviceKVCache, input_ids: np.ndarray) -> np.ndarray:
        io = self._io
        dev, dev_id = cache.device, cache.device_id
        io.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        io.bind_cpu_input("attention_mask", cache.mask_for_step())
        io.bind_cpu_input("position_ids", self._positions(cache))
        for name, val in zip(self.past_names, cache.past_values(), strict=True):
            io.bind_ortvalue_input(name, val)
        # Sampling runs on the host: only the logits cross the bus, straight into the reused host buffer (a
        # fresh output each step cost an allocation and a copy of B x V floats: 49 MB at batch 256 on a
        # GPT-2-sized vocabulary).
        logits = self._logits_view(cache.rows)
        for name in self.present_names:
            io.bind_output(name, dev, dev_id)  # ORT allocates present on the device
        try:
            self.session.run_with_iobinding(io)
            io.synchronize_outputs()
            present = list(io.get_outputs()[1:])  # in binding order: logits first
        finally:
            io.clear_binding_inputs()
            io.clear_binding_outputs()
        cache.commit_step(present)
        return logits

    def warmup(self, batch_sizes: Sequence[int], prompt_len: int = 8, steps: int = 2) -> None:
        """Run the common shapes once so ORT's arena and kernel choices settle before the first job."""
        for b in sorted(set(batch_sizes)):
            s = max(1, min(prompt_len, self.info.context_length - steps - 1))
            ids = np.full((b, s), self.info.pad_token_id, np.int64)
            mask = np.ones((b, s), np.int64)
            pos = np.tile(np.arange(s, dtype=np.int64), (b, 1))
            _, block = self.prefill(ids, mask, pos)
            cache = self.new_cache()
            cache.append(block, range(b))
            for _ in range(steps):
                self.decode(cache, np.full((b, 1), self.info.pad_token_id, np.int64))



class _Binder:
    """Binds host buffers by address. The public ``IOBinding.bind_input/bind_output`` build an OrtDevice on
    every call (measured ~0.2 ms per decode step for 17 bindings, as much as a batch-1 step itself), so the
    CPU device is made once and the pybind object is called directly when this onnxruntime exposes it."""

    def __init__(self, io: Any) -> None:
        import onnxruntime as ort

        self._io = io
        self._raw = getattr(io, "_iobinding", None)
        try:
            self._cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        except Exception:  # a future onnxruntime without these internals: use the public API
            self._raw = None

    def input(self, name: str, dtype: Any, shape: list[int], ptr: int) -> None:
        if self._raw is not None:
            self._raw.bind_input(name, self._cpu, dtype, shape, ptr)
        else:
            self._io.bind_input(name, "cpu", 0, dtype, shape, ptr)

    def output(self, name: str, dtype: Any, shape: list[int], ptr: int) -> None:
        if self._raw is not None:
            self._raw.bind_output(name, self._cpu, dtype, shape, ptr)
        else:
            self._io.bind_output(name, "cpu", 0, dtype, shape, ptr)
