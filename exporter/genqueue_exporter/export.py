"""ONNX export, parity validation and atomic publication of model folders.

The flow for one model: export each precision variant into a staging folder under ``<models_dir>/.staging-*``
(hidden from the registry, whose glob is ``*/*/manifest.json``), measure ORT-vs-torch parity there, write
the manifest, re-read it with ``genqueue.registry.load_manifest(check_hash=True)``, and only when every
variant passed, rename each ``<name>/<version>`` folder into place. A failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from genqueue.registry import (
    ImageSpec,
    Manifest,
    ModelKind,
    Parity,
    RegistryError,
    TensorSpec,
    TextSpec,
    load_manifest,
    sha256_file,
)
from genqueue_exporter.errors import ExportError
from genqueue_exporter.gpt_ragged import build_ragged_onnx, ragged_names, ragged_parity
from genqueue_exporter.ortload import ort_session as load_ort_session

log = logging.getLogger(__name__)
# torch.onnx warns on every export that torchvision's ops cannot be registered; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

Precision = Literal["fp32", "fp16", "int8"]
# Max |ORT - torch fp32| allowed per precision. fp32 text logits reach |20|+ and float reassociation in
# ORT's fused kernels moves them by ~1e-5..1e-4, so 1e-3 is strict yet not flaky. Quantized figures only
# guard against a broken graph; their quality is the metrics' business.
KVContract = Literal["ragged", "append", "concat"]
TOLERANCE: dict[str, dict[str, float]] = {
    "text": {"fp32": 1e-3, "fp16": 5e-2, "int8": 1.5},
    "image": {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.25},
}
# The same rules as genqueue.registry's name check, applied before hours of training rather than after.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_OPSET = 18


def exporter_version() -> str:
    import genqueue

    return getattr(genqueue, "__version__", None) or importlib.metadata.version("genqueue")


def variant_version(version: str, precision: str) -> str:
    """``1`` for fp32, ``1-int8`` / ``1-fp16`` for the variants, so each is its own servable version."""
    return version if precision == "fp32" else f"{version}-{precision}"


# --- target folders ---------------------------------------------------------------------------------------


def check_target(models_dir: Path, name: str, version: str, force: bool = False) -> Path:
    """Fail fast (before any training) on a bad name, an unwritable folder or an existing version."""
    if not _NAME_RE.match(name):
        raise ExportError(f"invalid model name {name!r}: use lower-case letters, digits, '.', '_' or '-'")
    if not _VERSION_RE.match(version):
        raise ExportError(f"invalid version {version!r}: use letters, digits, '.', '_' or '-'")
    target = models_dir / name / version
    if target.exists() and not force:
        raise ExportError(f"{target} already exists (use --force to replace it or --skip-existing)")
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=models_dir, prefix=".probe-"):
            pass
    except OSError as e:
        raise ExportError(f"cannot write to models folder {models_dir}: {e.strerror or e}") from e
    return target


def _publish(staged: Path, target: Path, force: bool) -> Path | None:
    """Rename ``staged`` into place; returns where a replaced version was moved (kept until every variant of
    the export is in place, so that a failure can put it back)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    trash: Path | None = None
    if target.exists():
        if not force:
            raise ExportError(f"{target} already exists (use --force to replace it)")
        # Move the old version aside first so that the swap is two renames, never a half-deleted folder.
        trash = staged.parent.parent / f"old-{uuid.uuid4().hex[:8]}"
        os.rename(target, trash)
    try:
        os.rename(staged, target)
    except BaseException:
        if trash is not None:
            os.rename(trash, target)
        raise
    return trash


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block, then raise the first that came once it ends, to the handler
    it would have met. Python-level handlers, not a signal mask: in a process with other threads the kernel
    hands a process signal to any thread that does not block it. Outside the main thread, does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def _publish_all(staged: dict[str, Path], targets: dict[str, Path], force: bool) -> None:
    """Every variant or none: a failure (or an interrupt) while publishing the second one takes the first
    back out and restores the versions they replaced."""
    for target in targets.values():  # checked again: another export may have published meanwhile
        if target.exists() and not force:
            raise ExportError(f"{target} already exists (use --force to replace it)")
    done: list[tuple[Path, Path | None]] = []
    try:
        # Ctrl-C and SIGTERM (which the CLI turns into exceptions at any bytecode) wait until the renames and
        # this bookkeeping are done; delivered at the end of the block, they roll the whole set back.
        with _signals_deferred():
            for p, target in targets.items():
                trash = _publish(staged[p], target, force)
                done.append((target, trash))
            for target in targets.values():
                load_manifest(target, check_hash=True)
    except BaseException as e:
        for target, trash in reversed(done):
            shutil.rmtree(target, ignore_errors=True)
            if trash is not None:
                os.rename(trash, target)
        if isinstance(e, RegistryError):
            raise ExportError(f"the published folder does not load: {e}") from e
        raise
    for _, trash in done:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


