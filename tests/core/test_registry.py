"""The registry reader validates manifests and resolves name / name@version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genqueue.registry import Registry, RegistryError, UnknownModel, load_manifest, sha256_file


def _write(root: Path, folder: str, version: str, **over: object) -> Path:
    d = root / folder / version
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"not really onnx")
    (d / "tokenizer.json").write_text("{}")
    m = {
        "name": folder, "version": version, "kind": "text", "sha256": sha256_file(d / "model.onnx"), "opset": 18,
        "exporter_version": "0.1.0", "inputs": [], "outputs": [], "dynamic_axes": {},
        "text": {"vocab_size": 10, "n_layer": 1, "n_head": 1, "head_dim": 4, "n_embd": 4, "context_length": 8,
                 "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0},
        "parity": {"tolerance": 1e-3, "max_abs_diff": {"prefill": 1e-5}},
    }
    m.update(over)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_resolves_newest_and_exact_versions(tmp_path: Path) -> None:
    for v in ("1", "2", "10"):
        _write(tmp_path, "lm", v)
    reg = Registry(tmp_path)
    assert reg.versions("lm") == ["1", "2", "10"]
    assert reg.resolve("lm").version == "10"
    assert reg.resolve("lm@2").version == "2"
    with pytest.raises(UnknownModel):
        reg.resolve("lm@3")
    with pytest.raises(UnknownModel):
        reg.resolve("other")


def test_variants_only_by_explicit_version(tmp_path: Path) -> None:
    _write(tmp_path, "lm", "1")
    _write(tmp_path, "lm", "1-int8", precision="int8")
    reg = Registry(tmp_path)
    assert reg.resolve("lm").version == "1"
    assert reg.resolve("lm@1-int8").manifest.precision == "int8"


def test_bad_manifests_are_skipped_with_reasons(tmp_path: Path) -> None:
    _write(tmp_path, "good", "1")
    _write(tmp_path, "wrongname", "1", name="different")
    _write(tmp_path, "nokind", "1", kind="audio")
    d = _write(tmp_path, "notok", "1")
    (d / "tokenizer.json").unlink()
    reg = Registry(tmp_path)
    assert reg.names() == ["good"]
    assert len(reg.errors) == 3
    assert any("tokenizer.json is missing" in e for e in reg.errors)


def test_hash_check(tmp_path: Path) -> None:
    d = _write(tmp_path, "lm", "1")
    load_manifest(d, check_hash=True)
    (d / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        load_manifest(d, check_hash=True)
