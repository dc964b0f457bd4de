"""Engine test fixtures: a byte-level tokenizer and real ONNX models.

Real models come from the exporter (``build_builtin(models_dir, quick=True)``). Where the exporter cannot
be imported (no torch) the hand-made ONNX models of ``engine_testmodels`` stand in (same contract, random
weights; needs the ``onnx`` package); with neither, the real-model tests are skipped with the reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # engine_testmodels, without a package __init__

from engine_testmodels import build_byte_tokenizer, build_image_model, build_text_model  # noqa: E402

from genqueue.registry import Registry  # noqa: E402


@pytest.fixture(scope="session")
def byte_tokenizer() -> Any:
    return build_byte_tokenizer()


def _exporter_importable() -> bool:
    try:
        import genqueue_exporter.builtin  # noqa: F401  (imports torch)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"text": tiny-lm entry, "image": dcgan-digits entry, "source", "root"}, built once per session.

    With the exporter (torch) importable, these are the shared quick built-in models of ``tests/conftest.py``
    (``models_dir``, which also honours GENQUEUE_TEST_MODELS_DIR); otherwise the hand-made stand-ins.
    """
    if os.environ.get("GENQUEUE_TEST_MODELS_DIR") or _exporter_importable():
        root, source = Path(request.getfixturevalue("models_dir")), "exporter"
    else:
        try:
            import onnx  # noqa: F401
        except ImportError:
            pytest.skip("real-model tests need genqueue_exporter (torch) or the onnx package; neither imports")
        root = tmp_path_factory.mktemp("models")
        build_text_model(root / "tiny-lm" / "1", n_layer=2, n_head=2, head_dim=16, ctx=128)
        build_image_model(root / "dcgan-digits" / "1")
        source = "handmade"
    reg = Registry(root)
    assert not reg.errors, reg.errors
    return {"text": reg.resolve("tiny-lm"), "image": reg.resolve("dcgan-digits"), "source": source, "root": root}
