"""``naive`` scenario driver: the same jobs through bench/naive_worker.py (one Celery task per job, batch
size 1, one worker process with concurrency 1), on the same Redis and the same SQL as the genqueue stack.

The driver submits the way that user would: per job, INSERT + COMMIT a row, then ``task.delay(job_id)``.
Throughput runs from the first INSERT to the last ``finished``, exactly as in the system scenario.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from bench import naive_store
from bench.naive_store import naive_jobs
from bench.stackrun import percentiles
from genqueue.db.session import make_engine
from genqueue.registry import ModelEntry

QUEUE = "bench.naive"


def worker_env(broker_url: str, database_url: str, checkpoints: Path, tokenizer: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"BENCH_NAIVE_BROKER": broker_url, "BENCH_NAIVE_DATABASE": database_url,
                "BENCH_NAIVE_CHECKPOINTS": str(checkpoints.resolve()), "BENCH_NAIVE_TOKENIZER": str(tokenizer.resolve()),
                "PYTHONUNBUFFERED": "1"})
    return env


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """The straightforward deployment: one worker process, pool solo, concurrency 1."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    cmd = [sys.executable, "-m", "celery", "-A", "bench.naive_worker", "worker", "--pool=solo", "--concurrency=1",
           f"--queues={QUEUE}", "--loglevel=WARNING", f"--hostname=naive-{os.getpid()}@%h"]
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parent.parent)


def stop_worker(p: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def submit(engine: Engine, task: Any, kind: str, inputs: Sequence[dict[str, Any]]) -> list[str]:
    """What the user's submit loop does: one INSERT + COMMIT, then one ``.delay()``, per job."""
    ids = []
    for inp in inputs:
        job_id = str(uuid.uuid4())
        with engine.begin() as c:
            c.execute(insert(naive_jobs).values(**naive_store.row(job_id, kind, inp, time.time())))
        task.delay(job_id)
        ids.append(job_id)
    return ids


def wait_finished(engine: Engine, ids: Sequence[str], timeout: float, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as c:
            done = 0
            for s in range(0, len(ids), 500):
                q = select(func.count()).select_from(naive_jobs).where(
                    naive_jobs.c.id.in_(list(ids[s : s + 500])), naive_jobs.c.status == "succeeded")
                done += int(c.execute(q).scalar_one())
        if done >= len(ids):
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the naive worker exited with code {worker.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"naive: {len(ids) - done} of {len(ids)} jobs unfinished after {timeout:.0f}s")
        time.sleep(0.25)


def summarize(engine: Engine, ids: Sequence[str], t0: float) -> dict[str, Any]:
    rows: list[Any] = []
    with engine.connect() as c:
        for s in range(0, len(ids), 500):
            q = select(naive_jobs.c.created, naive_jobs.c.started, naive_jobs.c.finished, naive_jobs.c.tokens)
            rows += list(c.execute(q.where(naive_jobs.c.id.in_(list(ids[s : s + 500])))))
    wall = max(r.finished for r in rows) - t0
    units = float(sum(r.tokens for r in rows))
    return {"jobs": len(rows), "wall_s": round(wall, 3), "units": units, "units_per_s": round(units / wall, 1),
            "jobs_per_s": round(len(rows) / wall, 2),
            "queue_ms": percentiles([(r.started - r.created) * 1000 for r in rows]),
            "total_ms": percentiles([(r.finished - r.created) * 1000 for r in rows])}


def greedy_agreement(text: ModelEntry, checkpoints: Path, max_new: int = 48) -> dict[str, Any]:
    """Greedy (temperature 0) outputs of the naive generate loop and of genqueue's engine for every bench
    prompt: they must be identical, or the two would not be doing the same work."""
    from bench import naive_worker
    from bench.workload import PROMPTS
    from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig
    from genqueue_worker.engine.types import TextParams, TextRequest

    assert text.tokenizer_path is not None
    model, tok, special = naive_worker.load_text_model(str(checkpoints), str(text.tokenizer_path))
    eng = TextEngine(text, "cpu", TextEngineConfig(return_token_ids=True, warmup=False))
    res = eng.run_all([TextRequest(f"g{i}", p, TextParams(max_new_tokens=max_new, temperature=0))
                       for i, p in enumerate(PROMPTS)])
    same = [r.output is not None and r.output["token_ids"][0] == naive_worker.generate(
        model, naive_worker.prompt_ids(tok, p, special), max_new, 0.0, 0, special["eos_token_id"])
        for p, r in zip(PROMPTS, res, strict=True)]
    return {"prompts": len(same), "identical": sum(same)}


def run(broker_url: str, database_url: str, checkpoints: Path, tokenizer: Path, texts: Sequence[dict[str, Any]],
        images: Sequence[dict[str, Any]], log_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench import naive_worker

    app = naive_worker.make_app(broker_url)
    engine = make_engine(database_url)  # the same SQL, configured as genqueue configures it
    naive_store.create(engine)
    worker = start_worker(worker_env(broker_url, database_url, checkpoints, tokenizer), log_dir / "naive-worker.log")
    try:
        # Warm-up: the worker loads both models (once per process) before anything is timed.
        text_task, image_task = app.tasks["bench.naive.text"], app.tasks["bench.naive.image"]
        warm = submit(engine, text_task, "text", texts[:2])
        warm += submit(engine, image_task, "image", images[:2])
        wait_finished(engine, warm, 90, worker)
        proc = psutil.Process(worker.pid)
        out: dict[str, Any] = {"worker": {"pool": "solo", "concurrency": 1,
                                          "rss_mb": round(proc.memory_info().rss / 2**20, 1)}}
        for kind, task, inputs in (("text", text_task, texts), ("image", image_task, images)):
            cpu0 = sum(proc.cpu_times()[:2])
            t0 = time.time()
            ids = submit(engine, task, kind, inputs)
            submitted = time.time() - t0
            wait_finished(engine, ids, 1800, worker)
            res = summarize(engine, ids, t0)
            res["submit_s"] = round(submitted, 3)
            res["worker_cpu_ms_per_job"] = round((sum(proc.cpu_times()[:2]) - cpu0) * 1000 / len(ids), 2)
            out[kind] = res
            unit = "tokens/s" if kind == "text" else "images/s"
            log(f"naive {kind}: {res['units_per_s']:.1f} {unit}, {res['jobs_per_s']} jobs/s, "
                f"total p50 {res['total_ms'].get('p50')} ms")
        with open(log_dir / "naive-worker.log", "rb") as f:
            threads = [ln.decode(errors="replace").strip().split("] ", 1)[-1] for ln in f if b"torch threads" in ln]
        out["worker"]["torch_threads"] = threads[-1] if threads else None
        return out
    finally:
        stop_worker(worker)
        engine.dispose()
        app.close()
