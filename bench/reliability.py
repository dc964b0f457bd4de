"""``python -m bench.reliability``: the fault tests' figures, as a "Reliability" table in bench/RESULTS.md.

Runs pytest on tests/reliability and on the default-settings recovery test (a worker SIGKILLed with the
product's defaults, on SQLite and PostgreSQL) in a subprocess with the project's .venv python and
``GENQUEUE_RELIABILITY_OUT`` set; each test appends the figures it computed and asserted on as one JSON line
(tests/reliability_tally.py). Then, per fault and database: jobs submitted, jobs final, lost, duplicated (an
outcome written more than once) and the time to recover where the test measures one; the fuzz's cases and
5xx answers and the auth matrix's rows, per database; pytest's own outcome beside them.

``--record`` writes bench/results/reliability.json and the "Reliability" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench import machine, sections

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MARK_BEGIN, MARK_END = sections.markers("reliability", "python -m bench.reliability --record")
ENV = "GENQUEUE_RELIABILITY_OUT"  # read by tests/reliability_tally.py
RECOVERY_TEST = ("tests/pipeline/test_crash.py::"
                 "test_a_dead_worker_is_noticed_from_its_heartbeat_and_its_jobs_rerun_within_30_s")
TESTS = ["tests/reliability", RECOVERY_TEST]
DATABASES = ("sqlite", "postgres")


def read_tally(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_junit(path: Path) -> dict[str, str]:
    """Each test's outcome (``passed``, ``failed``, ``error``, ``skipped``), keyed by its node id."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        tags = {child.tag for child in case}
        out[node] = next((t for t in ("failure", "error", "skipped") if t in tags), "passed").replace(
            "failure", "failed")
    return out


