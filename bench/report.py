"""Results on disk: ``results/<timestamp>.json`` + ``results/latest.json`` (raw details under ``scenarios``,
flat dotted keys under ``metrics``), and RESULTS.md with tables and plots, regenerated from the same dict.

RESULTS.md only ever shows figures from the run that produced it; the hand-written analysis (profiles, fix
suggestions) lives in bench/FINDINGS.md and is included as is.
"""

from __future__ import annotations

import json
import operator
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import continuous, engine_bench, load, submit, system
from genqueue.registry import ModelEntry

# (metric key, comparison, target): a number, or the key of a same-run ceiling that the target is 0.8 times.
# The end-to-end rows are those of the transport's figures; the engine rows keep the engine's own targets.
TARGETS: list[tuple[str, str, float | str]] = [
    ("system.image.efficiency", ">=", 0.6),
    ("system.text.efficiency", ">=", 0.8),
    ("system.image.vs_naive", ">=", "system.image.ceiling_vs_naive"),
    ("system.text.vs_naive", ">=", "system.text.ceiling_vs_naive"),
    ("system.image.vs_naive_ort", ">=", "system.image.ceiling_vs_naive_ort"),
    ("system.text.vs_naive_ort", ">=", "system.text.ceiling_vs_naive_ort"),
    ("system.gpt2.text.vs_naive", ">=", 10),
    ("system.gpt2.text.vs_naive_ort", ">=", "system.gpt2.text.ceiling_vs_naive_ort"),
    ("submit.bulk_vs_delay", ">=", 10),
    ("submit.single_vs_delay", ">=", 1),
    ("system.image.vs_noop_celery", ">=", 5),
    ("worker.rss_mb", "<=", 400),
    ("engine.text.batch_gain", ">=", 4),
    ("engine.image.batch_gain", ">=", 4),
    ("engine.text.continuous_vs_static", ">=", 1.5),
    ("engine.text.short_latency_ratio", "<=", 0.5),
]
CEILING_SHARE = 0.8
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}
FINDINGS = Path(__file__).resolve().parent / "FINDINGS.md"


def describe_model(entry: ModelEntry) -> dict[str, Any]:
    """What a model is, read from its manifest: the record describes what ran, not what was meant to."""
    m = entry.manifest
    out: dict[str, Any] = {"ref": entry.ref, "kind": m.kind.value, "precision": m.precision,
                           "params": int(m.metrics["params"]) if "params" in m.metrics else None,
                           "source": m.extra.get("exporter")}
    if m.text is not None:
        t = m.text
        out.update(layers=t.n_layer, d_model=t.n_embd, heads=t.n_head, vocab=t.vocab_size, context=t.context_length,
                   kv_contract=t.kv_contract)
    if m.image is not None:
        i = m.image
        out.update(latent=i.latent_size, classes=i.num_classes, shape=f"{i.channels}x{i.height}x{i.width}")
    return out


def model_line(d: dict[str, Any]) -> str:
    params = f", {d['params'] / 1e6:.1f}M parameters" if d.get("params") else ""
    if d["kind"] == "text":
        return (f"`{d['ref']}`: GPT, {d['layers']} layers, d{d['d_model']}, {d['heads']} heads, vocab {d['vocab']}, "
                f"context {d['context']}, {d['precision']}, KV contract {d['kv_contract']}{params}")
    return (f"`{d['ref']}`: image generator, latent {d['latent']}, {d['classes']} classes, {d['shape']}, "
            f"{d['precision']}{params}")


