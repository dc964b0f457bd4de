"""``system`` scenario: end to end through HTTP bulk submit -> SQL -> Redis -> worker -> SQL.

N text jobs, then N image jobs (one image each), each set submitted at once through POST /v1/jobs/bulk.
Throughput runs from the first submit to the last ``finished_at``; latencies come from the job rows
(queue = started_at - created_at, total = finished_at - created_at). The engine limit runs the very same
jobs through the engine alone at the same maximum batch, which gives ``efficiency``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil

from bench import engine_bench
from bench.config import BenchConfig
from bench.stackrun import BenchStack, CpuMeter, job_rows, submit_bulk, summarize, wait_done
from bench.workload import image_inputs, image_request, text_inputs, text_request
from genqueue.registry import ModelEntry
from genqueue.settings import Settings
from genqueue_worker.engine.text_engine import TextEngineConfig


def workloads(cfg: BenchConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (text_inputs(cfg.system_text_jobs, cfg.text_min_new, cfg.text_max_new),
            image_inputs(cfg.system_image_jobs))


def engine_limit(cfg: BenchConfig, settings: Settings, text: ModelEntry, image: ModelEntry) -> dict[str, Any]:
    """The system's jobs through the engines alone, in process, at the worker's max batch sizes."""
    texts, images = workloads(cfg)
    treqs = [text_request(f"sys-{i}", inp) for i, inp in enumerate(texts)]
    tcfg = TextEngineConfig(max_batch_size=settings.text_max_running,
                            max_tokens_per_step=settings.text_max_tokens_per_step)
    t = engine_bench.best_of(cfg.repeats, lambda: engine_bench.ort_text(text, treqs, settings.text_max_running, tcfg))
    ireqs = [image_request(f"sys-{i}", inp) for i, inp in enumerate(images)]
    i = engine_bench.best_of(cfg.repeats, lambda: engine_bench.ort_images(image, ireqs, settings.image_max_batch_size))
    return {"text": t, "image": i}


def _phase(bs: BenchStack, model: str, inputs: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    meter = CpuMeter(bs.pids()).start()
    t0 = time.time()
    ids = submit_bulk(bs.client, model, inputs)
    submitted = time.time() - t0
    wait_done(bs.db, ids, timeout)
    cpu = meter.stop()
    out = summarize(job_rows(bs.db, ids), t0)
    out["submit_s"] = round(submitted, 3)
    out["cpu"] = cpu
    out["cpu_ms_per_job"] = {k.removesuffix("_cpu_s"): round(v * 1000 / max(1, len(ids)), 2)
                             for k, v in cpu.items() if k.endswith("_cpu_s")}
    return out


def worker_memory(bs: BenchStack) -> dict[str, Any]:
    """RSS of the worker process (both models loaded and used) and its heartbeat's torch check."""
    mine = {p.pid for p in bs.stack.procs}
    beats = [h for h in bs.stack.worker_heartbeats() if int(str(h.get("pid"))) in mine]
    if not beats:
        raise RuntimeError("no heartbeat from the bench stack's worker")
    hb = beats[0]
    proc = psutil.Process(int(str(hb["pid"])))
    rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    return {"pid": proc.pid, "rss_mb": round(rss / 2**20, 1), "torch_loaded": bool(hb.get("torch_loaded")),
            "refs": hb.get("refs"), "providers": hb.get("providers"), "threads": proc.num_threads()}


def run(cfg: BenchConfig, bs: BenchStack, log: Callable[[str], None] = print) -> dict[str, Any]:
    texts, images = workloads(cfg)
    timeout = 600.0
    # Warm the path once (first HTTP request, first claims) so the phases measure the steady state.
    warm = submit_bulk(bs.client, "tiny-lm", texts[:4]) + submit_bulk(bs.client, "dcgan-digits", images[:4])
    wait_done(bs.db, warm, 120)
    text = _phase(bs, "tiny-lm", texts, timeout)
    log(f"system text:  {text['units_per_s']:.1f} tokens/s, {text['jobs_per_s']} jobs/s, total p50/p99 "
        f"{text['total_ms'].get('p50')}/{text['total_ms'].get('p99')} ms, cpu ms/job {text['cpu_ms_per_job']}")
    image = _phase(bs, "dcgan-digits", images, timeout)
    log(f"system image: {image['units_per_s']:.1f} images/s, total p50/p99 "
        f"{image['total_ms'].get('p50')}/{image['total_ms'].get('p99')} ms, cpu ms/job {image['cpu_ms_per_job']}")
    mem = worker_memory(bs)
    log(f"worker RSS {mem['rss_mb']} MB, torch loaded in worker: {mem['torch_loaded']}")
    return {"text": text, "image": image, "worker": mem,
            "settings": {"text_max_running": bs.settings.text_max_running,
                         "image_max_batch_size": bs.settings.image_max_batch_size,
                         "image_max_queue_delay_ms": bs.settings.image_max_queue_delay_ms,
                         "worker_concurrency": bs.settings.worker_concurrency,
                         "database": bs.settings.sqlalchemy_url.split(":", 1)[0],
                         "redis": "embedded" if bs.broker_url.startswith("redis+socket") else "configured"}}


def metrics(res: dict[str, Any], limit: dict[str, Any], naive: dict[str, Any] | None) -> dict[str, float | bool]:
    t, i = res["text"], res["image"]
    m: dict[str, float | bool] = {
        "system.text.tokens_per_s": t["units_per_s"],
        "system.text.jobs_per_s": t["jobs_per_s"],
        "system.image.images_per_s": i["units_per_s"],
        "system.text.engine_limit_tokens_per_s": limit["text"]["tokens_per_s"],
        "system.image.engine_limit_images_per_s": limit["image"]["images_per_s"],
        "system.text.efficiency": round(t["units_per_s"] / limit["text"]["tokens_per_s"], 3),
        "system.image.efficiency": round(i["units_per_s"] / limit["image"]["images_per_s"], 3),
        "system.text.tokens_match_engine_limit": t["units"] == limit["text"]["tokens"],
        "worker.rss_mb": res["worker"]["rss_mb"],
        "worker.torch_loaded": res["worker"]["torch_loaded"],
    }
    for kind, r in (("text", t), ("image", i)):
        for lat in ("queue_ms", "total_ms"):
            for p in ("p50", "p95", "p99"):
                if p in r[lat]:
                    m[f"system.{kind}.{lat.removesuffix('_ms')}_{p}_ms"] = r[lat][p]
    if naive is not None:
        m["naive.text.tokens_per_s"] = naive["text"]["units_per_s"]
        m["naive.image.images_per_s"] = naive["image"]["units_per_s"]
        m["system.text.vs_naive"] = round(t["units_per_s"] / naive["text"]["units_per_s"], 2)
        m["system.image.vs_naive"] = round(i["units_per_s"] / naive["image"]["units_per_s"], 2)
        # The most vs_naive could reach here: the engine alone on the same jobs, over the naive baseline.
        m["system.text.engine_limit_vs_naive"] = round(limit["text"]["tokens_per_s"] / naive["text"]["units_per_s"], 2)
        m["system.image.engine_limit_vs_naive"] = round(limit["image"]["images_per_s"] / naive["image"]["units_per_s"], 2)
    return m
