"""A slower text model, for fault tests that must interrupt work in the middle: this folder is on PYTHONPATH of
those tests' worker processes alone, so Python imports this module at their start. While
GENQUEUE_TEST_DECODE_DELAY_S is set, every decode step of the ONNX Runtime text runner takes that much longer,
as a larger model's would; the tokens do not change. The quick test models otherwise finish a whole batch
before a signal or a network cut can land."""

from __future__ import annotations

import os

_DELAY = float(os.environ.get("GENQUEUE_TEST_DECODE_DELAY_S") or 0)

if _DELAY > 0:
    import time
    from typing import Any

    try:
        from genqueue_worker.engine.ort_text import OrtTextRunner
    except ImportError:  # a process without the worker's packages (none in these tests)
        OrtTextRunner = None  # type: ignore[assignment,misc]

    if OrtTextRunner is not None:
        _decode = OrtTextRunner.decode

        def _slow_decode(self: Any, cache: Any, input_ids: Any) -> Any:
            time.sleep(_DELAY)
            return _decode(self, cache, input_ids)

        OrtTextRunner.decode = _slow_decode  # type: ignore[method-assign]
