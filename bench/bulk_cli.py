"""``python -m bench.bulk_cli``: `genqueue bulk` at volume, against the raw bulk endpoint, in one run.

One stack (API + one worker), then alternating side-by-side pairs (raw, CLI, raw, CLI, ...; at least 3), each
phase the same N small image jobs (their seeds differ from phase to phase, so that the CLI's idempotency keys,
made from its input file, never turn a later phase into replays). A raw phase sends them straight to
POST /v1/jobs/bulk, 1,000 per request, one request after another; a CLI phase runs
`genqueue bulk jobs.jsonl --out results.jsonl` (a subprocess with its defaults: chunks of 512, four in flight,
results followed and written as they end). Every phase starts once the previous one's jobs have all ended.
Recorded (every pair's values, and their medians):

- ``client.bulk.jobs_per_s``: the CLI's submit rate (jobs accepted per second, from its start until the last
  line was accepted) divided by the raw rate of the same pair; the figure is the median of the pairs' ratios
  (target >= 0.8);
- ``client.bulk.batch_fill``: the worker's mean images per forward over a CLI phase's jobs while the backlog
  lasted, divided by its largest batch (GENQUEUE_IMAGE_MAX_BATCH_SIZE); the figure is the median over the CLI
  phases (target >= 0.8), with the raw phases' median beside it. The backlog ends when the queue runs dry;
  the jobs of the last two full batches (by start time) are left out as the drain.

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
from statistics import median
from typing import Any

from sqlalchemy import select

from bench import machine, sections
from bench.stackrun import BenchStack, running, submit_bulk, wait_done
from bench.workload import image_inputs
from genqueue.db.models import Job
from genqueue.db.session import Database
from genqueue.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = sections.markers("bulk_cli", "python -m bench.bulk_cli --record")
MODEL = "dcgan-digits"
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


def _raw_phase(bs: BenchStack, inputs: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    since = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    ids = submit_bulk(bs.client, MODEL, inputs)
    submit_s = time.perf_counter() - t0
    wait_done(bs.db, ids, timeout=timeout_s)
    mean, fill, _ = batch_fill(started_batches(bs.db, since), bs.settings.image_max_batch_size)
    return {"submit_s": round(submit_s, 3), "jobs_per_s": round(len(inputs) / submit_s, 1),
            "mean_batch": round(mean, 2), "batch_fill": round(fill, 3)}


def _cli_phase(bs: BenchStack, inputs: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        src, results = Path(tmp) / "jobs.jsonl", Path(tmp) / "results.jsonl"
        src.write_text("".join(json.dumps({"model": MODEL, "input": i}) + "\n" for i in inputs))
        since = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "genqueue.cli", "bulk", str(src), "--out", str(results),
             "--url", bs.stack.base_url, "--key", bs.api_key],
            capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "COLUMNS": "120"})
        total_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"genqueue bulk exited {proc.returncode}: {proc.stderr[-2000:]}")
        m = _SUMMARY.search(proc.stderr)
        assert m is not None, proc.stderr[-500:]
        if int(m.group(1)) != len(inputs):
            raise RuntimeError(f"genqueue bulk submitted {m.group(1)} of {len(inputs)} lines: "
                               f"{proc.stderr.strip().splitlines()[-1]}")
        bars = [b.strip() for b in re.split(r"[\r\n]", proc.stderr) if "job/s" in b and "%|" in b]
        results_lines = sum(1 for _ in results.open())
    mean, fill, counted = batch_fill(started_batches(bs.db, since), bs.settings.image_max_batch_size)
    return {"total_s": round(total_s, 3), "jobs_per_s": float(m.group(2)), "mean_batch": round(mean, 2),
            "batch_fill": round(fill, 3), "batch_fill_jobs": counted, "results_lines": results_lines,
            "summary": proc.stderr.strip().splitlines()[-1], "progress_bar_sample": bars[len(bars) // 2] if bars else ""}


def summarize(n: int, max_batch: int, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The recorded figures from the pairs ({"raw": phase, "cli": phase}): each pair's CLI ÷ raw ratio, and
    the medians (the ratio's over the pairs; the fills over the phases of each side)."""
    for p in pairs:
        p["ratio"] = round(p["cli"]["jobs_per_s"] / p["raw"]["jobs_per_s"], 3)
    mid = pairs[len(pairs) // 2]["cli"]
    return {
        "jobs": n, "image_max_batch_size": max_batch, "pairs_run": len(pairs),
        "jobs_per_s_ratio": round(median(p["ratio"] for p in pairs), 3),
        "jobs_per_s_ratios": [p["ratio"] for p in pairs],
        "raw_jobs_per_s": round(median(p["raw"]["jobs_per_s"] for p in pairs), 1),
        "cli_jobs_per_s": round(median(p["cli"]["jobs_per_s"] for p in pairs), 1),
        "batch_fill": round(median(p["cli"]["batch_fill"] for p in pairs), 3),
        "batch_fills": [p["cli"]["batch_fill"] for p in pairs],
        "raw_batch_fill": round(median(p["raw"]["batch_fill"] for p in pairs), 3),
        "raw_batch_fills": [p["raw"]["batch_fill"] for p in pairs],
        "cli_mean_batch": round(median(p["cli"]["mean_batch"] for p in pairs), 2),
        "raw_mean_batch": round(median(p["raw"]["mean_batch"] for p in pairs), 2),
        "cli_summary": mid["summary"], "cli_total_s": mid["total_s"], "progress_bar_sample": mid["progress_bar_sample"],
        "pairs": pairs,
    }


def run(n: int, pairs: int, settings: Settings, timeout_s: float) -> dict[str, Any]:
    if pairs < 1:
        raise ValueError("at least one pair")
    done: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with running(settings, workers=1, timeout=timeout_s) as bs:
        # Warm both paths outside the timing (seeds past every phase's).
        warm = [{**i, "seed": i["seed"] + 2 * pairs * n} for i in image_inputs(20)]
        wait_done(bs.db, submit_bulk(bs.client, MODEL, warm), timeout=timeout_s)
        for k in range(pairs):
            # Phase 2k is raw and 2k+1 is the CLI: every phase's jobs have seeds of their own.
            raw_in, cli_in = (_inputs(n, 2 * k + side) for side in (0, 1))
            raw = _raw_phase(bs, raw_in, timeout_s)
            _log(f"pair {k + 1}/{pairs} raw: {raw['jobs_per_s']} jobs/s, fill {raw['batch_fill']}")
            cli = _cli_phase(bs, cli_in, timeout_s)
            _log(f"pair {k + 1}/{pairs} cli: {cli['jobs_per_s']} jobs/s, fill {cli['batch_fill']} "
                 f"(ratio {cli['jobs_per_s'] / raw['jobs_per_s']:.3f})")
            done.append({"raw": raw, "cli": cli})
    out = summarize(n, settings.image_max_batch_size, done)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    return out


def _inputs(n: int, phase: int) -> list[dict[str, Any]]:
    return [{**i, "seed": i["seed"] + phase * n} for i in image_inputs(n)]


def section(r: dict[str, Any]) -> str:
    pair_rows = [f"| {k + 1} | {p['raw']['jobs_per_s']} | {p['cli']['jobs_per_s']} | {p['ratio']} | "
                 f"{p['raw']['batch_fill']} | {p['cli']['batch_fill']} |" for k, p in enumerate(r["pairs"])]
    return "\n".join([
        MARK_BEGIN,
        "## Clients at volume: `genqueue bulk` (`python -m bench.bulk_cli`)\n",
        f"Recorded {r['recorded_at']} on {r['machine'].get('cpu', 'this machine')} "
        f"({r['machine'].get('cores', '?')} cores) while other work may share the machine (absolute rates are "
        f"noisy; each ratio is same-pair). {r['pairs_run']} alternating pairs (raw, then CLI) of {r['jobs']} "
        f"one-image dcgan-digits jobs each, one worker; {r['wall_s']} s in all. Command: `{r['command']}`.\n",
        "| figure (median over the pairs) | value | target |", "|---|---|---|",
        f"| raw POST /v1/jobs/bulk (1,000 a request, one at a time) | {r['raw_jobs_per_s']} jobs/s | |",
        f"| `genqueue bulk` submit rate (chunks of 512, 4 in flight, results followed) | {r['cli_jobs_per_s']} jobs/s | |",
        f"| client.bulk.jobs_per_s (CLI ÷ raw, median of the pairs' ratios {r['jobs_per_s_ratios']}) "
        f"| **{r['jobs_per_s_ratio']}** | >= 0.8 |",
        f"| client.bulk.batch_fill (CLI phases; mean images per forward {r['cli_mean_batch']} ÷ "
        f"{r['image_max_batch_size']}; phases {r['batch_fills']}) | **{r['batch_fill']}** | >= 0.8 |",
        f"| the same, for the raw phases ({r['raw_mean_batch']} ÷ {r['image_max_batch_size']}; phases "
        f"{r['raw_batch_fills']}) | {r['raw_batch_fill']} | |",
        "",
        "| pair | raw jobs/s | CLI jobs/s | CLI ÷ raw | raw batch fill | CLI batch fill |", "|---|---|---|---|---|---|",
        *pair_rows,
        "",
        f"The middle pair's CLI, last line: `{r['cli_summary']}`; it ran {r['cli_total_s']} s in all, results "
        f"included. Its progress bar mid-run: `{r['progress_bar_sample']}`",
        *([f"\n{r['note']}"] if r.get("note") else []),
        MARK_END,
    ]) + "\n"


def record(r: dict[str, Any], base: Path = BENCH_DIR) -> None:
    sections.record(base, "bulk_cli", r, section(r), MARK_BEGIN, MARK_END)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bulk_cli", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per phase (default 20,000)")
    ap.add_argument("--pairs", type=int, default=3, help="alternating raw/CLI pairs (default 3)")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--record", action="store_true", help="write bench/results/bulk_cli.json and RESULTS.md")
    ap.add_argument("--note", default="", help="a paragraph recorded under the table (e.g. other runs' figures)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as data:
        over: dict[str, Any] = {"data_dir": Path(data)}
        if args.models_dir:
            over["models_dir"] = args.models_dir
        r = run(args.jobs, args.pairs, Settings(**over), args.timeout)
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
