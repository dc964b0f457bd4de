"""Runs the scenarios in an order that keeps them from disturbing each other, then writes the results.

1. engine + continuous: in process, before any stack is up;
2. submit: a stack with the API only (no worker consumes), then its messages are purged;
3. system, naive, load: a stack with API + one worker, beside the two naive Celery deployments and a
   no-op Celery worker; rounds alternate the engine alone (in process), the system and each naive on the
   same jobs, each idle outside its own phase; load runs last;
4. full mode: the same rounds on a GPT-2-small-shaped model (bench/gpt2.py), on a stack of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import continuous, engine_bench, load, machine, naive, report, submit, system
from bench.config import MODES, BenchConfig
from bench.stackrun import running
from bench.workload import TEMPERATURE, text_inputs
from genqueue.registry import ModelEntry, Registry
from genqueue.settings import Settings

SCENARIOS = ("engine", "continuous", "submit", "diagnostics", "system", "naive", "load", "gpt2")
BENCH_DIR = Path(__file__).resolve().parent


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cfg: BenchConfig, settings: Settings, only: set[str], out_dir: Path, log: Callable[[str], None] = _log,
        markdown: bool = True, record: bool = True) -> dict[str, Any]:
    """``out_dir`` gets <timestamp>.json and, with ``record``, latest.json; with ``markdown`` and ``record``,
    its parent gets RESULTS.md and plots/*.png (bench/ for the default bench/results)."""
    t_start = time.monotonic()
    reg = Registry(settings.models_dir)
    text, image = reg.resolve("tiny-lm"), reg.resolve("dcgan-digits")
    data = settings.data_dir
    results: dict[str, Any] = {
        "mode": cfg.mode, "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "machine": machine.describe(), "code": _git(), "models": {"text": text.ref, "image": image.ref},
        "config": {k: v for k, v in vars(cfg).items()}, "scenarios": {}, "timings_s": {},
    }
    sc = results["scenarios"]
    results["model_info"] = {"text": report.describe_model(text), "image": report.describe_model(image)}
    results["sampling"] = {"temperature": TEMPERATURE, "images_per_job": 1, "max_new_tokens": {
        "system, naive and load text jobs": [cfg.text_min_new, cfg.text_max_new],
        "engine batch sweep": [cfg.engine_new_tokens, cfg.engine_new_tokens],
        "continuous vs static": [cfg.continuous_min_new, cfg.continuous_max_new]}}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        log(f"--- {name}")
        value = fn()
        results["timings_s"][name] = round(time.monotonic() - t0, 1)
        return value

    if "engine" in only:
        sc["engine"] = timed("engine", lambda: engine_bench.run(cfg, text, image, log))
    if "continuous" in only:
        sc["continuous"] = timed("continuous", lambda: continuous.run(cfg, text, log))
    if only & {"submit", "diagnostics"}:
        def _submit() -> None:
            with running(_sub(settings, data / "submit"), workers=0, timeout=cfg.stack_timeout_s) as bs:
                if "submit" in only:
                    inputs = text_inputs(cfg.submit_jobs, cfg.text_min_new, cfg.text_max_new)
                    sc["submit"] = timed("submit", lambda: submit.run(bs, inputs, log, rounds=cfg.pairs))
                if "diagnostics" in only:
                    sc["diagnostics"] = timed("diagnostics", lambda: diagnostics(bs, data / "sqlcost.db", log))
        timed("stack with API only", _submit)
    if only & {"system", "naive", "load"}:
        def _stack() -> None:
            with running(_sub(settings, data / "system"), workers=1, timeout=cfg.stack_timeout_s) as bs:
                if "system" in only or "load" in only:
                    naives = []
                    if "naive" in only:
                        results["torch_parity"] = _naive_setup(text, image, data / "checkpoints", log)
                        naives = _naives(bs, text, image, data / "checkpoints")
                    sc["system"] = timed("system", lambda: _system(cfg, bs, {"text": text, "image": image},
                                                                   dict(zip(("text", "image"), system.workloads(cfg),
                                                                            strict=True)), naives, True, log))
                if "load" in only:
                    cap = float(system.metrics(sc["system"])["system.text.jobs_per_s"])
                    texts, _ = system.workloads(cfg)
                    sc["load"] = timed("load", lambda: load.run(bs, texts, cap, cfg.load_fractions,
                                                                cfg.load_duration_s, log))
        timed("stack with worker", _stack)
    if "gpt2" in only and cfg.gpt2_jobs:
        def _gpt2() -> None:
            from bench import gpt2

            entry = timed("gpt2 model", lambda: gpt2.build(data / "gpt2-build", data / "gpt2-models"))
            results["models"]["gpt2"] = entry.ref
            results["model_info"]["gpt2"] = report.describe_model(entry)
            results["sampling"]["max_new_tokens"]["gpt2 text jobs"] = [cfg.gpt2_min_new, cfg.gpt2_max_new]
            inputs = text_inputs(cfg.gpt2_jobs, cfg.gpt2_min_new, cfg.gpt2_max_new)
            with running(_sub(settings, data / "system-gpt2").model_copy(update={"models_dir": data / "gpt2-models"}),
                         workers=1, timeout=cfg.stack_timeout_s) as bs:
                naives = []
                if "naive" in only:
                    results["gpt2_torch_parity"] = _naive_setup(entry, None, data / "checkpoints-gpt2", log, greedy=False)
                    naives = _naives(bs, entry, None, data / "checkpoints-gpt2")
                sc["gpt2"] = timed("system gpt2", lambda: _system(cfg, bs, {"text": entry}, {"text": inputs}, naives,
                                                                  False, log))
        timed("gpt2 stack", _gpt2)
    results["timings_s"]["total"] = round(time.monotonic() - t_start, 1)
    results["machine"]["load_avg_end"] = machine.load_avg()
    results["metrics"] = report.collect_metrics(results)
    written = report.write_all(results, out_dir, markdown=markdown, record=record)
    log(f"done in {results['timings_s']['total']} s; wrote {', '.join(str(p) for p in written)}")
    return results


def _naive_setup(text: ModelEntry, image: ModelEntry | None, ckpt: Path, log: Callable[[str], None],
                 greedy: bool = True) -> dict[str, Any]:
    """The PyTorch user's checkpoints, rebuilt from the ONNX weights and checked against ORT."""
    from bench import torch_models

    parity: dict[str, Any] = torch_models.export_checkpoints(text, image, ckpt)
    if greedy:
        parity["greedy"] = naive.greedy_agreement(text, ckpt)
        log(f"naive vs genqueue greedy outputs: {parity['greedy']}")
    return parity


def _naives(bs: Any, text: ModelEntry, image: ModelEntry | None, ckpt: Path) -> list[naive.Naive]:
    assert text.tokenizer_path is not None
    url = bs.settings.sqlalchemy_url
    return [naive.torch_naive(bs.broker_url, url, ckpt, text.tokenizer_path),
            naive.ort_naive(bs.broker_url, url, text, image)]


def _system(cfg: BenchConfig, bs: Any, models: dict[str, ModelEntry], inputs: dict[str, list[dict[str, Any]]],
            naives: list[naive.Naive], with_noop: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The naive deployments and the no-op Celery worker run beside the stack for the whole scenario (each
    idle outside its own phases), so the rounds alternate without restarts."""
    from bench import naive_store
    from bench.noopcelery import NoopCelery
    from genqueue.db.session import make_engine

    engine = make_engine(bs.settings.sqlalchemy_url)
    naive_store.create(engine)
    started: list[naive.Naive] = []
    noop = None
    try:
        deployments = {}
        for nv in naives:
            nv.start(engine, bs.stack.log_dir)
            started.append(nv)
        for nv in naives:
            deployments[nv.name] = nv.warm(inputs.get("text", []), inputs.get("image", []))
            log(f"naive {nv.name}: {deployments[nv.name]}")
        if with_noop:
            noop = NoopCelery(bs.broker_url, bs.stack.log_dir)
            noop.measure(50)  # warm: the pool is up and has served
        res = system.run(cfg, bs, models, inputs, naives, noop, log, rounds=cfg.pairs)
        res["naive_deployments"] = deployments
        if noop is not None:
            res["noop_celery"] = noop.describe()
        return res
    finally:
        for nv in started:
            nv.stop()
        if noop is not None:
            noop.stop()
        engine.dispose()


def diagnostics(bs: Any, sqlite_file: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Per-job SQL and publish costs on this stack's SQL and Redis (see bench/sqlcost.py)."""
    from bench import sqlcost

    url = bs.settings.sqlalchemy_url if bs.settings.database_url else f"sqlite:///{sqlite_file.resolve()}"
    try:  # these call the worker's and the API's internals, which may move under us: never fail the run
        sql = sqlcost.run(url, 512, 64)
        pub = sqlcost.publish_cost(bs.broker_url, bs.settings)
    except Exception as e:
        log(f"diagnostics skipped: {e!r}")
        return {"error": repr(e)}
    log(f"diagnostics: SQL per job, one job per transaction {sql['per_job_ms']} ms, 64 per transaction "
        f"{sql['batched_ms_per_job']} ms; publish µs/message: genqueue {pub['genqueue_publish_us']}, Celery "
        f"send_task {pub['celery_send_task_us']}, raw pipeline {pub['raw_pipeline_us']}")
    return {"sql": sql, "publish": pub}


def _git() -> dict[str, Any]:
    """The commit measured, and which files outside bench/ differed from it (read-only git calls)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True,
                                  timeout=10).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [ln[3:] for ln in git("status", "--porcelain").splitlines()
             if ln[3:] and not ln[3:].startswith(("bench/", "tests/bench/"))]
    return {"commit": git("rev-parse", "--short", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "modified_outside_bench": dirty}


def _sub(settings: Settings, data_dir: Path) -> Settings:
    """The same settings (configured Redis/SQL or the embedded defaults), in a data folder of its own."""
    return settings.model_copy(update={"data_dir": data_dir})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description="genqueue benchmarks")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="under 5 minutes on 2 cores")
    mode.add_argument("--full", action="store_const", const="full", dest="mode", help="larger runs (up to ~20 min)")
    mode.add_argument("--smoke", action="store_const", const="smoke", dest="mode", help="seconds; for tests")
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--models-dir", type=Path, default=None, help="default: GENQUEUE_MODELS_DIR or models")
    ap.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: <GENQUEUE_DATA_DIR>/bench (wiped first)")
    ap.add_argument("--no-report", action="store_true", help="write the JSON only (no RESULTS.md, no plots)")
    ap.add_argument("--record", action="store_true",
                    help="with --only: still replace latest.json and RESULTS.md (a full run always does)")
    args = ap.parse_args(argv)
    cfg = MODES[args.mode or "quick"]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    base = Settings()
    update: dict[str, Any] = {"data_dir": args.data_dir or base.data_dir / "bench"}
    if args.models_dir is not None:
        update["models_dir"] = args.models_dir
    settings = base.model_copy(update=update)
    for sub in ("submit", "system", "checkpoints", "system-gpt2", "checkpoints-gpt2", "sqlcost.db", "sqlcost.db-wal", "sqlcost.db-shm"):  # only what earlier bench runs created
        target = settings.data_dir / sub
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()
    # A subset run must not replace the full record that README and FINDINGS quote with a partial one.
    # ``gpt2`` runs in full mode only, so a quick run without it is still a whole record.
    record = only >= set(SCENARIOS) - ({"gpt2"} if not cfg.gpt2_jobs else set()) or args.record
    if not record:
        _log("a subset run: only results/<timestamp>.json is written (--record to replace the full record)")
    run(cfg, settings, only, args.results_dir, markdown=not args.no_report, record=record)
    return 0