# --- ONNX export --------------------------------------------------------------------------------------------


@dataclass
class GraphSpec:
    """Names, dtypes and shapes of one graph's I/O; strings in shapes are dynamic axis names."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    varargs_from: int | None = None  # inputs from this index on are the module's ``*past`` argument

    @property
    def dynamic_axes(self) -> dict[str, dict[str, str]]:
        axes: dict[str, dict[str, str]] = {}
        for t in (*self.inputs, *self.outputs):
            dyn = {str(i): d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if dyn:
                axes[t.name] = dyn
        return axes

    def torch_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {int(i): d for i, d in ax.items()} for n, ax in self.dynamic_axes.items()}


def kv_output_names(n_layer: int, contract: str) -> list[str]:
    prefix = "new_key_values" if contract == "append" else "present"
    return [f"{prefix}.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def text_graph_spec(
    n_layer: int, n_head: int, head_dim: int, vocab: int, kv_dtype: str, contract: str = "append"
) -> GraphSpec:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = kv_output_names(n_layer, contract)
    kv_len = "seq" if contract == "append" else "total"
    return GraphSpec(
        inputs=[
            TensorSpec(name="input_ids", dtype="int64", shape=["batch", "seq"]),
            TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "total"]),
            TensorSpec(name="position_ids", dtype="int64", shape=["batch", "seq"]),
            *[TensorSpec(name=n, dtype=kv_dtype, shape=["batch", n_head, "past", head_dim]) for n in past],
        ],
        outputs=[
            TensorSpec(name="logits", dtype=kv_dtype, shape=["batch", 1, vocab]),  # the last position's (gpt.py)
            *[TensorSpec(name=n, dtype=kv_dtype, shape=["batch", n_head, kv_len, head_dim]) for n in present],
        ],
        varargs_from=3,
    )


def ragged_graph_spec(n_layer: int, n_head: int, head_dim: int, vocab: int) -> GraphSpec:
    past, present = ragged_names(n_layer)
    return GraphSpec(
        inputs=[
            TensorSpec(name="input_ids", dtype="int64", shape=["batch", "seq"]),
            TensorSpec(name="position_ids", dtype="int64", shape=["batch", "seq"]),
            TensorSpec(name="seqlens_k", dtype="int32", shape=["batch"]),
            TensorSpec(name="total_sequence_length", dtype="int32", shape=[]),
            *[TensorSpec(name=n, dtype="float32", shape=["batch", n_head, "past", head_dim]) for n in past],
        ],
        outputs=[
            TensorSpec(name="logits", dtype="float32", shape=["batch", 1, vocab]),  # each row's last token
            *[TensorSpec(name=n, dtype="float32", shape=["batch", n_head, "present", head_dim]) for n in present],
        ],
    )


def image_graph_spec(latent: int, conditional: bool, c: int, h: int, w: int, dtype: str) -> GraphSpec:
    inputs = [TensorSpec(name="z", dtype=dtype, shape=["batch", latent])]
    if conditional:
        inputs.append(TensorSpec(name="class_label", dtype="int64", shape=["batch"]))
    return GraphSpec(inputs=inputs, outputs=[TensorSpec(name="images", dtype=dtype, shape=["batch", c, h, w])])


def _dynamo_shapes(spec: GraphSpec) -> tuple[Any, ...]:
    """torch.export dynamic shapes in argument order; ``total`` is left for the exporter to derive."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    out: list[Any] = []
    for t in spec.inputs:
        ax: dict[int, Any] = {}
        for i, d in enumerate(t.shape):
            if isinstance(d, str):
                ax[i] = dims.setdefault(d, Dim(d))
        out.append(ax)
    if spec.varargs_from is not None:
        # torch.export wants a ``*args`` parameter's shapes as one nested tuple.
        return (*out[: spec.varargs_from], tuple(out[spec.varargs_from :]))
    return tuple(out)


