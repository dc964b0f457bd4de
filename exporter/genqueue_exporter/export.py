"""The export of one model: each precision variant staged, measured and described, then all published at once.

The flow: export each precision variant into a staging folder under ``<models_dir>/.staging-*`` (hidden from
the registry, whose glob is ``*/*/manifest.json``), measure ORT-vs-torch parity there, write the manifest,
re-read it with ``genqueue.registry.load_manifest(check_hash=True)``, and only when every variant passed,
rename each ``<name>/<version>`` folder into place. A failure leaves nothing behind.

This module owns the folders and the manifest; the graphs come from ``onnx_export.py`` (torch -> ONNX) and
``quantize.py`` (int8), the figures from ``parity.py``.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
from torch import nn

from genqueue.registry import (
    ImageSpec,
    Manifest,
    ModelKind,
    Parity,
    RegistryError,
    TextSpec,
    load_manifest,
    sha256_file,
)
from genqueue_exporter.errors import ExportError
from genqueue_exporter.onnx_export import GraphSpec, export_fp16, export_graph, graph_spec, onnx_opset
from genqueue_exporter.parity import TOLERANCE, check_parity
from genqueue_exporter.quantize import quantize_int8

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
KVContract = Literal["ragged", "append", "concat"]
# The same rules as genqueue.registry's name check, applied before hours of training rather than after.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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


def variant_version(version: str, precision: str) -> str:
    """``1`` for fp32, ``1-int8`` / ``1-fp16`` for the variants, so each is its own servable version."""
    return version if precision == "fp32" else f"{version}-{precision}"


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


# --- one variant ----------------------------------------------------------------------------------------------


def _io_dtype(precision: Precision) -> Literal["float32", "float16"]:
    """The dtype of a variant's float inputs, outputs and KV cache (int8 quantizes weights only)."""
    return "float16" if precision == "fp16" else "float32"


def _build_variant(job: ExportJob, precision: Precision, folder: Path, fp32_onnx: Path | None) -> Path:
    """Write model.onnx (+ tokenizer.json) and manifest.json for one precision into ``folder``."""
    folder.mkdir(parents=True)
    onnx_path = folder / "model.onnx"
    contract = variant_contract(job, precision)
    spec = graph_spec(job.kind, job.model.config, _io_dtype(precision), contract)
    if precision == "int8":
        assert fp32_onnx is not None
        method = quantize_int8(fp32_onnx, onnx_path)
    elif precision == "fp16":
        method = export_fp16(job.kind, job.model, spec, onnx_path, contract)
    else:
        method = export_graph(job.kind, job.model, contract, spec, onnx_path)
    tol = TOLERANCE[job.kind.value][precision]
    diffs = check_parity(job.kind, job.model, onnx_path, spec, contract, tol)
    if job.kind is ModelKind.text:
        if job.tokenizer_json is None:
            raise ExportError(f"{job.name}: a text model needs a tokenizer")
        (folder / "tokenizer.json").write_text(job.tokenizer_json, encoding="utf-8")
    manifest = _manifest(job, folder, precision, spec, contract, method, Parity(tolerance=tol, max_abs_diff=diffs))
    (folder / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    try:
        load_manifest(folder, check_hash=True)
    except RegistryError as e:
        raise ExportError(f"the written manifest does not validate: {e}") from e
    log.info("%s@%s: exporter=%s parity=%s", job.name, folder.name, method, diffs)
    return onnx_path


def _manifest(job: ExportJob, folder: Path, precision: Precision, spec: GraphSpec, contract: KVContract,
              method: str, parity: Parity) -> Manifest:
    """The manifest of the variant in ``folder``, whose model.onnx is written and measured."""
    import onnxruntime

    onnx_path = folder / "model.onnx"
    cfg: Any = job.model.config
    text = image = None
    if job.kind is ModelKind.text:
        text = TextSpec(
            vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=cfg.head_dim,
            n_embd=cfg.n_embd, context_length=cfg.block_size, bos_token_id=job.bos_token_id,
            eos_token_id=job.eos_token_id, pad_token_id=job.pad_token_id, kv_dtype=_io_dtype(precision),
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
    return Manifest(
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
        parity=parity,
        metrics=job.metrics,
        source=job.source,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        extra=extra,
    )


def exporter_version() -> str:
    import genqueue

    return getattr(genqueue, "__version__", None) or importlib.metadata.version("genqueue")


# --- staging and publication ------------------------------------------------------------------------------------


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


STALE_STAGING_S = 24 * 3600  # an export staged longer ago than this was killed (SIGKILL, a crash)


def _sweep_stale_staging(models_dir: Path) -> None:
    """Remove staging folders that exports killed outright left behind; the registry never reads them (they
    are one level too deep), so they only cost disk. Recent ones may belong to an export still running."""
    cutoff = time.time() - STALE_STAGING_S
    for d in models_dir.glob(".staging-*"):
        with contextlib.suppress(OSError):
            if d.is_dir() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)
