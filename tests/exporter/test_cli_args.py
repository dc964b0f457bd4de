"""The exporter's command line: argument handling that needs no model."""

from __future__ import annotations


def test_from_hf_alias_keeps_other_arguments_named_hf() -> None:
    from genqueue_exporter.cli import _normalize

    assert _normalize(["--from-hf", "ckpt", "--name", "hf"]) == ["hf", "ckpt", "--name", "hf"]
    assert _normalize(["hf", "--from-hf", "ckpt", "--name", "x"]) == ["hf", "ckpt", "--name", "x"]
    assert _normalize(["builtin", "--quick"]) == ["builtin", "--quick"]
