"""ONNX Runtime's own profile of the text engine's calls: per node, which provider ran it and how long its
host side took, and how much of each ``run`` lies outside the nodes. Used by ``python -m bench.gpu_engine
--ort-profile`` to tell a step bound by kernel launches (many short nodes) from one bound by the device.

On CUDA, a node's time in this profile is what its Compute call took on the host (launching its kernels,
and waiting where it synchronizes), not the kernels' time on the device.
"""

from __future__ import annotations

import collections
import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def profiled_sessions(prefix: str) -> Iterator[None]:
    """Every ONNX Runtime session created inside the block writes a profile (file name starting with
    ``prefix``): the worker's session code builds its own SessionOptions, so the class is swapped for the
    block's duration rather than the product growing a profiling switch."""
    import onnxruntime as ort

    real = ort.SessionOptions

    def options() -> Any:
        so = real()
        so.enable_profiling = True
        so.profile_file_prefix = prefix
        return so

    ort.SessionOptions = options  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        ort.SessionOptions = real  # type: ignore[misc]


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """The profile's ``model_run`` events and node events, totalled per run, per provider and per op type."""
    events = json.loads(path.read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    by_provider: collections.Counter[str] = collections.Counter()
    by_op: collections.Counter[str] = collections.Counter()
    count_op: collections.Counter[str] = collections.Counter()
    for e in nodes:
        args = e.get("args", {})
        by_provider[str(args.get("provider", "?"))] += int(e.get("dur", 0))
        by_op[str(args.get("op_name", "?"))] += int(e.get("dur", 0))
        count_op[str(args.get("op_name", "?"))] += 1
    n = max(1, len(runs))
    run_us = sum(int(e.get("dur", 0)) for e in runs)
    node_us = sum(by_provider.values())
    return {
        "runs": len(runs),
        "run_ms_mean": round(run_us / n / 1000, 3),
        "nodes_per_run": round(len(nodes) / n, 1),
        "node_ms_per_run": round(node_us / n / 1000, 3),
        "outside_nodes_ms_per_run": round((run_us - node_us) / n / 1000, 3),
        "node_ms_per_run_by_provider": {k: round(v / n / 1000, 3) for k, v in by_provider.most_common()},
        "top_ops": [{"op": op, "ms_per_run": round(us / n / 1000, 3), "nodes_per_run": round(count_op[op] / n, 1)}
                    for op, us in by_op.most_common(top)],
    }


def profile_engine_run(run: Any) -> dict[str, Any]:
    """Calls ``run()`` (which creates an engine and runs it; it returns the engine) with profiling on, and
    summarizes the profile of the engine's text session. Prefill and decode calls are both in it."""
    with tempfile.TemporaryDirectory() as tmp:
        with profiled_sessions(str(Path(tmp) / "ort")):
            engine = run()
        runner = getattr(engine, "runner", None)
        if runner is None:
            raise ValueError("the ONNX Runtime profile needs an engine of one lane (lanes=1)")
        path = Path(runner.session.end_profiling())
        return summarize(path)