def collect_metrics(results: dict[str, Any]) -> dict[str, Any]:
    sc = results["scenarios"]
    m: dict[str, Any] = {}
    if "engine" in sc:
        m.update(engine_bench.metrics(sc["engine"]))
    if "continuous" in sc:
        m.update(continuous.metrics(sc["continuous"]))
    if "system" in sc:
        m.update(system.metrics(sc["system"]))
    if "gpt2" in sc:
        m.update(system.metrics(sc["gpt2"], prefix="system.gpt2"))
    if "submit" in sc:
        m.update(submit.metrics(sc["submit"]))
    if "load" in sc:
        m.update(load.metrics(sc["load"]))
    diag = sc.get("diagnostics")
    if diag and "sql" in diag:
        m["diag.sql.per_job_ms"] = diag["sql"]["per_job_ms"]
        m["diag.sql.batched_ms_per_job"] = diag["sql"]["batched_ms_per_job"]
        m["diag.publish.genqueue_us"] = diag["publish"]["genqueue_publish_us"]
        m["diag.publish.celery_send_task_us"] = diag["publish"]["celery_send_task_us"]
        m["diag.publish.raw_pipeline_us"] = diag["publish"]["raw_pipeline_us"]
    greedy = results.get("torch_parity", {}).get("greedy")
    if greedy:
        m["naive.greedy_identical_fraction"] = round(greedy["identical"] / max(1, greedy["prompts"]), 3)
        if "identical_ort" in greedy:
            m["naive_ort.greedy_identical_fraction"] = round(greedy["identical_ort"] / max(1, greedy["prompts"]), 3)
    return dict(sorted(m.items()))


def target_value(metrics: dict[str, Any], target: float | str) -> float | None:
    if isinstance(target, str):
        ceiling = metrics.get(target)
        return None if ceiling is None else round(CEILING_SHARE * float(ceiling), 2)
    return float(target)


def target_rows(metrics: dict[str, Any], mode: str = "full") -> list[tuple[str, str, str, str]]:
    rows = []
    for key, op, target in TARGETS:
        value, goal = metrics.get(key), target_value(metrics, target)
        if value is None and key.startswith("system.gpt2.") and mode != "full":
            rows.append((key, f"{op} {target if isinstance(target, (int, float)) else '0.8 × its ceiling'}",
                         "—", "full mode only (`make bench`)"))
            continue
        shown = f"{op} {goal:g}" if goal is not None else f"{op} {CEILING_SHARE} × `{target}` (not measured)"
        if isinstance(target, str) and goal is not None:
            shown += f" (0.8 × `{target.rsplit('.', 1)[-1]}` {metrics[target]:g})"
        met = ("not measured" if value is None or goal is None
               else "met" if _OPS[op](float(value), goal) else "**missed**")
        rows.append((key, shown, "—" if value is None else f"{value:g}", met))
    return rows


def kept_sections(old: str) -> str:
    """The sections of RESULTS.md that their own commands record (python -m bench.bulk_cli --record, python -m
    bench.reliability --record, python -m bench.gpu_record), each between its markers, in the order they stand: a
    rewrite keeps them."""
    from bench import bulk_cli, gpu_record, reliability, sections

    return sections.kept(old, [(bulk_cli.MARK_BEGIN, bulk_cli.MARK_END), (reliability.MARK_BEGIN, reliability.MARK_END),
                               (gpu_record.MARK_BEGIN, gpu_record.MARK_END)])


def _tail(old: str) -> str:
    """What follows the run's own figures: the kept sections and, until a GPU run is recorded, a line saying
    that it is pending."""
    from bench import gpu_record

    kept = kept_sections(old)
    return kept if gpu_record.MARK_BEGIN in kept else kept + "\n" + gpu_record.PENDING


def _write_markdown(results: dict[str, Any], base: Path, pngs: list[Path]) -> Path:
    """RESULTS.md: this run's figures, then the sections their own commands recorded (kept as they were)."""
    md = base / "RESULTS.md"
    md.write_text(render(results, [p.relative_to(base) for p in pngs]) + _tail(md.read_text() if md.exists() else ""))
    return md


