"""CPU seconds per job of each worker thread during one system phase (from /proc/<pid>/task/*/stat, named
by ``py-spy dump``). Threads without a Python name are native: onnxruntime's intra-op pools.

    python -m bench.threadcpu --kind image --jobs 1500
    python -m bench.threadcpu --kind text --jobs 512 --no-spin   # worker's ORT sessions without spinning

``--no-spin`` puts bench/nospin on the worker's PYTHONPATH (see its sitecustomize.py): an experiment of the
fix suggested in bench/FINDINGS.md, run without editing the worker.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.profile import py_spy
from bench.stackrun import running, submit_bulk, wait_done
from bench.workload import image_inputs, text_inputs
from genqueue.settings import Settings


def thread_cpu(pid: int) -> dict[int, float]:
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def thread_names(pid: int) -> dict[int, str]:
    dump = subprocess.run([py_spy(), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    return {int(m.group(1), 0): re.sub(r"[-_]\d+$", "", m.group(2))
            for m in re.finditer(r'Thread (\S+) \(\w+\): "([^"]+)"', dump)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.threadcpu")
    ap.add_argument("--kind", choices=["text", "image"], default="image")
    ap.add_argument("--jobs", type=int, default=1500)
    ap.add_argument("--no-spin", action="store_true")
    ap.add_argument("--intra-op-threads", type=int, default=0, help="with --no-spin: ORT threads per session")
    args = ap.parse_args(argv)
    py_spy()
    if args.no_spin:
        here = Path(__file__).resolve().parent
        os.environ["PYTHONPATH"] = os.pathsep.join([str(here / "nospin"), str(here.parent), os.environ.get("PYTHONPATH", "")])
        os.environ["BENCH_NO_SPIN"] = "1"
        os.environ["BENCH_INTRA"] = str(args.intra_op_threads)
    base = Settings()
    data = base.data_dir / "bench" / "threadcpu"
    shutil.rmtree(data, ignore_errors=True)
    settings = base.model_copy(update={"data_dir": data})
    model = "dcgan-digits" if args.kind == "image" else "tiny-lm"
    inputs = image_inputs(args.jobs) if args.kind == "image" else text_inputs(args.jobs, 16, 96)
    with running(settings, workers=1, timeout=180) as bs:
        wait_done(bs.db, submit_bulk(bs.client, model, inputs[:8]), 120)
        pid = bs.pids()["worker"]
        before, t0 = thread_cpu(pid), time.time()
        wait_done(bs.db, submit_bulk(bs.client, model, inputs), 600)
        wall, after = time.time() - t0, thread_cpu(pid)
        names = thread_names(pid)  # after the run: the task pool starts its threads lazily
    by: dict[str, float] = collections.defaultdict(float)
    for tid, cpu in after.items():
        by[names.get(tid, "native (onnxruntime pools, other C threads)")] += cpu - before.get(tid, 0.0)
    n = args.jobs
    print(f"{n} {args.kind} jobs{' (no ORT spinning)' if args.no_spin else ''}: {n / wall:.1f} jobs/s; "
          f"worker CPU {sum(by.values()) * 1000 / n:.2f} ms/job")
    for name, cpu in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"  {cpu * 1000 / n:6.2f} ms/job  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
