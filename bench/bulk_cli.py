"""``python -m bench.bulk_cli``: `genqueue bulk` at volume, against the raw bulk endpoint, in one run.

One stack (API + one worker). First N small image jobs go straight to POST /v1/jobs/bulk, 1,000 per request,
one request after another (the raw rate); once they have ended, the same N jobs go through the CLI
(`genqueue bulk jobs.jsonl --out results.jsonl`, a subprocess with its defaults: chunks of 512, four in
flight, results followed and written as they end). Recorded:

- ``client.bulk.jobs_per_s``: the CLI's submit rate (jobs accepted per second, from its start until the last
  line was accepted) and its ratio to the raw rate (target >= 0.8);
- ``client.bulk.batch_fill``: the worker's mean images per forward over the CLI's jobs while the backlog
  lasted, divided by its largest batch (GENQUEUE_IMAGE_MAX_BATCH_SIZE; target >= 0.8). The backlog ends when
  the queue runs dry; the jobs of the last two full batches (by start time) are left out as the drain.

``--record`` writes bench/results/bulk_cli.json and the "Clients at volume" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench import machine
from bench.stackrun import running, submit_bulk, wait_done
from bench.workload import image_inputs
from genqueue.db.models import Job
from genqueue.db.session import Database
from genqueue.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
MARK_BEGIN = "<!-- bulk_cli: begin (python -m bench.bulk_cli --record) -->"
MARK_END = "<!-- bulk_cli: end -->"
_SUMMARY = re.compile(r"(\d+) submitted \(([\d.]+) jobs/s\)")


def _log(msg: str) -> None:
    print(f"[bench.bulk_cli {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def batch_fill(rows: list[tuple[float, float]], max_batch: int) -> tuple[float, float, int]:
    """(mean images per forward while the backlog lasted, that mean / max_batch, jobs counted) from
    (started_at, batch_size) of each job."""
    rows = sorted(rows)
    kept = rows[: max(1, len(rows) - 2 * max_batch)]
    mean = sum(b for _, b in kept) / len(kept)
    return mean, mean / max_batch, len(kept)


def started_batches(db: Database, since: dt.datetime) -> list[tuple[float, float]]:
    """(started_at, images per forward) of the jobs created since ``since`` that succeeded."""
    with db.session() as s:
        return [(r.started_at.timestamp(), float((r.metrics or {}).get("batch_size", 0)))
                for r in s.execute(select(Job.started_at, Job.metrics).where(
                    Job.created_at >= since, Job.status == "succeeded"))]


def run(n: int, settings: Settings, timeout_s: float) -> dict[str, Any]:
    inputs = image_inputs(n)
    out: dict[str, Any] = {"jobs": n, "image_max_batch_size": settings.image_max_batch_size}
    with running(settings, workers=1, timeout=timeout_s) as bs:
        submit_bulk(bs.client, "dcgan-digits", inputs[:20])  # warm both paths outside the timing
        _log(f"raw: {n} jobs, POST /v1/jobs/bulk x1000, one request at a time")
        raw_since = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        raw_ids = submit_bulk(bs.client, "dcgan-digits", inputs)
        out["raw_submit_s"] = round(time.perf_counter() - t0, 3)
        out["raw_jobs_per_s"] = round(n / out["raw_submit_s"], 1)
        wait_done(bs.db, raw_ids, timeout=timeout_s)
        _log(f"raw: {out['raw_jobs_per_s']} jobs/s; all ended")
        raw_rows = started_batches(bs.db, raw_since)

        with tempfile.TemporaryDirectory() as tmp:
            src, results = Path(tmp) / "jobs.jsonl", Path(tmp) / "results.jsonl"
            src.write_text("".join(json.dumps({"model": "dcgan-digits", "input": i}) + "\n" for i in inputs))
            since = dt.datetime.now(dt.UTC)
            _log(f"cli: genqueue bulk {n} jobs --out results.jsonl")
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "genqueue.cli", "bulk", str(src), "--out", str(results),
                 "--url", bs.stack.base_url, "--key", bs.api_key],
                capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "COLUMNS": "120"})
            out["cli_total_s"] = round(time.perf_counter() - t0, 3)
            if proc.returncode != 0:
                raise RuntimeError(f"genqueue bulk exited {proc.returncode}: {proc.stderr[-2000:]}")
            m = _SUMMARY.search(proc.stderr)
            assert m is not None, proc.stderr[-500:]
            out["cli_jobs_per_s"] = float(m.group(2))
            out["cli_summary"] = proc.stderr.strip().splitlines()[-1]
            bars = [b.strip() for b in re.split(r"[\r\n]", proc.stderr) if "job/s" in b and "%|" in b]
            out["progress_bar_sample"] = bars[len(bars) // 2] if bars else ""
            out["results_lines"] = sum(1 for _ in results.open())
        rows = started_batches(bs.db, since)
    mean, fill, counted = batch_fill(rows, settings.image_max_batch_size)
    raw_mean, raw_fill, _ = batch_fill(raw_rows, settings.image_max_batch_size)
    out.update({"raw_mean_batch": round(raw_mean, 2), "raw_batch_fill": round(raw_fill, 3),"cli_mean_batch": round(mean, 2), "batch_fill": round(fill, 3), "batch_fill_jobs": counted,
                "jobs_per_s_ratio": round(out["cli_jobs_per_s"] / out["raw_jobs_per_s"], 3)})
    return out


def section(r: dict[str, Any]) -> str:
    return "\n".join([
        MARK_BEGIN,
        "## Clients at volume: `genqueue bulk` (`python -m bench.bulk_cli`)\n",
        f"Recorded {r['recorded_at']} on {r['machine'].get('cpu', 'this machine')} while other work shared the "
        f"machine (absolute rates are noisy; the ratio is same-run). {r['jobs']} one-image dcgan-digits jobs, "
        "one worker.\n",
        "| figure | value | target |", "|---|---|---|",
        f"| raw POST /v1/jobs/bulk (1,000 a request, one at a time) | {r['raw_jobs_per_s']} jobs/s | |",
        f"| `genqueue bulk` submit rate (chunks of 512, 4 in flight, results followed) | {r['cli_jobs_per_s']} jobs/s | |",
        f"| client.bulk.jobs_per_s (CLI ÷ raw) | **{r['jobs_per_s_ratio']}** | >= 0.8 |",
        f"| client.bulk.batch_fill (mean images per forward {r['cli_mean_batch']} ÷ {r['image_max_batch_size']}) "
        f"| **{r['batch_fill']}** | >= 0.8 |",
        f"| the same, for the raw phase's jobs ({r['raw_mean_batch']} ÷ {r['image_max_batch_size']}) "
        f"| {r['raw_batch_fill']} | |",
        "",
        f"The CLI's last line: `{r['cli_summary']}`; it ran {r['cli_total_s']} s in all, results included. Its "
        f"progress bar mid-run: `{r['progress_bar_sample']}`",
        *([f"\n{r['note']}"] if r.get("note") else []),
        MARK_END,
    ]) + "\n"


def record(r: dict[str, Any]) -> None:
    (BENCH_DIR / "results").mkdir(exist_ok=True)
    (BENCH_DIR / "results" / "bulk_cli.json").write_text(json.dumps(r, indent=1) + "\n")
    md = BENCH_DIR / "RESULTS.md"
    text = md.read_text() if md.exists() else ""
    if MARK_BEGIN in text:
        text = text[: text.index(MARK_BEGIN)] + text[text.index(MARK_END) + len(MARK_END) + 1:]
    md.write_text(text.rstrip("\n") + "\n\n" + section(r))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bulk_cli", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--record", action="store_true", help="write bench/results/bulk_cli.json and RESULTS.md")
    ap.add_argument("--note", default="", help="a paragraph recorded under the table (e.g. other runs' figures)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as data:
        over: dict[str, Any] = {"data_dir": Path(data)}
        if args.models_dir:
            over["models_dir"] = args.models_dir
        r = run(args.jobs, Settings(**over), args.timeout)
    r["machine"] = machine.describe()
    r["recorded_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    r["command"] = " ".join(["python", "-m", "bench.bulk_cli", *(argv if argv is not None else sys.argv[1:])])
    r["note"] = args.note
    print(json.dumps(r, indent=1))
    if args.record:
        record(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
