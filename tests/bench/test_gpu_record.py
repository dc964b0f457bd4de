"""python -m bench.gpu_record: a GPU check's output becomes its own section of RESULTS.md, which a rewrite
by bench/report.py keeps; until then RESULTS.md says the GPU run is pending."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_record, report

TEXT = {"gpu": {"name": "Test GPU", "memory": "1 MiB", "driver": "0.0"}, "hbm_gbps": 1000, "precision": "fp16",
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 128, "vocab": 1000, "ctx": 256}, "onnxruntime": "9.9",
        "weight_mb": 1.5,
        "runs": [{"batch": 1, "tokens_per_s": 100.0, "step_ms": 10.0, "bound_step_ms": 0.1, "fraction_of_bound": 0.01,
                  "logits_mb_per_step": 0.0},
                 {"batch": 64, "tokens_per_s": 3000.0, "step_ms": 21.0, "bound_step_ms": 0.2, "fraction_of_bound": 0.007,
                  "logits_mb_per_step": 0.24}]}
IMAGES = {"image_scaling": {"small": {"images_per_s": 1000.0}, "large": {"images_per_s": 4000.0}, "ratio": 4.0},
          "image_host_ceiling": {"small": {"images_per_s": 2000.0}, "large": {"images_per_s": 5000.0}, "ratio": 2.5}}


def test_a_recorded_run_replaces_pending_and_survives_a_rewrite(tmp_path: Path) -> None:
    (tmp_path / "RESULTS.md").write_text("# Results\n\nfigures\n\n" + gpu_record.PENDING)
    r = gpu_record.build(TEXT, IMAGES, "abc1234", "a test machine", "bench/gpu_check.sh", "2026-12-04T00:00:00Z")
    gpu_record.record(r, base=tmp_path)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "pending" not in md and md.count(gpu_record.MARK_BEGIN) == 1
    assert "| 64 | 3000.0 | 21.0 | 0.2 | 0.007 | 0.24 |" in md
    assert "at most 3000.0 tokens/s (batch 64)" in md and "0.8 of that host bound" in md
    assert json.loads((tmp_path / "results" / "gpu.json").read_text())["commit"] == "abc1234"
    # report.py's rewrite keeps the recorded section and adds no pending line beside it.
    tail = report._tail("# New figures\n\n" + md)
    assert gpu_record.section(r).strip() in tail and "pending" not in tail


def test_without_a_record_the_rewrite_says_pending() -> None:
    assert "## GPU (CUDA) run: pending" in report._tail("# Results\n\nfigures\n")


def test_files_without_figures_are_refused_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.json").write_text(json.dumps({**TEXT, "runs": []}))
    (tmp_path / "i.json").write_text(json.dumps(IMAGES))
    with pytest.raises(SystemExit) as e:
        gpu_record.main(["--text", str(tmp_path / "t.json"), "--images", str(tmp_path / "i.json"), "--commit", "x",
                         "--machine", "m", "--command", "c"])
    assert e.value.code == 2
    assert "no text runs" in capsys.readouterr().err