def write_all(results: dict[str, Any], out_dir: Path, markdown: bool = True, record: bool = True) -> list[Path]:
    """<timestamp>.json always; with ``record``, also latest.json and (with ``markdown``) RESULTS.md + plots,
    the record that README and FINDINGS quote."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["started_at"].replace(":", "").replace("-", "").replace("+0000", "Z")
    text = json.dumps(results, indent=1, default=str) + "\n"
    written = [out_dir / f"{stamp}.json", *([out_dir / "latest.json"] if record else [])]
    for p in written:
        p.write_text(text)
    if markdown and record:
        from bench import plots

        base = out_dir.parent
        pngs = plots.write_all(results, base / "plots")
        md = _write_markdown(results, base, pngs)
        written += [md, *pngs]
    return written


def _make_target(mode: str) -> str:
    target = {"quick": "make bench-quick", "full": "make bench"}.get(mode)
    return f"`{target}`, which runs " if target else ""


def _sampling(sm: dict[str, Any]) -> str:
    if not sm:
        return "not recorded"
    parts = [f"temperature {sm.get('temperature')}, no top-k/top-p, one candidate per job, EOS ends a job (the engine "
             f"batch sweep and continuous-vs-static ignore EOS); seeds per job"]
    for what, rng in sm.get("max_new_tokens", {}).items():
        parts.append(f"{what}: max_new_tokens " + (f"exactly {rng[0]}" if rng[0] == rng[1] else
                                                     f"uniform in {rng[0]}–{rng[1]}"))
    if sm.get("images_per_job"):
        parts.append(f"image jobs: {sm['images_per_job']} image each")
    return "; ".join(parts)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join("—" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _lat(d: dict[str, Any]) -> str:
    return f"{d.get('p50', '—')} / {d.get('p95', '—')} / {d.get('p99', '—')}"


def _load(mach: dict[str, Any]) -> str:
    start, end = mach.get("load_avg"), mach.get("load_avg_end")
    if not start:
        return "the load from other processes was not recorded for this run"
    said = f"load average (1, 5, 15 min) {', '.join(map(str, start))} at the start"
    return said + (f" and {', '.join(map(str, end))} at the end" if end else "")


def render(results: dict[str, Any], pngs: list[Path]) -> str:
    m, sc, mach, cfg = results["metrics"], results["scenarios"], results["machine"], results["config"]
    out = [
        "# genqueue benchmark results\n",
        "Generated by `bench/report.py` from `bench/results/latest.json`; every figure below was measured by the "
        "run described here. **This run's figures come from a "
        f"{mach.get('affinity_cores') or mach.get('cores')}-core CPU machine without a GPU**; {_load(mach)}. "
        "Absolute rates on such a machine move between runs; the ratios are same-run A/B comparisons.\n",
        f"- command: {_make_target(results['mode'])}`{results['command']}`, mode `{results['mode']}`",
        f"- started {results['started_at']}, took {results['timings_s'].get('total')} s "
        f"(per scenario: {', '.join(f'{k} {v}s' for k, v in results['timings_s'].items() if k != 'total')})",
        f"- code: commit `{results.get('code', {}).get('commit')}` ({results.get('code', {}).get('subject')}); "
        f"files modified outside bench/ at run time: {results.get('code', {}).get('modified_outside_bench') or 'none'}",
        f"- machine: {mach.get('cpu')}, {mach.get('cores')} cores ({mach.get('affinity_cores')} usable), "
        f"Python {mach.get('python')}, onnxruntime {mach.get('onnxruntime')}; provider that ran: "
        f"{sc.get('continuous', {}).get('continuous', {}).get('provider', 'CPUExecutionProvider')} "
        f"(available: {', '.join(mach.get('available_providers') or [])}; CUDA falls back to CPU here)",
        *[f"- model {model_line(d)}" for d in results.get("model_info", {}).values()],
        f"- sampling: {_sampling(results.get('sampling', {}))}\n",
        "## Targets\n",
        _table(["metric", "target", "measured", "status"], [list(r) for r in target_rows(m, results['mode'])]),
    ]
    if "engine" in sc:
        out += _engine_section(sc["engine"], m)
    if "continuous" in sc:
        c = sc["continuous"]
        out += ["## Continuous vs static batching (engine, in process)\n",
                f"{c['continuous']['jobs']} jobs, max_new_tokens uniform in {cfg.get('continuous_min_new')}–"
                f"{cfg.get('continuous_max_new')}, {c['continuous']['slots']} slots, EOS ignored (both policies "
                f"generate the same tokens); {cfg.get('continuous_repeats', cfg.get('repeats'))} alternating runs per "
                f"policy. The table shows each policy's fastest run; the ratios are the medians over the side-by-side "
                f"run pairs. Every pair, in order (tokens/s ratio; short-job latency ratio): "
                f"{c.get('throughput_ratio_by_pair')}; {c.get('short_latency_ratio_by_pair')}.\n",
                _table(["policy", "tokens/s", "wall s", "decode steps", "useful row fraction",
                        "median latency ms", "short-job median ms"],
                       [[p, c[p]["tokens_per_s"], c[p]["wall_s"], c[p]["steps"], c[p]["useful_row_fraction"],
                         c[p]["latency_p50_ms"], c[p]["short_latency_p50_ms"]] for p in ("static", "continuous")]),
                f"continuous ÷ static tokens/s = **{c['throughput_ratio']}**; short jobs' median latency ratio = "
                f"**{c['short_latency_ratio']}** (medians of the pairs)\n"]
        if "prompt_cache_hits" in c["continuous"]:
            out += [f"The jobs cycle through 8 prompts, and both policies run with the engine's defaults: each call "
                    f"computes a prompt once, and the prompt cache served {c['static']['prompt_cache_hits']} (static) "
                    f"and {c['continuous']['prompt_cache_hits']} (continuous) of the {c['continuous']['jobs']} prompts.\n"]
        if "prompt_cache" in c:
            pc = c["prompt_cache"]
            out += [f"Prompt cache (`GENQUEUE_TEXT_PROMPT_CACHE_MB`): continuous batching on {pc['on']['jobs']} jobs "
                    f"that repeat 8 prompts of {pc['on'].get('prompt_tokens_mean', '?')} tokens on average with 8–32 "
                    f"new tokens each (`template_jobs`), cache "
                    f"off vs on, {len(pc['throughput_ratio_by_pair'])} alternating runs each (fastest run's figures, median of "
                    f"the pairs' ratios): "
                    f"{pc['off']['tokens_per_s']} vs {pc['on']['tokens_per_s']} tokens/s = "
                    f"**{pc['throughput_ratio']}×**, median latency {pc['off']['latency_p50_ms']} vs "
                    f"{pc['on']['latency_p50_ms']} ms (pairs: {pc['throughput_ratio_by_pair']}); prefill calls "
                    f"{pc['off']['prefill_calls']} vs {pc['on']['prefill_calls']}.\n"]
        if "lanes" in c:
            ln = c["lanes"]
            out += [f"The same comparison with {ln['lanes']} lanes (each policy per lane, the 32 slots split "
                    f"between lanes; fastest runs, and the medians of the pairs' ratios): continuous "
                    f"{ln['continuous']['tokens_per_s']} vs static "
                    f"{ln['static']['tokens_per_s']} tokens/s = **{ln['throughput_ratio']}×**, short-job median "
                    f"latency {ln['continuous']['short_latency_p50_ms']} vs {ln['static']['short_latency_p50_ms']} ms "
                    f"= **{ln['short_latency_ratio']}** (pairs: {ln['throughput_ratio_by_pair']}; "
                    f"{ln['short_latency_ratio_by_pair']}).\n"]
    if "system" in sc:
        out += _system_section(sc["system"], m, "system", "System: end to end against the naive deployments")
        greedy = m.get("naive.greedy_identical_fraction")
        if greedy is not None:
            out.append(f"Same work check: with temperature 0, genqueue's engine and the naive PyTorch loop produced "
                       f"identical tokens for {greedy:.0%} of the bench prompts, and the naive ONNX Runtime loop for "
                       f"{m.get('naive_ort.greedy_identical_fraction', 0):.0%} (the sampled runs differ only in their "
                       "random streams, so throughput is compared in tokens/s).\n")
    if "gpt2" in sc:
        out += _system_section(sc["gpt2"], m, "system.gpt2", "System on a GPT-2-small-shaped model (random weights)")
    if "submit" in sc:
        s = sc["submit"]
        out += ["## Submit: genqueue's endpoints vs a Celery `.delay()` loop (API only, no worker)\n",
                f"{len(s['rounds'])} rounds of bulk, `.delay()` loop, single submits; medians of the wall times, "
                f"and of the rounds' ratios.\n",
                _table(["path", "jobs", "wall s", "jobs/s"],
                       [["POST /v1/jobs/bulk (chunks of ≤1000, `Prefer: return=minimal`)", s["jobs"], s["bulk"]["wall_s"], s["bulk"]["jobs_per_s"]],
                        [f"POST /v1/jobs, {s['clients']} concurrent clients", s["jobs"], s["single"]["wall_s"],
                         s["single"]["jobs_per_s"]],
                        ["per job INSERT+COMMIT, then .delay(job_id)", s["jobs"], s["delay"]["wall_s"],
                         s["delay"]["jobs_per_s"]]]),
                f"bulk ÷ delay = **{s['bulk_vs_delay']}** (rounds: {_per_round([r['bulk_vs_delay'] for r in s['rounds']])}); "
                f"single ÷ delay = **{s['single_vs_delay']}** (rounds: "
                f"{_per_round([r['single_vs_delay'] for r in s['rounds']])}) (SQL: {s['database']}; same Redis)\n"]
    if "sql" in sc.get("diagnostics", {}):
        d = sc["diagnostics"]
        out += ["## Diagnostics: per-job costs behind the system and submit figures\n",
                f"`bench/sqlcost.py` on this run's SQL ({d['sql']['database']}) and Redis, single-threaded, "
                f"{d['sql']['jobs']} image-job rows:\n",
                _table(["what", "per job", "jobs/s"],
                       [["one job per transaction: claim_many + write_outcomes on one job",
                         f"{d['sql']['per_job_ms']} ms", d["sql"]["per_job_jobs_per_s"]],
                        [f"worker's grouped path: claim_many + write_outcomes, {d['sql']['batch']} jobs per transaction",
                         f"{d['sql']['batched_ms_per_job']} ms", d["sql"]["batched_jobs_per_s"]],
                        ["publish: genqueue.queue.publish, as of this run's code",
                         f"{d['publish']['genqueue_publish_us']} µs", None],
                        ["publish: Celery send_task per job (one producer batch)",
                         f"{d['publish']['celery_send_task_us']} µs", None],
                        ["publish: the same message bytes, LPUSH in one redis pipeline",
                         f"{d['publish']['raw_pipeline_us']} µs", None]])]
    if "load" in sc:
        ld = sc["load"]
        out += [f"## Load: Poisson arrivals (text jobs, one POST /v1/jobs each, {ld['duration_s']} s per level)\n",
                f"Capacity from the system scenario: {ld['capacity_jobs_per_s']} text jobs/s.\n",
                _table(["load", "offered jobs/s", "jobs", "served jobs/s", "queue p50/p95/p99 ms",
                        "total p50/p95/p99 ms", "submit errors"],
                       [[f"{pct}%", r["offered_rate_jobs_per_s"], r["jobs"], r["jobs_per_s"], _lat(r["queue_ms"]),
                         _lat(r["total_ms"]), r["submit_error_count"]] for pct, r in ld["levels"].items()])]
    if pngs:
        out += ["## Plots\n"] + [f"![{p.stem}]({p.as_posix()})\n" for p in pngs]
    out += ["## Other runs\n", "Figures from other runs, machines and scripts, and the analysis behind them, are in "
            "[FINDINGS.md](FINDINGS.md); none of them is repeated here.\n"]
    return "\n".join(out)


def _engine_section(e: dict[str, Any], m: dict[str, Any]) -> list[str]:
    ort, tt = e["text"]["ort"], e["text"]["torch"]
    rows = [[b, ort[b]["tokens_per_s"], tt.get(b, {}).get("tokens_per_s"),
             m.get(f"engine.text.ort_vs_torch.b{b}"), ort[b]["jobs"], ort[b]["tokens"]] for b in sorted(ort, key=int)]
    eng, fwd, ti = e["image"]["engine"], e["image"]["ort_forward"], e["image"]["torch"]
    one = e["image"].get("ort_forward_one_run", {})
    irows = [[b, eng.get(b, {}).get("images_per_s"), fwd[b]["images_per_s"], one.get(b, {}).get("images_per_s"),
              ti.get(b, {}).get("images_per_s"), m.get(f"engine.image.ort_vs_torch.b{b}")] for b in sorted(fwd, key=int)]
    return [
        "## Engine alone (in process)\n",
        f"Text: equal-length jobs, EOS ignored; torch/ORT max |Δlogit| = {e['parity']['text_max_abs_diff']:.2e} "
        f"(checked before timing). PyTorch eager = exporter/genqueue_exporter/gpt.py with the ONNX weights, static batch with KV "
        f"cache, its best thread count.\n",
        _table(["batch", "ORT engine tokens/s", "PyTorch eager tokens/s", "ORT ÷ torch", "jobs", "tokens"], rows),
        f"batch gain (32 ÷ 1) = **{m.get('engine.text.batch_gain')}**"
        + (f"; with {m['engine.text.lanes']} lanes (worker/genqueue_worker/engine/lanes.py: one batching loop per core over one "
           f"session) batch 32 makes {m.get('engine.text.tokens_per_s.b32_lanes')} tokens/s, "
           f"{m.get('engine.text.batch_gain_lanes')}× batch 1" if m.get("engine.text.lanes") else "") + "\n",
        f"Images: engine = dynamic batcher + PNG encoding; forward = the image runner's forward (one ORT run, or from "
        f"8 images one single-threaded sub-batch per core, worker/genqueue_worker/engine/ort_image.py); one ORT run = the same "
        f"forward never split; torch = exporter/genqueue_exporter/dcgan.py forward with the ONNX weights (max |Δ| = "
        f"{e['parity']['image_max_abs_diff']:.2e}).\n",
        _table(["batch", "engine images/s", "ORT forward images/s", "one ORT run images/s", "PyTorch forward images/s",
                "ORT ÷ torch"], irows),
        f"batch gain (64 ÷ 1): engine **{m.get('engine.image.batch_gain')}**, forward only "
        f"{m.get('engine.image.forward_batch_gain')}\n",
        *_host_note(e["image"].get("host_ceiling")),
        *_compute_note(e["image"].get("compute")),
    ]


def _host_note(hc: dict[str, Any] | None) -> list[str]:
    if not hc:
        return []
    lo, hi = hc["small"], hc["large"]
    return [
        f"Host ceiling: the same engine around a forward that costs nothing (replayed images, "
        f"`image_host_ceiling`) makes {lo['images_per_s']} images/s at batch {lo['batch_size']} and "
        f"{hi['images_per_s']} at batch {hi['batch_size']} ({hc['ratio']}×). No device can take batch "
        f"{hi['batch_size']} past that rate while the per-image host work (latents, PNG encoding, bookkeeping) "
        f"stays as it is, so a batch gain of 4 needs a batch-{lo['batch_size']} engine at or below a quarter of it; "
        f"see FINDINGS item 16.\n",
    ]


def _compute_note(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    fg = c["forward_gflops"]
    lo, hi = ("1", "64") if {"1", "64"} <= set(fg) else (min(fg, key=int), max(fg, key=int))
    share = fg[lo] / c["gemm_gflops"] if c["gemm_gflops"] else 0.0
    return [
        f"Compute: the generator costs {c['mflop_per_image']} MFLOP per image, so the ORT forward runs at "
        f"{fg[lo]} GFLOP/s at batch {lo} and {fg[hi]} GFLOP/s at batch {hi}, against {c['gemm_gflops']} GFLOP/s "
        f"for a 1024³ fp32 matrix product (numpy, all cores) on this machine: batch {lo} already runs at "
        f"{share:.0%} of that rate, so no batch size can be much more than {1 / share if share else 0:.1f}× faster "
        f"here. Batching pays where a batch-1 forward leaves the device idle (a GPU); see FINDINGS.\n",
    ]


def _per_round(values: list[float] | None) -> str:
    return ", ".join(f"{v:g}" for v in values) if values else "—"


def _system_section(s: dict[str, Any], m: dict[str, Any], prefix: str, title: str) -> list[str]:
    per = system.ratios(s, prefix)
    kinds = [k for k in ("text", "image") if s["rounds"] and k in s["rounds"][0]]
    unit = {"text": "tokens/s", "image": "images/s"}
    rows = []
    for kind in kinds:
        for label, key in (("genqueue (system)", "units_per_s"), ("engine alone, worker's settings", "engine_limit_units_per_s"),
                           ("naive PyTorch", "naive_torch_units_per_s"), ("naive ONNX Runtime", "naive_ort_units_per_s")):
            vals = per.get(f"{prefix}.{kind}.{key}")
            if vals:
                rows.append([f"{kind}: {label}", unit[kind], _per_round(vals), f"{statistics.median(vals):g}"])
    ratio_rows = []
    for kind in kinds:
        for r in ("efficiency", "vs_naive", "ceiling_vs_naive", "vs_naive_ort", "ceiling_vs_naive_ort", "vs_noop_celery"):
            key = f"{prefix}.{kind}.{r}"
            if key in per:
                ratio_rows.append([f"`{key}`", _per_round(per[key]), f"**{m.get(key)}**"])
    first = s["rounds"][0] if s["rounds"] else {}
    lat_rows = [[kind, f"{first[kind]['system']['jobs']}", _lat(first[kind]["system"]["queue_ms"]),
                 _lat(first[kind]["system"]["total_ms"]), first[kind]["system"]["mean_batch_size"],
                 ", ".join(f"{k} {v}" for k, v in first[kind]["system"]["cpu_ms_per_job"].items())]
                for kind in kinds]
    out = [
        f"## {title}\n",
        f"Models: {', '.join(f'`{v}`' for v in s.get('models', {}).values())}. Settings: {s['settings']}. "
        f"{len(s['rounds'])} alternating rounds; in each, per kind: the engine alone in process (configured from "
        f"the worker's settings, the worker idle), the system (HTTP bulk submit → SQL → Redis → worker → SQL, "
        f"from the first submit to the last `finished_at`), then each naive deployment, all on the same jobs. "
        f"Ratios are taken within a round; the figure is their median.\n",
        _table(["run", "unit", "per round", "median"], rows),
        _table(["ratio", "per round", "median"], ratio_rows),
        "First round, latencies and CPU milliseconds per job by process (where the time goes):\n",
        _table(["kind", "jobs", "queue p50/p95/p99 ms", "total p50/p95/p99 ms", "mean batch", "CPU ms per job"],
               lat_rows),
    ]
    if f"{prefix}.text.tokens_match_engine_limit" in m:
        out.append(f"The system's text jobs generated exactly the engine-alone run's tokens in every round: "
                   f"**{m[f'{prefix}.text.tokens_match_engine_limit']}** (seeded per job).\n")
    for name, d in s.get("naive_deployments", {}).items():
        rt = "PyTorch eager (exporter/genqueue_exporter/gpt.py and dcgan.py, ONNX weights), one torch thread" \
            if name == "torch" else "ONNX Runtime on the exported ONNX files, one intra-op thread, its own KV-cache loop"
        out.append(f"Naive {name}: {rt} per process, batch 1, one Celery task per job; Celery pool {d['pool']}, "
                   f"concurrency {d['concurrency']} on {d['cores']} cores, RSS {d['rss_mb']} MB after warm-up.\n")
    if "noop_celery" in s:
        nc = s["noop_celery"]
        out.append(f"Empty tasks: one Celery worker with default settings (pool {nc['pool']}, concurrency "
                   f"{nc['concurrency']}) on the same Redis, `bench/noop_worker.py`; "
                   f"{m.get('noop_celery.tasks_per_s')} tasks/s (median). `vs_noop_celery` = genqueue's image jobs/s "
                   f"end to end ÷ that.\n")
    if "worker" in s:
        out.append(f"genqueue worker process RSS with its models loaded and used: **{s['worker']['rss_mb']} MB**; torch "
                   f"in the worker's sys.modules (heartbeat `torch_loaded`): **{s['worker']['torch_loaded']}**.\n")
    return out


def rerender(results_dir: Path) -> Path:
    """RESULTS.md and plots again from ``results_dir/latest.json`` (after editing FINDINGS.md); no new figures."""
    from bench import plots

    results = json.loads((results_dir / "latest.json").read_text())
    base = results_dir.parent
    pngs = plots.write_all(results, base / "plots")
    return _write_markdown(results, base, pngs)


if __name__ == "__main__":
    import sys

    print(rerender(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"))
