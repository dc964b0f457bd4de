"""bench/ort_profile.py: sessions created inside the block write ONNX Runtime's profile, and the summary
counts its runs and nodes by provider and op type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from bench.ort_profile import profiled_sessions, summarize


def _model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                              "two", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_session_made_inside_the_block_is_profiled_and_summarized(tmp_path: Path) -> None:
    with profiled_sessions(str(tmp_path / "p")):
        sess = ort.InferenceSession(_model(), ort.SessionOptions(), providers=["CPUExecutionProvider"])
    assert ort.SessionOptions().enable_profiling is False  # the class is back once the block ends
    for _ in range(3):
        out = sess.run(None, {"x": np.array([[1, -2, 3], [-4, 5, -6]], np.float32)})[0]
    assert out.tolist() == [[-1, 0, -3], [0, -5, 0]]
    s = summarize(Path(sess.end_profiling()))
    assert s["runs"] == 3 and s["nodes_per_run"] == 2.0
    assert list(s["node_ms_per_run_by_provider"]) == ["CPUExecutionProvider"]
    assert {o["op"] for o in s["top_ops"]} == {"Relu", "Neg"}
    assert s["run_ms_mean"] >= s["node_ms_per_run"] >= 0
