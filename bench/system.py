"""``system`` scenario: end to end through HTTP bulk submit -> SQL -> Redis -> worker -> SQL.

N text jobs, then N image jobs (one image each), each set submitted at once through POST /v1/jobs/bulk.
Throughput runs from the first submit to the last ``finished_at``; latencies come from the job rows
(queue = started_at - created_at, total = finished_at - created_at). The engine limit runs the very same
jobs through the engine alone, configured from the worker's settings (ORT threads and spinning, batch
sizes), which gives ``efficiency``; the naive deployments run them too, which gives ``vs_naive`` and
``vs_naive_ort``. All of these alternate within rounds, and every ratio is the median over the rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from bench.config import BenchConfig
from bench.naive import Naive
from bench.noopcelery import NoopCelery
from bench.stackrun import BenchStack, CpuMeter, job_rows, submit_bulk, summarize, wait_done
from bench.workload import image_inputs, image_request, text_inputs, text_request
from genqueue.registry import ModelEntry
from genqueue.settings import Settings


def workloads(cfg: BenchConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (text_inputs(cfg.system_text_jobs, cfg.text_min_new, cfg.text_max_new),
            image_inputs(cfg.system_image_jobs))


def engine_limit(settings: Settings, entry: ModelEntry, kind: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The system's jobs of one kind through the engine alone, in process, built by the worker's loader from
    the worker's settings, and warm as a serving worker's engine is: the same jobs run once untimed (every
    batch shape seen, ORT's arenas and the reserved KV cache touched), then once timed."""
    from bench import engine_benchmarks
    from genqueue_worker.engine import load_engine
    from genqueue_worker.engine.image_engine import ImageEngine
    from genqueue_worker.engine.loader import engine_configs

    def requests() -> list[Any]:
        if kind == "text":
            return [text_request(f"sys-{i}", inp) for i, inp in enumerate(inputs)]
        return [image_request(f"sys-{i}", inp) for i, inp in enumerate(inputs)]

    # The worker's own engine configuration (ORT threads and spinning, batch sizes, lanes), from the settings.
    engine = load_engine(entry, provider=settings.provider, config=engine_configs(settings).for_kind(entry.manifest.kind))

    def run(reqs: list[Any]) -> list[Any]:
        if isinstance(engine, ImageEngine):
            return engine.run_all(reqs)
        return engine_benchmarks.run_all(engine, reqs)

    try:
        run(requests())  # warm-up on the same jobs, as a serving worker is warm
        reqs = requests()
        t0 = time.perf_counter()
        results = run(reqs)
        wall = time.perf_counter() - t0
    finally:
        engine.stop()
    failed = sum(r.status != "succeeded" for r in results)
    if failed:
        raise RuntimeError(f"engine alone: {failed} of {len(results)} {kind} jobs failed")
    out: dict[str, Any] = {"jobs": len(results), "wall_s": round(wall, 4), "warm": True}
    if kind == "text":
        tokens = int(sum(r.metrics.get("tokens", 0.0) for r in results))
        out.update(tokens=tokens, tokens_per_s=round(tokens / wall, 1))
    else:
        out.update(images=len(results), images_per_s=round(len(results) / wall, 1))
    return out


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


def settings_summary(bs: BenchStack) -> dict[str, Any]:
    return {"text_max_running": bs.settings.text_max_running, "image_max_batch_size": bs.settings.image_max_batch_size,
            "image_max_queue_delay_ms": bs.settings.image_max_queue_delay_ms,
            "worker_concurrency": bs.settings.worker_concurrency, "ort_threads": bs.settings.ort_threads,
            "ort_allow_spinning": bs.settings.ort_allow_spinning,
            "database": bs.settings.sqlalchemy_url.split(":", 1)[0],
            "redis": "embedded" if bs.broker_url.startswith("redis+socket") else "configured"}


