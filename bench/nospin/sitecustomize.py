"""Experiment hook for ``python -m bench.threadcpu --no-spin``, never loaded otherwise: with this folder on
PYTHONPATH and BENCH_NO_SPIN=1, a ``genqueue worker`` process creates its ORT sessions with
``allow_spinning=False`` (and BENCH_INTRA threads when set), without any change to the worker's code."""

import dataclasses
import os
import sys

if os.environ.get("BENCH_NO_SPIN") and "worker" in sys.argv:
    from genqueue_worker.engine import ort_session

    _create = ort_session.create_session
    _threads = int(os.environ.get("BENCH_INTRA", "0"))

    def create_session(model_path, cfg, what):  # type: ignore[no-untyped-def]
        cfg = dataclasses.replace(cfg, allow_spinning=False, intra_op_threads=_threads or cfg.intra_op_threads)
        return _create(model_path, cfg, what)

    ort_session.create_session = create_session
