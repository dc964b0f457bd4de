"""Where does a system phase spend its time? Runs one phase of the system scenario while py-spy samples the
worker (and the API), and prints the hottest frames, inclusive and self, from the collapsed stacks.

    .venv/bin/pip install py-spy
    python -m bench.profile --kind image --jobs 1000        # or --kind text
    python -m bench.profile --kind text --jobs 300 --idle   # include idle/waiting samples
    python -m bench.profile --kind submit --jobs 10000      # the API alone on POST /v1/jobs/bulk
    python -m bench.profile --kind single --jobs 3000 --gil # the API alone on POST /v1/jobs from 32 clients

Writes the raw collapsed stacks (flame-graph input) next to the summary under <data-dir>/profile/.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.stackrun import job_rows, running, submit_bulk, summarize, wait_done
from bench.workload import image_inputs, text_inputs
from genqueue.settings import Settings


def py_spy() -> str:
    """The py-spy executable, or exit with one line saying how to get it (checked before a stack starts)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).is_file():
        raise SystemExit("py-spy is not installed: run `make venv` (it is in the [bench] extra) or `pip install py-spy`")
    return spy


def _start_spy(pid: int, out: Path, rate: int, idle: bool, gil: bool) -> subprocess.Popen[bytes]:
    cmd = [py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out),
           "--nonblocking", "--threads"]
    if idle:
        cmd.append("--idle")
    if gil:
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize_stacks(path: Path, top: int = 25) -> str:
    """Inclusive and self sample shares per function from py-spy's collapsed (raw) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        thread = frames[0].split(": ", 1)[-1] if frames else "?"
        threads[re.sub(r"[-_]\d+$", "", thread)] += count
        seen = set()
        for f in frames[1:]:
            name = f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
            if name not in seen:
                inclusive[name] += count
                seen.add(name)
        if len(frames) > 1:
            f = frames[-1]
            own[f.split(" (")[0] + " (" + f.split(" (")[-1].rsplit("/", 1)[-1]] += count
    lines = [f"{total} samples"]
    lines += ["", "by thread:"] + [f"  {100 * c / total:5.1f}%  {t}" for t, c in threads.most_common(10)]
    lines += ["", "inclusive:"] + [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    lines += ["", "self:"] + [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--kind", choices=["text", "image", "submit", "single"], default="image")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--idle", action="store_true", help="also count threads that wait")
    ap.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL (Python CPU)")
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    py_spy()
    base = Settings()
    data = args.data_dir or base.data_dir / "bench" / "profile"
    shutil.rmtree(data, ignore_errors=True)
    settings = base.model_copy(update={"data_dir": data})
    model = "dcgan-digits" if args.kind == "image" else "tiny-lm"
    inputs = image_inputs(args.jobs) if args.kind == "image" else text_inputs(args.jobs, 16, 96)
    submit_only = args.kind in ("submit", "single")
    with running(settings, workers=0 if submit_only else 1, timeout=180) as bs:
        warm = submit_bulk(bs.client, model, inputs[:8])
        if not submit_only:
            wait_done(bs.db, warm, 120)
        pids = bs.pids()
        spies = {name: _start_spy(pid, data / f"{name}.stacks", args.rate, args.idle, args.gil) for name, pid in pids.items()}
        time.sleep(1.0)
        t0 = time.time()
        if args.kind == "single":
            from bench.submit import singles

            ids = singles(bs, model, inputs, clients=32)
        else:
            ids = submit_bulk(bs.client, model, inputs)
        if submit_only:
            wall = time.time() - t0
            res = {"units_per_s": round(len(ids) / wall, 1), "jobs_per_s": round(len(ids) / wall, 1)}
        else:
            wait_done(bs.db, ids, 600)
            res = summarize(job_rows(bs.db, ids), t0)
        for p in spies.values():
            p.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for name, p in spies.items():
            _, err = p.communicate(timeout=60)
            if not (data / f"{name}.stacks").exists():
                print(f"py-spy on {name} wrote nothing (exit {p.returncode}): {err.decode(errors='replace')[-400:]}")
    print(f"{args.jobs} {args.kind} jobs: {res['units_per_s']} units/s, {res['jobs_per_s']} jobs/s")
    for name in pids:
        path = data / f"{name}.stacks"
        if path.exists():
            summary = summarize_stacks(path)
            (data / f"{name}.summary.txt").write_text(summary + "\n")
            print(f"\n===== {name} =====\n{summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
