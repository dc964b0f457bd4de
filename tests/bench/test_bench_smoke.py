"""The bench harness end to end at tiny sizes: submit (a real API on real Redis and SQL, no worker) and
continuous vs static (the engine in process), then the JSON, RESULTS.md and plots it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `bench`

from bench import run  # noqa: E402
from bench.config import SMOKE  # noqa: E402
from genqueue.settings import Settings  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_submit_and_continuous_write_results(models_dir: Path, redis_url_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, redis_url=redis_url_factory(),
                        database_url=f"sqlite:///{tmp_path / 'bench.db'}")
    out_dir = tmp_path / "bench" / "results"
    res = run.run(SMOKE, settings, {"submit", "continuous"}, out_dir, log=lambda _: None)

    latest = json.loads((out_dir / "latest.json").read_text())
    assert latest["metrics"] == json.loads(json.dumps(res["metrics"]))
    m = latest["metrics"]
    for key in ("submit.bulk_vs_delay", "submit.bulk_jobs_per_s", "submit.delay_jobs_per_s",
                "engine.text.continuous_vs_static", "engine.text.short_latency_ratio"):
        assert isinstance(m[key], float) and m[key] > 0, key
    sub = latest["scenarios"]["submit"]
    assert sub["jobs"] == SMOKE.submit_jobs
    # Nothing consumed them; genqueue's messages carry chunks of ids (at most a text batch, 32, each).
    assert sub["messages_in_redis"]["genqueue"] >= -(-SMOKE.submit_jobs // 32)
    assert sub["messages_in_redis"]["celery_delay"] >= SMOKE.submit_jobs
    cont = latest["scenarios"]["continuous"]
    assert cont["static"]["tokens"] == cont["continuous"]["tokens"]  # the same work under both policies
    assert latest["machine"]["cores"] and latest["mode"] == "smoke"
    assert len(list(out_dir.glob("*.json"))) == 2  # <timestamp>.json and latest.json

    md = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert "submit.bulk_vs_delay" in md and "Continuous vs static" in md and "GPU (CUDA) run: pending" in md
    assert (tmp_path / "bench" / "plots" / "submit.png").stat().st_size > 0
    assert (tmp_path / "bench" / "plots" / "continuous.png").stat().st_size > 0
