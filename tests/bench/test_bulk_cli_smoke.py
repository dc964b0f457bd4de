"""`python -m bench.bulk_cli` at a tiny size: alternating raw/CLI pairs on a real stack (API, one worker,
real Redis and SQL), the medians it records, and the JSON and RESULTS.md section it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `bench`

from bench import bulk_cli  # noqa: E402
from genqueue.settings import Settings  # noqa: E402


def _phase(jobs_per_s: float, fill: float) -> dict[str, object]:
    return {"jobs_per_s": jobs_per_s, "batch_fill": fill, "mean_batch": fill * 64, "summary": f"s{jobs_per_s}",
            "total_s": 1.0, "progress_bar_sample": ""}


def test_the_figures_are_medians_of_the_pairs() -> None:
    pairs = [{"raw": _phase(100, 0.70), "cli": _phase(90, 0.81)},
             {"raw": _phase(200, 0.75), "cli": _phase(100, 0.79)},
             {"raw": _phase(100, 0.90), "cli": _phase(120, 0.95)}]
    r = bulk_cli.summarize(10, 64, pairs)
    assert r["jobs_per_s_ratios"] == [0.9, 0.5, 1.2] and r["jobs_per_s_ratio"] == 0.9
    assert r["batch_fills"] == [0.81, 0.79, 0.95] and r["batch_fill"] == 0.81
    assert r["raw_batch_fills"] == [0.7, 0.75, 0.9] and r["raw_batch_fill"] == 0.75
    assert (r["raw_jobs_per_s"], r["cli_jobs_per_s"], r["pairs_run"]) == (100, 100, 3)
    assert r["cli_summary"] == "s100"  # the middle pair's


@pytest.mark.timeout(300)
def test_alternating_pairs_end_to_end(models_dir: Path, redis_url_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, redis_url=redis_url_factory(),
                        database_url=f"sqlite:///{tmp_path / 'bench.db'}")
    r = bulk_cli.run(40, 2, settings, timeout_s=120)
    assert r["pairs_run"] == 2 and len(r["pairs"]) == 2 and len(r["jobs_per_s_ratios"]) == 2
    for p in r["pairs"]:
        # Every CLI phase submitted its own 40 jobs (none a replay of an earlier phase) and wrote their results.
        assert p["cli"]["summary"].startswith("40 lines: 0 finished before, 40 submitted")
        assert p["cli"]["results_lines"] == 40
        assert p["raw"]["jobs_per_s"] > 0 and 0 < p["cli"]["batch_fill"] <= 1 and 0 < p["raw"]["batch_fill"] <= 1
    r.update(machine={"cpu": "test cpu", "cores": 2}, recorded_at="2026-01-01T00:00:00+00:00",
             command="python -m bench.bulk_cli --jobs 40 --pairs 2", note="")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "RESULTS.md").write_text(f"# Results\n\n{bulk_cli.MARK_BEGIN}\nold\n{bulk_cli.MARK_END}\n")
    bulk_cli.record(r, tmp_path / "bench")
    assert json.loads((tmp_path / "bench" / "results" / "bulk_cli.json").read_text())["pairs_run"] == 2
    md = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert md.startswith("# Results") and "\nold\n" not in md and md.count(bulk_cli.MARK_BEGIN) == 1
    assert f"| **{r['jobs_per_s_ratio']}** |" in md and "| 2 |" in md
