"""Model registry: reads and validates the model folders that the exporter writes.

A model folder is ``<models_dir>/<name>/<version>/`` and holds ``model.onnx``, ``manifest.json`` and, for
text models, ``tokenizer.json``. Workers serve exactly the models whose manifests they find here; the API
uses the same reader to validate ``model`` / ``model@version`` and prompt lengths at submit time.

ONNX contract (what the worker's runners rely on):

* text, by the manifest's ``text.kv_contract``:

  - "ragged" (the exporter's default, exporter/genqueue_exporter/gpt_ragged.py): inputs ``input_ids`` int64 [B,S],
    ``position_ids`` int64 [B,S], ``seqlens_k`` int32 [B], ``total_sequence_length`` int32 [],
    ``past_key_values.<i>.key`` / ``.value`` [B,H,M,D]; outputs ``logits`` [B,1,V] (each row's last
    real token) and ``present.<i>.*`` [B,H,max(M,total),D]. Rows are right-padded and carry their own
    lengths.
  - "append" / "concat": inputs ``input_ids`` int64 [B,S], ``attention_mask`` int64 [B,P+S],
    ``position_ids`` int64 [B,S], ``past_key_values.<i>.key`` / ``.value`` [B,H,P,D]; outputs ``logits``
    [B,1,V] (the last position, every row's last token under left padding) and either
    ``new_key_values.<i>.*`` [B,H,S,D] (only the new tokens) or ``present.<i>.*`` [B,H,P+S,D] =
    concat(past, new) (manifests written before the field existed are "concat").

  One graph serves prefill (P=0) and decode. Graphs exported before the logits were the last token's
  return [B,S,V]; the runners read the last token's row from either.
* image: inputs ``z`` float32 [B,latent] and, for conditional models, ``class_label`` int64 [B];
  output ``images`` float32 [B,C,H,W] in [-1, 1].

This module must stay importable without torch or onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ModelKind(StrEnum):
    text = "text"
    image = "image"


class TensorSpec(BaseModel):
    name: str
    dtype: str  # numpy dtype name, e.g. "int64", "float32", "float16"
    shape: list[int | str]  # ints are fixed sizes, strings name dynamic axes


class TextSpec(BaseModel):
    vocab_size: int = Field(gt=0)
    n_layer: int = Field(gt=0)
    n_head: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    context_length: int = Field(gt=1)
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    kv_dtype: Literal["float32", "float16"] = "float32"
    # True when the model was trained with BOS in front of every document: the engine prepends it.
    prepend_bos: bool = False
    # "ragged" (GroupQueryAttention; rows of their own lengths, cache updated in place by the graph),
    # "append" (the graph returns only the new tokens' keys/values; the worker writes them into its cache)
    # or "concat" (the graph returns the whole cache, a copy per step; portable, and older exports).
    kv_contract: Literal["ragged", "append", "concat"] = "concat"
    tokenizer_file: str = "tokenizer.json"


class ImageSpec(BaseModel):
    latent_size: int = Field(gt=0)
    num_classes: int = Field(ge=0)  # 0 means unconditional: no class_label input
    channels: int = Field(gt=0)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    output_range: tuple[float, float] = (-1.0, 1.0)


class Parity(BaseModel):
    """Max |ORT - torch| per checked case, measured at export time."""

    tolerance: float
    max_abs_diff: dict[str, float]  # case name -> worst difference over all outputs
    provider: str = "CPUExecutionProvider"


class Manifest(BaseModel):
    format: int = MANIFEST_FORMAT
    name: str
    version: str
    kind: ModelKind
    onnx_file: str = "model.onnx"
    sha256: str
    opset: int
    exporter_version: str
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_axes: dict[str, dict[str, str]]  # tensor name -> {axis index: axis name}
    text: TextSpec | None = None
    image: ImageSpec | None = None
    parity: Parity
    metrics: dict[str, float] = Field(default_factory=dict)  # e.g. val_loss, class_accuracy
    source: str = "builtin"  # builtin | hf:<dir> | state_dict:<file>
    created_at: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)


class RegistryError(Exception):
    """A model folder is missing, unreadable or inconsistent."""


class UnknownModel(RegistryError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"unknown model {ref!r}")
        self.ref = ref


@dataclass(frozen=True)
class ModelEntry:
    manifest: Manifest
    path: Path  # the version folder

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def ref(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.onnx_file

    @property
    def tokenizer_path(self) -> Path | None:
        if self.manifest.text is None:
            return None
        return self.path / self.manifest.text.tokenizer_file


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version_key(v: str) -> tuple[int, ...] | tuple[float, str]:
    # Numeric versions sort numerically ("10" > "9"); anything else sorts after them by text.
    parts = v.split(".")
    if all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return (float("inf"), v)


def validate_manifest(manifest: Manifest, folder: Path, check_hash: bool = False) -> None:
    """Raise RegistryError if the manifest does not describe a servable model in ``folder``."""
    if not _NAME_RE.match(manifest.name):
        raise RegistryError(f"{folder}: invalid model name {manifest.name!r}")
    if manifest.kind is ModelKind.text and manifest.text is None:
        raise RegistryError(f"{folder}: text model manifest lacks the 'text' section")
    if manifest.kind is ModelKind.image and manifest.image is None:
        raise RegistryError(f"{folder}: image model manifest lacks the 'image' section")
    files = [manifest.onnx_file, *([manifest.text.tokenizer_file] if manifest.text is not None else [])]
    for name in files:  # the folder is the model: a manifest may not point at files elsewhere
        if not name or Path(name).name != name or name in (".", ".."):
            raise RegistryError(f"{folder}: {name!r} must be a file name inside the model folder")
    if manifest.text is not None:
        t = manifest.text
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):  # the worker feeds these ids to the graph
            if not 0 <= getattr(t, key) < t.vocab_size:
                raise RegistryError(f"{folder}: {key}={getattr(t, key)} is outside the vocabulary (0..{t.vocab_size - 1})")
    onnx_path = folder / manifest.onnx_file
    if not onnx_path.is_file():
        raise RegistryError(f"{folder}: {manifest.onnx_file} is missing")
    if manifest.text is not None and not (folder / manifest.text.tokenizer_file).is_file():
        raise RegistryError(f"{folder}: {manifest.text.tokenizer_file} is missing")
    if check_hash:
        actual = sha256_file(onnx_path)
        if actual != manifest.sha256:
            raise RegistryError(
                f"{folder}: {manifest.onnx_file} sha256 {actual[:12]}… does not match manifest {manifest.sha256[:12]}…"
            )


def load_manifest(folder: Path, check_hash: bool = False) -> Manifest:
    path = folder / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise RegistryError(f"{folder}: {MANIFEST_FILE} is missing") from e
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{path}: unreadable manifest ({e})") from e
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RegistryError(f"{path}: invalid manifest at {loc}: {first['msg']}") from e
    if manifest.version != folder.name or manifest.name != folder.parent.name:
        raise RegistryError(
            f"{path}: manifest says {manifest.name}@{manifest.version} but the folder is "
            f"{folder.parent.name}/{folder.name}"
        )
    validate_manifest(manifest, folder, check_hash=check_hash)
    return manifest


class Registry:
    """The models found under one folder. Cheap to build; call ``refresh`` to re-scan."""

    def __init__(self, models_dir: Path, check_hash: bool = False) -> None:
        self.models_dir = Path(models_dir)
        self.check_hash = check_hash
        self.errors: list[str] = []  # folders skipped, with the reason, for logs and /v1/models
        self._entries: dict[str, dict[str, ModelEntry]] = {}
        self._newest: dict[str, ModelEntry] = {}  # what a bare name resolves to
        self._scanned_at = 0.0
        self.refresh()

    def refresh_if_stale(self, max_age_s: float = 5.0) -> None:
        """Re-scan at most every ``max_age_s``, so newly exported versions appear without a restart."""
        if time.monotonic() - self._scanned_at > max_age_s:
            self.refresh()

    def refresh(self) -> None:
        entries: dict[str, dict[str, ModelEntry]] = {}
        errors: list[str] = []
        if self.models_dir.is_dir():
            for manifest_path in sorted(self.models_dir.glob(f"*/*/{MANIFEST_FILE}")):
                folder = manifest_path.parent
                try:
                    m = load_manifest(folder, check_hash=self.check_hash)
                except RegistryError as e:
                    errors.append(str(e))
                    continue
                entries.setdefault(m.name, {})[m.version] = ModelEntry(m, folder)
        # A bare name means the newest full-precision version: quantized or fp16 variants (e.g. "1-int8")
        # trade accuracy for speed, so they are served only when asked for by name@version. Decided once per
        # scan, not per submitted job.
        newest: dict[str, ModelEntry] = {}
        for name, versions in entries.items():
            ordered = sorted(versions, key=_version_key)
            full = [v for v in ordered if versions[v].manifest.precision == "fp32"]
            newest[name] = versions[(full or ordered)[-1]]
        self._entries, self._newest = entries, newest
        self.errors = errors
        self._scanned_at = time.monotonic()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def versions(self, name: str) -> list[str]:
        return sorted(self._entries.get(name, {}), key=_version_key)

    def entries(self) -> list[ModelEntry]:
        return [self._entries[n][v] for n in self.names() for v in self.versions(n)]

    def resolve(self, ref: str) -> ModelEntry:
        """``name`` resolves to the newest version, ``name@version`` exactly."""
        name, _, version = ref.partition("@")
        if not version:
            newest = self._newest.get(name)
            if newest is None:
                raise UnknownModel(ref)
            return newest
        entry = self._entries.get(name, {}).get(version)
        if entry is None:
            raise UnknownModel(ref)
        return entry

    def __contains__(self, ref: object) -> bool:
        if not isinstance(ref, str):
            return False
        try:
            self.resolve(ref)
        except UnknownModel:
            return False
        return True
