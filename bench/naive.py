"""The naive baselines' drivers: the same jobs through bench/naive_worker.py (PyTorch) or
bench/naive_ort_worker.py (the exported ONNX model through ONNX Runtime), one Celery task per job at batch
size 1, Celery's default pool and concurrency, on the same Redis and the same SQL as the genqueue stack.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from bench import naive_store
from bench.naive_store import naive_jobs
from bench.stackrun import percentiles
from genqueue.registry import ModelEntry

QUEUE = "bench.naive"


def worker_env(broker_url: str, database_url: str, checkpoints: Path, tokenizer: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"BENCH_NAIVE_BROKER": broker_url, "BENCH_NAIVE_DATABASE": database_url,
                "BENCH_NAIVE_CHECKPOINTS": str(checkpoints.resolve()), "BENCH_NAIVE_TOKENIZER": str(tokenizer.resolve()),
                "PYTHONUNBUFFERED": "1"})
    return env


def start_worker(module: str, queue: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """The deployment a user gets untuned: Celery's default pool (prefork) and concurrency (one process
    per core); only the queue is named."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    cmd = [sys.executable, "-m", "celery", "-A", module, "worker", f"--queues={queue}", "--loglevel=WARNING",
           f"--hostname={queue}-{os.getpid()}@%h"]
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
    from bench.naive_ort_worker import TextModel

    ort_model = TextModel(text.path)
    same_ort = [r.output is not None and r.output["token_ids"][0] == ort_model.generate(
        ort_model.prompt_ids(p), max_new, 0.0, 0) for p, r in zip(PROMPTS, res, strict=True)]
    return {"prompts": len(same), "identical": sum(same), "identical_ort": sum(same_ort)}


@dataclass
class Naive:
    """One naive deployment: its Celery app, its worker (Celery's defaults) and its two task names."""

    name: str  # "torch" | "ort"
    module: str
    queue: str
    env: dict[str, str]

    def start(self, engine: Engine, log_dir: Path) -> None:
        import importlib

        self.engine = engine
        self.app = importlib.import_module(self.module).make_app(self.env["BENCH_NAIVE_BROKER"])
        self.worker = start_worker(self.module, self.queue, self.env, log_dir / f"naive-{self.name}-worker.log")
        self.log_path = log_dir / f"naive-{self.name}-worker.log"

    def tasks(self) -> dict[str, Any]:
        return {"text": self.app.tasks[f"{self.queue}.text"], "image": self.app.tasks[f"{self.queue}.image"]}

    def warm(self, texts: Sequence[dict[str, Any]], images: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Until the pool's processes have loaded their models and served a few jobs of each kind; returns
        the deployment's pool, concurrency and memory."""
        t = self.tasks()
        ids = submit(self.engine, t["text"], "text", texts[:4]) + submit(self.engine, t["image"], "image", images[:4])
        wait_finished(self.engine, ids, 180, self.worker)
        proc = psutil.Process(self.worker.pid)
        kids = proc.children(recursive=True)
        return {"pool": "prefork (Celery's default)", "concurrency": len(kids), "cores": os.cpu_count(),
                "rss_mb": round(sum(p.memory_info().rss for p in [proc, *kids]) / 2**20, 1),
                "threads_per_process": 1}

    def cpu_s(self) -> float:
        proc = psutil.Process(self.worker.pid)
        return float(sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)]))

    def measure(self, kind: str, inputs: Sequence[dict[str, Any]], timeout: float = 1800) -> dict[str, Any]:
        cpu0 = self.cpu_s()
        t0 = time.time()
        ids = submit(self.engine, self.tasks()[kind], kind, inputs)
        submitted = time.time() - t0
        wait_finished(self.engine, ids, timeout, self.worker)
        res = summarize(self.engine, ids, t0)
        res["submit_s"] = round(submitted, 3)
        res["worker_cpu_ms_per_job"] = round((self.cpu_s() - cpu0) * 1000 / len(ids), 2)
        return res

    def stop(self) -> None:
        stop_worker(self.worker)
        self.app.close()


def torch_naive(broker_url: str, database_url: str, checkpoints: Path, tokenizer: Path) -> Naive:
    return Naive("torch", "bench.naive_worker", QUEUE, worker_env(broker_url, database_url, checkpoints, tokenizer))


def ort_naive(broker_url: str, database_url: str, text: ModelEntry, image: ModelEntry | None) -> Naive:
    from bench import naive_ort_worker

    env = dict(os.environ)
    env.update({"BENCH_NAIVE_BROKER": broker_url, "BENCH_NAIVE_DATABASE": database_url,
                "BENCH_NAIVE_TEXT_MODEL": str(text.path.resolve()), "PYTHONUNBUFFERED": "1"})
    if image is not None:
        env["BENCH_NAIVE_IMAGE_MODEL"] = str(image.path.resolve())
    return Naive("ort", "bench.naive_ort_worker", naive_ort_worker.QUEUE, env)
