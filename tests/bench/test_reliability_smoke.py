"""`python -m bench.reliability`'s rendering, from a hand-made tally and JUnit file (the faults are not rerun):
the rows it adds up, the verdict, the section it writes into RESULTS.md and the rewrite that keeps it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `bench`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the tally writer

from reliability_tally import ENV, fault_name, record  # noqa: E402

from bench import reliability, report  # noqa: E402

KILL = "tests/reliability/test_fault_worker.py::test_sigkill_mid_batch_then_restart"
POISON = "tests/reliability/test_fault_worker.py::test_a_poison_job_fails_alone_through_real_crashes"
HEART = "tests/pipeline/test_crash.py::test_a_dead_worker_is_noticed_from_its_heartbeat_and_its_jobs_rerun_within_30_s"
JUNIT = f"""<testsuites><testsuite>
<testcase classname="tests.reliability.test_fault_worker" name="test_sigkill_mid_batch_then_restart[sqlite]"/>
<testcase classname="tests.reliability.test_fault_worker" name="test_sigkill_mid_batch_then_restart[postgres]">
<failure message="lost"/></testcase>
<testcase classname="tests.reliability.test_fault_worker" name="test_a_poison_job_fails_alone_through_real_crashes[sqlite]"/>
<testcase classname="tests.pipeline.test_crash" name="{HEART.split('::')[1]}[sqlite]"/>
<testcase classname="tests.reliability.test_fuzz" name="test_x[sqlite]"><skipped/></testcase>
</testsuite></testsuites>"""


def _fault(test: str, db: str, submitted: int, final: int, dup: int = 0, recover: float | None = None) -> dict:
    return {"kind": "fault", "database": db, "test": f"{test}[{db}]", "fault": fault_name(f"{test}[{db}]"),
            "submitted": submitted, "final": final, "lost": submitted - final, "duplicated": dup,
            "recover_s": recover, "by_status": {}}


def _tally() -> list[dict]:
    return [
        _fault(KILL, "sqlite", 8, 8, recover=4.2),
        _fault(KILL, "postgres", 8, 7, dup=1, recover=5.0),
        _fault(POISON, "sqlite", 1, 1),
        _fault(POISON, "sqlite", 10, 10),
        {"kind": "recovery", "database": "sqlite", "test": f"{HEART}[sqlite]", "fault": "worker SIGKILL, default",
         "submitted": 64, "final": 64, "lost": 0, "duplicated": 0, "recover_s": 11.3, "interrupted": 4},
        {"kind": "fuzz", "database": "sqlite", "test": "t", "cases": 1234, "errors_5xx": 0, "operations": 21},
        {"kind": "fuzz", "database": "postgres", "test": "t", "cases": 340, "errors_5xx": 0, "operations": 21,
         "operations_fuzzed": 5},
        {"kind": "auth_matrix", "database": "sqlite", "test": "t", "rows": 210, "wrong": 0},
    ]


def test_the_writer_appends_one_line_per_call_only_when_asked(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "tally.jsonl"
    monkeypatch.delenv(ENV, raising=False)
    record("fuzz", "sqlite", cases=3, errors_5xx=0)
    assert not out.exists()
    monkeypatch.setenv(ENV, str(out))
    record("fuzz", "sqlite", cases=3, errors_5xx=0)
    record("auth_matrix", "postgres", rows=7, wrong=0)
    lines = reliability.read_tally(out)
    assert [(ln["kind"], ln["database"]) for ln in lines] == [("fuzz", "sqlite"), ("auth_matrix", "postgres")]
    assert lines[0]["cases"] == 3 and lines[1]["rows"] == 7
    assert lines[0]["test"].endswith("test_the_writer_appends_one_line_per_call_only_when_asked")
    assert fault_name(f"{KILL}[postgres]") == "sigkill mid batch then restart"


def test_the_section_from_a_hand_made_tally(tmp_path: Path) -> None:
    tally, junit = tmp_path / "tally.jsonl", tmp_path / "junit.xml"
    tally.write_text("".join(json.dumps(ln) + "\n" for ln in _tally()))
    junit.write_text(JUNIT)
    r = reliability.summarize(reliability.read_tally(tally), reliability.read_junit(junit))
    rows = {(f["fault"], f["database"]): f for f in r["faults"]}
    poison = rows[("a poison job fails alone through real crashes", "sqlite")]
    assert (poison["submitted"], poison["final"], poison["checks"], poison["outcome"]) == (11, 11, 2, "passed")
    kill_pg = rows[("sigkill mid batch then restart", "postgres")]
    assert (kill_pg["lost"], kill_pg["duplicated"], kill_pg["recover_s"], kill_pg["outcome"]) == (1, 1, 5.0, "failed")
    assert [f["kind"] for f in r["faults"]][-1] == "recovery"  # the default-settings row comes last
    assert (r["lost"], r["duplicated"]) == (1, 1)
    assert r["tests"] == {"passed": 3, "failed": 1, "error": 0, "skipped": 1}
    assert r["not_passed"] == [f"{KILL}[postgres]"]

    r.update(pytest_exit=1, wall_s=200.0, pytest_args=reliability.TESTS, machine={"cpu": "test cpu", "cores": 2},
             recorded_at="2026-01-01T00:00:00+00:00", commit="abc1234567", command="python -m bench.reliability")
    base = tmp_path / "bench"
    base.mkdir()
    (base / "RESULTS.md").write_text(f"# Results\n\n{reliability.MARK_BEGIN}\nold\n{reliability.MARK_END}\n")
    reliability.record(r, base)
    assert json.loads((base / "results" / "reliability.json").read_text())["lost"] == 1
    md = (base / "RESULTS.md").read_text()
    assert md.startswith("# Results") and "\nold\n" not in md and md.count(reliability.MARK_BEGIN) == 1
    assert "| sigkill mid batch then restart | postgres | 8 | 7 | **1** | **1** | 5.0 | failed |" in md
    assert "| a poison job fails alone through real crashes | sqlite | 11 | 11 | 0 | 0 | — | passed |" in md
    assert "| worker SIGKILL, default | sqlite | 64 | 64 | 0 | 0 | 11.3 | passed |" in md
    assert "| sqlite | 1234 | 0 | 21 of 21 | 210 | 0 |" in md and "| postgres | 340 | 0 | 5 of 21 | — | — |" in md
    assert "NOT clean: 1 job(s) lost and 1 written more than once" in md and "`abc1234567`" in md

    # The full report's rewrite of RESULTS.md keeps this section (and the bulk CLI's), markers included.
    kept = report.kept_sections("# Old\n\nfigures\n" + md[md.index(reliability.MARK_BEGIN):])
    assert kept.strip() == reliability.section(r).strip() and "figures" not in kept
