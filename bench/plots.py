"""PNG plots for RESULTS.md (matplotlib, Agg backend): one figure per scenario that ran."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def engine(e: dict[str, Any], path: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ort, tt = e["text"]["ort"], e["text"]["torch"]
    xs = sorted(map(int, ort))
    a.plot(xs, [ort[str(x)]["tokens_per_s"] for x in xs], "o-", label="ORT engine (continuous)")
    tx = sorted(map(int, tt))
    a.plot(tx, [tt[str(x)]["tokens_per_s"] for x in tx], "s--", label="PyTorch eager (static, KV cache)")
    a.set(xscale="log", xlabel="batch size", ylabel="tokens/s", title="text engine")
    a.set_xticks(xs, [str(x) for x in xs])
    eng, fwd, ti = e["image"]["engine"], e["image"]["ort_forward"], e["image"]["torch"]
    ix = sorted(map(int, eng))
    b.plot(ix, [eng[str(x)]["images_per_s"] for x in ix], "o-", label="engine (incl. PNG encode)")
    b.plot(ix, [fwd[str(x)]["images_per_s"] for x in ix], "^-", label="ORT forward only")
    tix = sorted(map(int, ti))
    b.plot(tix, [ti[str(x)]["images_per_s"] for x in tix], "s--", label="PyTorch forward")
    b.set(xscale="log", xlabel="batch size", ylabel="images/s", title="GAN")
    b.set_xticks(ix, [str(x) for x in ix])
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def continuous(c: dict[str, Any], path: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    pol = ["static", "continuous"]
    a.bar(pol, [c[p]["tokens_per_s"] for p in pol], color=["#999", "#2a7"])
    a.set(ylabel="tokens/s", title=f"throughput ({c['throughput_ratio']}x)")
    b.bar(pol, [c[p]["short_latency_p50_ms"] for p in pol], color=["#999", "#2a7"])
    b.set(ylabel="ms", title=f"short jobs' median latency ({c['short_latency_ratio']}x)")
    return _save(fig, path)


def system(s: dict[str, Any], path: Path, prefix: str = "system") -> Path:
    """Medians over the rounds: the engine alone, genqueue end to end and each naive deployment."""
    from bench.system import ratios

    per = ratios(s, prefix)
    kinds = [k for k in ("text", "image") if s["rounds"] and k in s["rounds"][0]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    colors = {"engine alone": "#59c", "genqueue": "#2a7", "naive PyTorch": "#c55", "naive ORT": "#d94"}
    for ax, kind in zip(axes[0], kinds, strict=True):
        names, vals = [], []
        for name, key in (("engine alone", "engine_limit_units_per_s"), ("genqueue", "units_per_s"),
                          ("naive PyTorch", "naive_torch_units_per_s"), ("naive ORT", "naive_ort_units_per_s")):
            v = per.get(f"{prefix}.{kind}.{key}")
            if v:
                names.append(name)
                vals.append(float(statistics.median(v)))
        bars = ax.bar(names, vals, color=[colors[n] for n in names])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set(ylabel="tokens/s" if kind == "text" else "images/s", title=f"{kind}: end to end (medians)", yscale="log")
        ax.set_ylim(bottom=min(vals) / 3, top=max(vals) * 2)
        ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)


def load(ld: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    levels = sorted(ld["levels"], key=int)
    x = [int(p) for p in levels]
    for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(x, [ld["levels"][p]["total_ms"].get(q) for p in levels], style, label=f"total {q}")
    ax.plot(x, [ld["levels"][p]["queue_ms"].get("p50") for p in levels], "x--", label="queue p50")
    ax.set(xlabel="offered load, % of measured capacity", ylabel="latency ms", yscale="log",
           title=f"Poisson load (capacity {ld['capacity_jobs_per_s']} jobs/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def submit(s: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bars = ax.bar(["bulk endpoint", "POST /v1/jobs", "INSERT+COMMIT+.delay()"],
                  [s["bulk"]["jobs_per_s"], s["single"]["jobs_per_s"], s["delay"]["jobs_per_s"]],
                  color=["#2a7", "#4b8", "#c55"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set(ylabel="jobs/s", title=f"submit {s['jobs']} jobs ({s['bulk_vs_delay']}x)")
    return _save(fig, path)


def write_all(results: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sc = results["scenarios"]
    out = []
    if "engine" in sc:
        out.append(engine(sc["engine"], folder / "engine.png"))
    if "continuous" in sc:
        out.append(continuous(sc["continuous"], folder / "continuous.png"))
    if "system" in sc:
        out.append(system(sc["system"], folder / "system.png"))
    if "gpt2" in sc:
        out.append(system(sc["gpt2"], folder / "system-gpt2.png", "system.gpt2"))
    if "submit" in sc:
        out.append(submit(sc["submit"], folder / "submit.png"))
    if "load" in sc:
        out.append(load(sc["load"], folder / "load.png"))
    return out
