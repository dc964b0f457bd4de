"""A poison input, for the poison-job test only: this folder is on PYTHONPATH of that test's worker
processes alone, so Python imports this module at their start. While GENQUEUE_TEST_POISON_MARKER is set, a
job whose prompt contains the marker kills its worker process (SIGKILL, as a crash in native inference code
would) at the moment the worker starts it; every other job runs as usual."""

from __future__ import annotations

import os

_MARKER = os.environ.get("GENQUEUE_TEST_POISON_MARKER")

if _MARKER:
    import signal
    from typing import Any

    from genqueue_worker import jobs

    _build_request = jobs.build_request

    def _poisoned_build_request(claimed: Any) -> Any:
        if _MARKER in str(claimed.input.get("prompt", "")):
            os.kill(os.getpid(), signal.SIGKILL)
        return _build_request(claimed)

    jobs.build_request = _poisoned_build_request  # type: ignore[assignment]
