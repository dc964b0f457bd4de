"""The bench harness end to end at tiny sizes: submit (a real API on real Redis and SQL, no worker) and
continuous vs static (the engine in process), then the JSON, RESULTS.md and plots it writes."""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `bench`

from bench import run, system  # noqa: E402
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
    for key in ("submit.bulk_vs_delay", "submit.bulk_jobs_per_s", "submit.delay_jobs_per_s", "submit.single_vs_delay",
                "submit.single_jobs_per_s",
                "engine.text.continuous_vs_static", "engine.text.short_latency_ratio"):
        assert isinstance(m[key], float) and m[key] > 0, key
    sub = latest["scenarios"]["submit"]
    assert sub["jobs"] == SMOKE.submit_jobs
    assert len(sub["rounds"]) == SMOKE.pairs and sub["clients"] == 32
    # Nothing consumed them; genqueue's messages carry chunks of ids (at most a text batch, 32, each).
    assert sub["messages_in_redis"]["genqueue"] >= -(-SMOKE.submit_jobs // 32)
    assert sub["messages_in_redis"]["celery_delay"] >= SMOKE.pairs * SMOKE.submit_jobs
    cont = latest["scenarios"]["continuous"]
    assert cont["static"]["tokens"] == cont["continuous"]["tokens"]  # the same work under both policies
    assert latest["machine"]["cores"] and latest["mode"] == "smoke"
    assert len(list(out_dir.glob("*.json"))) == 2  # <timestamp>.json and latest.json

    md = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert "submit.bulk_vs_delay" in md and "Continuous vs static" in md and "GPU (CUDA) run: pending" in md
    assert "## System" not in md  # RESULTS.md shows only what this run measured
    text = json.loads((models_dir / "tiny-lm" / "1" / "manifest.json").read_text())["text"]
    # The models described from their manifests (the quick test models are smaller than the demo ones).
    assert f"tiny-lm@1`: GPT, {text['n_layer']} layers, d{text['n_embd']}" in md
    assert (tmp_path / "bench" / "plots" / "submit.png").stat().st_size > 0
    assert (tmp_path / "bench" / "plots" / "continuous.png").stat().st_size > 0


@pytest.mark.timeout(300)
def test_system_rounds_against_both_naives(models_dir: Path, redis_url_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The system scenario's rounds: engine alone, genqueue, the PyTorch and the ONNX Runtime naive deployments
    (Celery's defaults) and the empty-task worker, on the same jobs; the ratios come from the same rounds."""
    cfg = replace(SMOKE, pairs=2)
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, redis_url=redis_url_factory(),
                        database_url=f"sqlite:///{tmp_path / 'bench.db'}")
    res = run.run(cfg, settings, {"system", "naive"}, tmp_path / "results", log=lambda _: None, markdown=False)
    m = res["metrics"]
    sysres = res["scenarios"]["system"]
    assert len(sysres["rounds"]) == 2
    for kind in ("text", "image"):
        for r in ("efficiency", "vs_naive", "ceiling_vs_naive", "vs_naive_ort", "ceiling_vs_naive_ort"):
            per_round = system.ratios(sysres)[f"system.{kind}.{r}"]
            assert len(per_round) == 2 and all(v > 0 for v in per_round), (kind, r)
            assert m[f"system.{kind}.{r}"] == pytest.approx(statistics.median(per_round), abs=0.01)
        for rnd in sysres["rounds"]:  # every deployment finished every job of the round
            assert {rnd[kind][k]["jobs"] for k in ("system", "naive_torch", "naive_ort")} == {8}
    assert m["system.image.vs_noop_celery"] > 0 and m["noop_celery.tasks_per_s"] > 0
    assert m["system.text.tokens_match_engine_limit"] is True
    # Same work: greedy outputs of both naive loops equal the engine's on every bench prompt.
    assert m["naive.greedy_identical_fraction"] == 1.0 and m["naive_ort.greedy_identical_fraction"] == 1.0
    for name in ("torch", "ort"):  # Celery's default pool and concurrency: prefork, one process per core
        dep = sysres["naive_deployments"][name]
        assert dep["pool"].startswith("prefork") and dep["concurrency"] == os.cpu_count()
    assert m["worker.rss_mb"] > 0 and m["worker.torch_loaded"] is False