def run(cfg: BenchConfig, bs: BenchStack, models: dict[str, ModelEntry], inputs: dict[str, list[dict[str, Any]]],
        naives: Sequence[Naive], noop: NoopCelery | None, log: Callable[[str], None] = print,
        rounds: int = 3) -> dict[str, Any]:
    """``rounds`` alternating rounds; in each, per kind: the engine limit (in process, the worker idle), the
    system, then each naive deployment, on the same jobs; then the no-op Celery run. Every ratio is taken
    within a round, and the metrics are the medians over the rounds."""
    # Warm the system as the engine limit is warmed: the same jobs once, untimed (every batch shape seen, ORT's
    # arenas grown, the first HTTP requests and claims made), so that round 1 measures a serving stack rather
    # than its start (bench/FINDINGS.md, item 28). The naive deployments run at batch 1 and are warm after a few
    # jobs of each kind (bench/naive.py).
    for entry_name, kind in [(e.name, k) for k, e in models.items()]:
        wait_done(bs.db, submit_bulk(bs.client, entry_name, inputs[kind]), 1800)
    out: dict[str, Any] = {"rounds": [], "settings": settings_summary(bs), "models": {k: e.ref for k, e in models.items()}}
    for r in range(rounds):
        rnd: dict[str, Any] = {}
        for kind, entry in models.items():
            unit = "tokens/s" if kind == "text" else "images/s"
            lim = engine_limit(bs.settings, entry, kind, inputs[kind])
            res = _phase(bs, entry.name, inputs[kind], 1800.0)
            row = {"engine_limit": lim, "system": res}
            for nv in naives:
                row[f"naive_{nv.name}"] = nv.measure(kind, inputs[kind])
            rnd[kind] = row
            log(f"round {r + 1} {entry.name}: engine alone {lim.get('tokens_per_s', lim.get('images_per_s'))}, "
                f"system {res['units_per_s']} {unit} ({res['jobs_per_s']} jobs/s, total p50 "
                f"{res['total_ms'].get('p50')} ms)" + "".join(
                    f", naive {nv.name} {row['naive_' + nv.name]['units_per_s']}" for nv in naives))
        if noop is not None:
            rnd["noop_celery"] = noop.measure(cfg.noop_tasks)
            log(f"round {r + 1} empty Celery tasks: {rnd['noop_celery']['tasks_per_s']} tasks/s")
        out["rounds"].append(rnd)
    out["worker"] = worker_memory(bs)
    log(f"worker RSS {out['worker']['rss_mb']} MB, torch loaded in worker: {out['worker']['torch_loaded']}")
    return out


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _units(r: dict[str, Any]) -> float:
    """Tokens/s or images/s of a system or naive phase (``units_per_s``) or of an engine-alone run."""
    for key in ("units_per_s", "tokens_per_s", "images_per_s"):
        if key in r:
            return float(r[key])
    raise KeyError(f"no throughput in {sorted(r)}")


def ratios(res: dict[str, Any], prefix: str = "system") -> dict[str, Any]:
    """Per-round ratios (lists) and their medians (the metrics), keyed ``<prefix>.<kind>.<ratio>``."""
    per: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        per.setdefault(key, []).append(round(value, 3))

    for rnd in res["rounds"]:
        for kind in ("text", "image"):
            row = rnd.get(kind)
            if row is None:
                continue
            sysu, lim = _units(row["system"]), _units(row["engine_limit"])
            add(f"{prefix}.{kind}.units_per_s", sysu)
            add(f"{prefix}.{kind}.engine_limit_units_per_s", lim)
            add(f"{prefix}.{kind}.efficiency", sysu / lim)
            for name, suffix in (("naive_torch", "vs_naive"), ("naive_ort", "vs_naive_ort")):
                if name in row:
                    nv = _units(row[name])
                    add(f"{prefix}.{kind}.{name}_units_per_s", nv)
                    add(f"{prefix}.{kind}.{suffix}", sysu / nv)
                    add(f"{prefix}.{kind}.ceiling_{suffix}", lim / nv)
            if kind == "image" and "noop_celery" in rnd:
                add(f"{prefix}.image.vs_noop_celery", row["system"]["jobs_per_s"] / rnd["noop_celery"]["tasks_per_s"])
    return {k: v for k, v in per.items()}


def metrics(res: dict[str, Any], prefix: str = "system") -> dict[str, float | bool]:
    per = ratios(res, prefix)
    m: dict[str, float | bool] = {k: round(_median(v), 3 if "efficiency" in k else 2) for k, v in per.items()}
    names = {"units_per_s": "", "engine_limit_units_per_s": "engine_limit_", "naive_torch_units_per_s": "naive_",
             "naive_ort_units_per_s": "naive_ort_"}
    for key in list(m):  # the throughputs under their unit's name: tokens_per_s / images_per_s
        kind, what = key.split(".")[-2], key.split(".")[-1]
        if what in names:
            m[f"{key.rsplit('.', 1)[0]}.{names[what]}{'tokens' if kind == 'text' else 'images'}_per_s"] = m.pop(key)
    rounds = res["rounds"]
    if rounds and "text" in rounds[0]:
        m[f"{prefix}.text.tokens_match_engine_limit"] = all(
            r["text"]["system"]["units"] == r["text"]["engine_limit"]["tokens"] for r in rounds)
        last = rounds[len(rounds) // 2]["text"]["system"]
        m[f"{prefix}.text.jobs_per_s"] = last["jobs_per_s"]
    if "noop_celery" in (rounds[0] if rounds else {}):
        m["noop_celery.tasks_per_s"] = round(_median([r["noop_celery"]["tasks_per_s"] for r in rounds]), 1)
    if "worker" in res:  # the main stack's worker is `worker.*`; another stack's is under its prefix
        wk = "worker" if prefix == "system" else f"{prefix}.worker"
        m[f"{wk}.rss_mb"] = res["worker"]["rss_mb"]
        m[f"{wk}.torch_loaded"] = res["worker"]["torch_loaded"]
    for kind in ("text", "image"):
        lat = [r[kind]["system"] for r in rounds if kind in r]
        for which in ("queue_ms", "total_ms"):
            for p in ("p50", "p95", "p99"):
                vals = [x[which][p] for x in lat if p in x[which]]
                if vals:
                    m[f"{prefix}.{kind}.{which.removesuffix('_ms')}_{p}_ms"] = round(_median(vals), 1)
    return m