def summarize(lines: list[dict[str, Any]], outcomes: dict[str, str]) -> dict[str, Any]:
    """One row per fault and database (a test's several exactly-once checks add up), in the order they ran."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for ln in lines:
        if ln["kind"] not in ("fault", "recovery"):
            continue
        key = (ln["fault"], ln["database"])
        row = rows.setdefault(key, {"fault": ln["fault"], "database": ln["database"], "kind": ln["kind"],
                                    "submitted": 0, "final": 0, "lost": 0, "duplicated": 0, "recover_s": None,
                                    "checks": 0, "tests": []})
        for k in ("submitted", "final", "lost", "duplicated"):
            row[k] += int(ln[k])
        row["checks"] += 1
        if ln.get("recover_s") is not None:
            row["recover_s"] = ln["recover_s"]
        if ln["test"] not in row["tests"]:
            row["tests"].append(ln["test"])
    for row in rows.values():
        row["outcome"] = ("failed" if any(outcomes.get(t) in ("failed", "error") for t in row["tests"])
                          else "passed" if all(outcomes.get(t) == "passed" for t in row["tests"]) else "unknown")
    order = {f: n for n, f in enumerate(dict.fromkeys(f for f, _ in rows))}
    fault_rows = sorted(rows.values(), key=lambda r: (r["kind"] == "recovery", order[r["fault"]],
                                                      DATABASES.index(r["database"])))
    fuzz = {ln["database"]: {"cases": ln["cases"], "errors_5xx": ln["errors_5xx"], "operations": ln["operations"],
                             "operations_fuzzed": ln.get("operations_fuzzed", ln["operations"])}
            for ln in lines if ln["kind"] == "fuzz"}
    matrix = {ln["database"]: {"rows": ln["rows"], "wrong": ln["wrong"]} for ln in lines if ln["kind"] == "auth_matrix"}
    counts = {o: sum(v == o for v in outcomes.values()) for o in ("passed", "failed", "error", "skipped")}
    return {"faults": fault_rows, "fuzz": fuzz, "auth_matrix": matrix, "tests": counts,
            "not_passed": sorted(t for t, o in outcomes.items() if o in ("failed", "error")),
            "lost": sum(r["lost"] for r in fault_rows), "duplicated": sum(r["duplicated"] for r in fault_rows)}


def run(models_dir: Path | None, timeout_s: float) -> dict[str, Any]:
    python = REPO / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        tally, junit = Path(tmp) / "tally.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, ENV: str(tally)}
        if models_dir is not None:
            env["GENQUEUE_TEST_MODELS_DIR"] = str(models_dir)
        cmd = [str(python if python.exists() else sys.executable), "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *TESTS]
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        wall = round(time.monotonic() - t0, 1)
        r = summarize(read_tally(tally), read_junit(junit))
    r.update(pytest_exit=rc, wall_s=wall, pytest_args=TESTS)
    return r


def _commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return sha + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def _n(v: int) -> str:
    return f"**{v}**" if v else "0"


def section(r: dict[str, Any]) -> str:
    fault_rows = [f"| {f['fault']} | {f['database']} | {f['submitted']} | {f['final']} | {_n(f['lost'])} | "
                  f"{_n(f['duplicated'])} | {'—' if f['recover_s'] is None else f['recover_s']} | {f['outcome']} |"
                  for f in r["faults"]]
    dbs = [d for d in DATABASES if d in r["fuzz"] or d in r["auth_matrix"]]
    other_rows = []
    for d in dbs:
        fz, am = r["fuzz"].get(d), r["auth_matrix"].get(d, {})
        ops = f"{fz['operations_fuzzed']} of {fz['operations']}" if fz else "—"
        other_rows.append(f"| {d} | {fz['cases'] if fz else '—'} | {fz['errors_5xx'] if fz else '—'} | {ops} | "
                          f"{am.get('rows', '—')} | {am.get('wrong', '—')} |")
    t = r["tests"]
    verdict = ("0 lost and 0 duplicated in every row." if not r["lost"] and not r["duplicated"] else
               f"NOT clean: {r['lost']} job(s) lost and {r['duplicated']} written more than once (rows in bold).")
    failed = (f" Tests that did not pass: {', '.join(f'`{n}`' for n in r['not_passed'])}." if r["not_passed"]
              else "")
    return "\n".join([
        MARK_BEGIN,
        "## Reliability (`python -m bench.reliability`)\n",
        f"Recorded {r['recorded_at']} at commit `{r['commit']}` on {r['machine'].get('cpu', 'this machine')} "
        f"({r['machine'].get('cores', '?')} cores; other work may share the machine). Command: `{r['command']}`, "
        f"which runs `pytest {' '.join(r['pytest_args'])}` with `{ENV}` set: {t['passed']} passed, "
        f"{t['failed']} failed, {t['error']} errors, {t['skipped']} skipped in {r['wall_s']} s "
        f"(pytest exit {r['pytest_exit']}).{failed}\n",
        "Each fault test ends with the exactly-once check on the jobs it submitted: final = jobs in a final state, "
        "lost = jobs that never reached one, duplicated = jobs whose outcome was written more than once (counted "
        "from the `prescreen` audit event each write adds). A test with two checks (the poison job, then its "
        "neighbours) shows their sum. Recover: for the SIGKILL fault, seconds from the kill until every job the "
        "dead worker held was claimed again, under the fault tests' short leases (3 s); for the default-settings "
        "rows, the same with the product's defaults (120 s leases, so only the missing heartbeat brings the jobs "
        "back; the test asserts <= 30 s).\n",
        f"**{verdict}**\n",
        "| fault | database | submitted | final | lost | duplicated | recover (s) | test |",
        "|---|---|---|---|---|---|---|---|",
        *fault_rows,
        "",
        "| database | fuzz cases | fuzz 5xx | operations fuzzed | auth matrix rows | auth matrix rows wrong |",
        "|---|---|---|---|---|---|",
        *other_rows,
        MARK_END,
    ]) + "\n"


def record(r: dict[str, Any], base: Path = BENCH_DIR) -> None:
    sections.record(base, "reliability", r, section(r), MARK_BEGIN, MARK_END)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=None, help="passed to the tests as GENQUEUE_TEST_MODELS_DIR")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the whole pytest run")
    ap.add_argument("--record", action="store_true", help="write bench/results/reliability.json and RESULTS.md")
    args = ap.parse_args(argv)
    r = run(args.models_dir, args.timeout)
    r["machine"] = machine.describe()
    r["recorded_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    r["commit"] = _commit()
    r["command"] = " ".join(["python", "-m", "bench.reliability", *(argv if argv is not None else sys.argv[1:])])
    print(section(r))
    if args.record:
        record(r)
    return 0 if r["pytest_exit"] == 0 and not r["lost"] and not r["duplicated"] else 1


if __name__ == "__main__":
    sys.exit(main())