def _rename_dims(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give graph I/O the manifest's axis names (dynamo writes e.g. ``past + seq`` for ``total``)."""
    wanted = {t.name: t.shape for t in (*spec.inputs, *spec.outputs)}
    for vi in (*model.graph.input, *model.graph.output):
        shape = wanted.get(vi.name)
        if shape is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(shape):
            if isinstance(d, str) and i < len(dims):
                dims[i].dim_param = d


def _reraise_interrupt(error: BaseException) -> None:
    """torch.export wraps a Ctrl-C that lands inside it (TorchExportError from ... from KeyboardInterrupt):
    an interrupt is the user stopping the export, not a failure to fall back from."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if not isinstance(e, Exception):
            raise type(e)(*e.args) from error  # the interrupt itself (Ctrl-C, or SIGTERM through the CLI)
        seen.add(id(e))
        e = e.__cause__ or e.__context__


def to_onnx(
    model: nn.Module, args: tuple[torch.Tensor, ...], spec: GraphSpec, path: Path, opset: int = DEFAULT_OPSET
) -> str:
    """Export ``model`` to one self-contained ``path`` and return which exporter produced it.

    dynamo (torch.export) first: it is torch's supported path. The TorchScript exporter is kept as a fallback
    because it still handles models torch.export cannot trace. Either way the weights are written inside the
    file (the manifest's sha256 covers one file) and the graph is checked with onnx.checker.
    """
    in_names = [t.name for t in spec.inputs]
    out_names = [t.name for t in spec.outputs]
    proto: onnx.ModelProto | None = None
    method = "dynamo"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, args, f=None, input_names=in_names, output_names=out_names, opset_version=opset,
                dynamo=True, dynamic_shapes=_dynamo_shapes(spec), external_data=False, optimize=True,
                verbose=False,
            )
        assert program is not None
        proto = program.model_proto
    except Exception as e:  # the fallback is the point: any dynamo failure gets the second exporter
        _reraise_interrupt(e)
        log.warning("dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        method = "torchscript"
        ts_path = path.with_name("torchscript.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, args, str(ts_path), input_names=in_names, output_names=out_names,
                    opset_version=min(opset, 17), dynamo=False, dynamic_axes=spec.torch_dynamic_axes(),
                )
            proto = onnx.load(str(ts_path))
        except Exception as e2:
            raise ExportError(f"ONNX export failed with both exporters: {type(e2).__name__}: {e2}") from e2
        finally:
            ts_path.unlink(missing_ok=True)
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != in_names or got_out != out_names:
        raise ExportError(f"exported graph has I/O {got_in} -> {got_out}, expected {in_names} -> {out_names}")
    _rename_dims(proto, spec)
    if proto.ByteSize() >= 2**31 - 1:
        raise ExportError("model is over 2 GB, which a single-file ONNX cannot hold")
    onnx.save_model(proto, str(path))
    check_onnx_file(path)
    return method


def check_onnx_file(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file; any failure becomes one ExportError line naming the file."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: not a valid ONNX model ({first})") from e
    return model


def onnx_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ExportError(f"{path}: no default-domain opset import")


def ort_session(path: Path) -> Any:
    # Parity inputs are tiny; one thread avoids ORT's spinning thread pool fighting torch's for the cores.
    return load_ort_session(path, threads=1)


# --- parity ---------------------------------------------------------------------------------------------------


def _max_diff(ort_out: Sequence[np.ndarray], torch_out: Sequence[torch.Tensor], names: list[str]) -> tuple[float, str]:
    worst, worst_name = 0.0, names[0]
    for name, a, b in zip(names, ort_out, torch_out, strict=True):
        d = float(np.abs(a.astype(np.float32) - b.detach().float().numpy()).max()) if a.size else 0.0
        if not np.isfinite(d):
            d = float("inf")
        if d > worst:
            worst, worst_name = d, name
    return worst, worst_name


def _check(case: str, diff: float, out_name: str, tol: float) -> None:
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"parity check failed: case {case}, output {out_name}: max |ORT - torch| = {diff:.3g} > tolerance {tol:g}")


def text_parity(
    model: nn.Module, onnx_path: Path, spec: GraphSpec, tol: float, seed: int = 0, contract: str = "append"
) -> dict[str, float]:
    """ORT vs the torch fp32 model on prefill (P=0), decode (P>0, S=1), a chunk (P>0, S>1) and left padding.

    ``left_pad_vs_alone`` is ORT against ORT: a left-padded row's logits and keys/values against the same
    row run alone, the property the worker's batching relies on.
    """
    from genqueue_exporter.gpt import GPT, position_ids_from_mask

    assert isinstance(model, GPT)
    gpt: GPT = model.eval().float()
    cfg = gpt.config
    sess = ort_session(onnx_path)
    np_dtype = np.float16 if spec.inputs[3].dtype == "float16" else np.float32
    in_names = [t.name for t in spec.inputs]
    out_names = [t.name for t in spec.outputs]
    g = torch.Generator().manual_seed(seed)
    results: dict[str, float] = {}

    def run(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: list[torch.Tensor]) -> tuple[list[np.ndarray], tuple[torch.Tensor, ...]]:
        with torch.no_grad():
            ref = gpt.forward_append(ids, mask, pos, *past) if contract == "append" else gpt(ids, mask, pos, *past)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
        feed.update({n: p.numpy().astype(np_dtype) for n, p in zip(in_names[3:], past, strict=True)})
        return sess.run(out_names, feed), ref

    def case(name: str, B: int, S: int, past: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        P = past[0].shape[2]
        ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
        mask = torch.ones(B, P + S, dtype=torch.long)
        pos = torch.arange(P, P + S).unsqueeze(0).expand(B, S).contiguous()
        got, ref = run(ids, mask, pos, past)
        diff, worst = _max_diff(got, ref, out_names)
        _check(name, diff, worst, tol)
        results[name] = diff
        kv = list(ref[1:])
        if contract == "append":  # the next case's past is what a worker's cache would hold
            kv = [torch.cat([p, n], dim=2) for p, n in zip(past, kv, strict=True)]
        return ids, kv

    S0 = min(6, cfg.block_size - 4)
    _, past = case("prefill_b2", 2, S0, gpt.empty_past(2))
    _, past2 = case("decode_b2", 2, 1, past)
    case("chunk_b2", 2, 3, past2)

    # Left padding: three rows of different lengths, right-aligned in one [3,L] batch.
    L = min(8, cfg.block_size)
    lengths = [L, L - 3, max(1, L - 6)]
    rows = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lengths]
    ids = torch.zeros(3, L, dtype=torch.long)
    mask = torch.zeros(3, L, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, L - len(row):] = row
        mask[r, L - len(row):] = 1
    pos = position_ids_from_mask(mask, L)
    got, ref = run(ids, mask, pos, gpt.empty_past(3))
    diff, worst = _max_diff(got, ref, out_names)
    _check("left_pad_b3", diff, worst, tol)
    results["left_pad_b3"] = diff
    alone_diff, worst = 0.0, "logits"
    for r, row in enumerate(rows):
        n = len(row)
        one, _ = run(row.unsqueeze(0), torch.ones(1, n, dtype=torch.long), torch.arange(n).unsqueeze(0), gpt.empty_past(1))
        # The logits are the last token's; the keys/values cover the row's every real position.
        pairs = [(got[0][r, -1], one[0][0, -1])] + [(got[t][r, :, L - n:], one[t][0]) for t in range(1, len(out_names))]
        for name, (a, b) in zip(out_names, pairs, strict=True):
            d = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
            d = d if np.isfinite(d) else float("inf")
            if d > alone_diff:
                alone_diff, worst = d, name
    _check("left_pad_vs_alone", alone_diff, worst, tol)
    results["left_pad_vs_alone"] = alone_diff
    return results


def image_parity(model: nn.Module, onnx_path: Path, spec: GraphSpec, tol: float, seed: int = 0) -> dict[str, float]:
    """ORT vs torch for batch sizes 1, 3 and 7 (the batch axis must really be dynamic)."""
    from genqueue_exporter.dcgan import Generator

    assert isinstance(model, Generator)
    gen: Generator = model.eval().float()
    cfg = gen.config
    sess = ort_session(onnx_path)
    np_dtype = np.float16 if spec.inputs[0].dtype == "float16" else np.float32
    g = torch.Generator().manual_seed(seed)
    results: dict[str, float] = {}
    for B in (1, 3, 7):
        z = torch.randn(B, cfg.latent_size, generator=g)
        c = torch.randint(0, cfg.num_classes, (B,), generator=g)
        with torch.no_grad():
            ref = gen(z, c)
        got = sess.run(["images"], {"z": z.numpy().astype(np_dtype), "class_label": c.numpy()})
        diff, worst = _max_diff(got, [ref], ["images"])
        _check(f"batch_{B}", diff, worst, tol)
        results[f"batch_{B}"] = diff
    return results


# --- the export of one model ----------------------------------------------------------------------------------


@dataclass
class ExportJob:
    """Everything needed to publish one model: the torch module plus what goes into the manifest."""

    kind: ModelKind
    name: str
    version: str
    model: nn.Module  # GPT or dcgan.Generator, fp32
    source: str = "builtin"  # builtin | hf:<dir> | state_dict:<file>
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tokenizer_json: str | None = None  # text: the serialized tokenizers.Tokenizer
    bos_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int = 0
    prepend_bos: bool = False  # text: the model saw BOS before every training document
    kv_contract: KVContract = "ragged"  # text: see registry.TextSpec.kv_contract


def variant_contract(job: ExportJob, precision: str) -> KVContract:
    """The KV contract of one precision variant: GroupQueryAttention's CPU kernel is fp32, so a ragged model's
    fp16 variant uses the append contract (standard ops)."""
    if job.kv_contract == "ragged" and precision == "fp16":
        return "append"
    return job.kv_contract


def _export_module(job: ExportJob, model: nn.Module, contract: str) -> nn.Module:
    """The module whose ``forward`` is the graph: GPT.forward is the concat contract, AppendKV the append one."""
    if job.kind is ModelKind.text and contract == "append":
        from genqueue_exporter.gpt import GPT, AppendKV

        assert isinstance(model, GPT)
        return AppendKV(model)
    return model


def _example_args(job: ExportJob, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    # Every dynamic axis gets a size >= 2 in the example: torch.export specializes sizes 0 and 1.
    cfg: Any = job.model.config
    if job.kind is ModelKind.text:
        B, S, P = 2, 3, 4
        ids = torch.zeros(B, S, dtype=torch.long)
        mask = torch.ones(B, P + S, dtype=torch.long)
        pos = torch.arange(P, P + S).unsqueeze(0).expand(B, S).contiguous()
        past = [torch.zeros(B, cfg.n_head, P, cfg.head_dim, dtype=dtype) for _ in range(2 * cfg.n_layer)]
        return (ids, mask, pos, *past)
    return (torch.zeros(2, cfg.latent_size, dtype=dtype), torch.zeros(2, dtype=torch.long))


def _graph_spec(job: ExportJob, dtype: str, contract: str) -> GraphSpec:
    cfg: Any = job.model.config
    if job.kind is ModelKind.text:
        if contract == "ragged":
            return ragged_graph_spec(cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.vocab_size)
        return text_graph_spec(cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.vocab_size, dtype, contract)
    return image_graph_spec(cfg.latent_size, cfg.num_classes > 0, cfg.channels, cfg.image_size, cfg.image_size, dtype)


def _build_variant(job: ExportJob, precision: Precision, folder: Path, fp32_onnx: Path | None) -> Path:
    """Write model.onnx (+ tokenizer.json) and manifest.json for one precision into ``folder``."""
    import onnxruntime

    folder.mkdir(parents=True)
    onnx_path = folder / "model.onnx"
    io_dtype: Literal["float32", "float16"] = "float16" if precision == "fp16" else "float32"
    contract = variant_contract(job, precision)
    spec = _graph_spec(job, io_dtype, contract)
    if precision == "int8":
        assert fp32_onnx is not None
        method = quantize_int8(fp32_onnx, onnx_path)
    elif precision == "fp16":
        method = export_fp16(job, spec, onnx_path, contract)
    elif job.kind is ModelKind.text and contract == "ragged":
        method = build_ragged_onnx(job.model.eval().float(), onnx_path)
    else:
        model = _export_module(job, job.model.eval().float(), contract)
        method = to_onnx(model, _example_args(job, torch.float32), spec, onnx_path)
    kind_tol = TOLERANCE[job.kind.value][precision]
    if job.kind is ModelKind.text and contract == "ragged":
        diffs = ragged_parity(job.model, ort_session(onnx_path), kind_tol)
    elif job.kind is ModelKind.text:
        diffs = text_parity(job.model, onnx_path, spec, kind_tol, contract=contract)
    else:
        diffs = image_parity(job.model, onnx_path, spec, kind_tol)

    cfg: Any = job.model.config
    text = image = None
    if job.kind is ModelKind.text:
        if job.tokenizer_json is None:
            raise ExportError(f"{job.name}: a text model needs a tokenizer")
        (folder / "tokenizer.json").write_text(job.tokenizer_json, encoding="utf-8")
        text = TextSpec(
            vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=cfg.head_dim,
            n_embd=cfg.n_embd, context_length=cfg.block_size, bos_token_id=job.bos_token_id,
            eos_token_id=job.eos_token_id, pad_token_id=job.pad_token_id, kv_dtype=io_dtype,
            prepend_bos=job.prepend_bos, kv_contract=contract,
        )
    else:
        image = ImageSpec(
            latent_size=cfg.latent_size, num_classes=cfg.num_classes, channels=cfg.channels,
            height=cfg.image_size, width=cfg.image_size,
        )
    extra = {
        **job.extra,
        "exporter": method,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "parity_reference": "torch fp32 eval-mode module, CPU",
    }
    if job.kind is ModelKind.text:
        # Left padding is handled in-graph from attention_mask; positions are the caller's job.
        extra.setdefault("position_ids", "cumsum(attention_mask) - 1 over the whole row, 0 on pads")
    manifest = Manifest(
        name=job.name,
        version=folder.name,
        kind=job.kind,
        sha256=sha256_file(onnx_path),
        opset=onnx_opset(onnx_path),
        exporter_version=exporter_version(),
        precision=precision,
        inputs=spec.inputs,
        outputs=spec.outputs,
        dynamic_axes=spec.dynamic_axes,
        text=text,
        image=image,
        parity=Parity(tolerance=kind_tol, max_abs_diff=diffs),
        metrics=job.metrics,
        source=job.source,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        extra=extra,
    )
    (folder / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    try:
        load_manifest(folder, check_hash=True)
    except RegistryError as e:
        raise ExportError(f"the written manifest does not validate: {e}") from e
    log.info("%s@%s: exporter=%s parity=%s", job.name, folder.name, method, diffs)
    return onnx_path


STALE_STAGING_S = 24 * 3600  # an export staged longer ago than this was killed (SIGKILL, a crash)


def _sweep_stale_staging(models_dir: Path) -> None:
    """Remove staging folders that exports killed outright left behind; the registry never reads them (they
    are one level too deep), so they only cost disk. Recent ones may belong to an export still running."""
    cutoff = time.time() - STALE_STAGING_S
    for d in models_dir.glob(".staging-*"):
        with contextlib.suppress(OSError):
            if d.is_dir() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)


def export_model(
    job: ExportJob, models_dir: Path, precisions: Sequence[Precision] = ("fp32",), force: bool = False
) -> list[Path]:
    """Export, validate and publish ``job`` once per precision; returns the published version folders.

    fp32 is always built (the variants are derived from it or compared to it) but published only when asked.
    """
    models_dir = Path(models_dir)
    targets = {p: check_target(models_dir, job.name, variant_version(job.version, p), force) for p in precisions}
    _sweep_stale_staging(models_dir)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=models_dir))
    try:
        fp32_folder = stage / job.name / job.version
        fp32_onnx = _build_variant(job, "fp32", fp32_folder, None)
        staged = {"fp32": fp32_folder}
        for p in precisions:
            if p != "fp32":
                folder = stage / job.name / variant_version(job.version, p)
                _build_variant(job, p, folder, fp32_onnx)
                staged[p] = folder
        _publish_all(staged, {p: targets[p] for p in precisions}, force)
    except OSError as e:
        raise ExportError(f"cannot write model folder under {models_dir}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [targets[p] for p in precisions]


# --- precision variants -------------------------------------------------------------------------------------


def quantize_int8(fp32_onnx: Path, out: Path) -> str:
    """Dynamic int8 quantization of the MatMul/Gemm weights; activations stay float, so I/O is unchanged."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The dynamo exporter's value_info carries shapes from before its Gemm rewrites, which the quantizer's
    # strict shape inference rejects; it re-infers them anyway.
    model = onnx.load(str(fp32_onnx))
    del model.graph.value_info[:]
    plain = out.with_name("fp32-plain.onnx")
    onnx.save_model(model, str(plain))
    logging.disable(logging.WARNING)  # quantize_dynamic logs advice to the root logger on every call
    try:
        quantize_dynamic(
            model_input=str(plain), model_output=str(out), weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            # Shape inference cannot type the outputs of com.microsoft ops (the ragged graph's attention).
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except Exception as e:
        raise ExportError(f"int8 quantization failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    finally:
        logging.disable(logging.NOTSET)
        plain.unlink(missing_ok=True)
    check_onnx_file(out)
    return "quantize_dynamic(int8)"


def export_fp16(job: ExportJob, spec: GraphSpec, out: Path, contract: str = "append") -> str:
    """Export a half-precision copy of the module (fp16 I/O and KV cache).

    Exporting ``model.half()`` instead of converting the fp32 graph keeps dtype-dependent constants right:
    the attention mask's fill value is ``finfo(float16).min``, which a blind cast of fp32's minimum would
    turn into -inf (and NaN rows).
    """
    import copy

    half = copy.deepcopy(job.model).eval().half()
    try:
        return to_onnx(_export_module(job, half, contract), _example_args(job, torch.float16), spec, out) + "(fp16)"
    except ExportError as e:
        raise ExportError(f"fp16 export failed: {e}") from e
