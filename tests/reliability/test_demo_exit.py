"""`make demo` fails loudly: when any of its jobs does not succeed, it exits non-zero and says which."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genqueue import demo


class FinishedJobs:
    """Answers the demo's client calls with jobs already finished, ``failing`` of them failed."""

    def __init__(self, failing: int) -> None:
        self.failing = failing

    def submit_bulk(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.items = items
        return [{"id": f"job-{i}"} for i in range(len(items))]

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        i = int(job_id.split("-")[1])
        item = self.items[i]
        kind = "text" if item["model"] == "tiny-lm" else "image"
        if i < self.failing:
            return {"id": job_id, "kind": kind, "status": "failed", "input": item["input"], "metrics": {},
                    "error": {"code": "engine_error", "message": "boom"}}
        n = item["input"].get("n", 1)
        output = ({"texts": ["t"] * n, "finish_reasons": ["length"] * n} if kind == "text"
                  else {"images": [{"url": f"/v1/jobs/{job_id}/images/0", "width": 1, "height": 1, "format": "png"}]})
        return {"id": job_id, "kind": kind, "status": "succeeded", "input": item["input"], "metrics": {},
                "output": output, "review": {"status": "not_required"}}

    def image(self, job_id: str, n: int) -> tuple[bytes, str]:
        return b"png", "image/png"


def test_the_demo_exits_non_zero_when_a_job_fails(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        demo.run_jobs(FinishedJobs(failing=2), "http://x", tmp_path)  # type: ignore[arg-type]
    assert e.value.code not in (None, 0)
    assert "2 of 8 jobs did not succeed" in str(e.value.code) and "job-0 failed" in str(e.value.code)


def test_the_demo_finishes_quietly_when_every_job_succeeds(tmp_path: Path) -> None:
    demo.run_jobs(FinishedJobs(failing=0), "http://x", tmp_path)  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("*.png"))) == 3  # one saved image per image job
