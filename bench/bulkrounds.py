"""The API's cost per job on POST /v1/jobs/bulk, round after round in one API process: wall and API CPU
microseconds per job. A round that stands out (the first, or one every few) shows start-up or collector
pauses rather than the steady state that the submit scenario's medians assume.

    python -m bench.bulkrounds --jobs 2000 --rounds 4
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import psutil

from bench.stackrun import running, submit_bulk
from bench.workload import text_inputs
from genqueue.settings import Settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bulkrounds", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000, help="text jobs per round (bulk requests of 1,000)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.rounds < 1:
        ap.error("--jobs and --rounds must be at least 1")
    base = Settings()
    data = args.data_dir or base.data_dir / "bench" / "bulkrounds"
    shutil.rmtree(data, ignore_errors=True)
    settings = base.model_copy(update={"data_dir": data})
    inputs = text_inputs(args.jobs, 16, 96)
    with running(settings, workers=0, timeout=120) as bs:
        submit_bulk(bs.client, "tiny-lm", inputs[:10])  # first request, connections
        api = psutil.Process(bs.pids()["api"])
        for r in range(args.rounds):
            t0, c0 = time.perf_counter(), sum(api.cpu_times()[:2])
            submit_bulk(bs.client, "tiny-lm", inputs)
            wall, cpu = time.perf_counter() - t0, sum(api.cpu_times()[:2]) - c0
            print(f"round {r + 1}: {wall * 1e6 / args.jobs:.1f} us wall, {cpu * 1e6 / args.jobs:.1f} us API CPU per job")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
