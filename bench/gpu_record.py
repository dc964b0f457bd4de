"""Records a run of ``bench/gpu_check.sh`` in RESULTS.md (its own section) and ``results/gpu.json``.

The check runs on a GPU machine that this repository's CI and ``make bench`` never see, so its figures are
recorded apart from the CPU run that ``bench/report.py`` renders, and say which machine and commit they
come from::

    python -m bench.gpu_record --text gpu-<stamp>.json --images gpu-images-<stamp>.json \\
        --commit <sha> --machine "one NVIDIA H200, 16 CPU cores" --command "bench/gpu_check.sh --batches 1,8,64,256"

Without a record, RESULTS.md says that the GPU check is pending.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench import sections

BENCH_DIR = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = sections.markers("gpu", "python -m bench.gpu_record")

PENDING = "\n".join([
    MARK_BEGIN,
    "## GPU (CUDA) run: pending\n",
    "No GPU run has been recorded. `bench/gpu_check.sh` (with the wheels that `bench/gpu_wheels.sh` prepares) "
    "exports a GPT-2-small-sized random model, runs the text engine on CUDA at batch 1–256 against the "
    "memory-bandwidth bound, and the image engine at batch 1 and 64; `python -m bench.gpu_record` puts its "
    "output here.",
    MARK_END,
]) + "\n"


def build(text: dict[str, Any], images: dict[str, Any], commit: str, machine: str, command: str,
          recorded_at: str) -> dict[str, Any]:
    return {"commit": commit, "machine": machine, "command": command, "recorded_at": recorded_at,
            "text": text, "images": images}


def section(r: dict[str, Any]) -> str:
    t, im = r["text"], r["images"]
    gpu = t.get("gpu", {})
    m = t["model"]
    rows = [f"| {x['batch']} | {x['tokens_per_s']} | {x['step_ms']} | {x['bound_step_ms']} | "
            f"{x['fraction_of_bound']} | {x['logits_mb_per_step']} |" for x in t["runs"]]
    sc, hc = im["image_scaling"], im["image_host_ceiling"]
    best = max(t["runs"], key=lambda x: x["tokens_per_s"])
    return "\n".join([
        MARK_BEGIN,
        "## GPU (CUDA) run (`bench/gpu_check.sh`)\n",
        f"Recorded {r['recorded_at']} at commit `{r['commit']}` on {r['machine']}: {gpu.get('name')} "
        f"({gpu.get('memory')}, driver {gpu.get('driver')}), onnxruntime-gpu {t.get('onnxruntime')}. Command: "
        f"`{r['command']}`. A separate machine and run from the CPU figures above; nothing here enters their "
        "ratios.\n",
        f"Text: a random model of GPT-2-small's shape ({m['n_layer']} layers, d{m['n_embd']}, {m['n_head']} heads, "
        f"vocabulary {m['vocab']}, context {m['ctx']}; {t.get('weight_mb')} MB of {t.get('precision')} weights), "
        "exported by the project's exporter with the concat KV contract (cache kept on the device), through the "
        "continuous-batching engine. Bound: one decode step cannot take less than (weights + the KV cache "
        f"read) ÷ {t.get('hbm_gbps')} GB/s (the data sheet's HBM bandwidth).\n",
        "| batch | tokens/s | ms per step | bound ms per step | fraction of bound | logits to host, MB per step |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"The engine reaches at most {best['tokens_per_s']} tokens/s (batch {best['batch']}), "
        f"{best['fraction_of_bound']} of the bound"
        + (", so its steps are set by something other than the device's memory bandwidth. " if
           best["fraction_of_bound"] < 0.5 else ". ")
        + "`bench/FINDINGS.md` has the profiles of these runs.\n",
        f"Images (`dcgan-digits`, fp32): {sc['small']['images_per_s']} images/s at batch 1 and "
        f"{sc['large']['images_per_s']} at batch 64 (gain {sc['ratio']}); the same engine around a forward that "
        f"costs nothing (the host's own bound): {hc['small']['images_per_s']} and {hc['large']['images_per_s']} "
        f"images/s. At batch 64 the CUDA engine runs at "
        f"{round(sc['large']['images_per_s'] / hc['large']['images_per_s'], 2)} of that host bound.\n",
        MARK_END,
    ]) + "\n"


def _iso(stamp: str) -> str:
    """20261204T165918Z (gpu_check.sh's file stamp) -> 2026-12-04T16:59:18Z; anything else as it is."""
    try:
        return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return stamp


def record(r: dict[str, Any], base: Path = BENCH_DIR) -> None:
    sections.record(base, "gpu", r, section(r), MARK_BEGIN, MARK_END)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_record", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, required=True, help="gpu-<stamp>.json written by bench/gpu_check.sh")
    ap.add_argument("--images", type=Path, required=True, help="gpu-images-<stamp>.json written beside it")
    ap.add_argument("--commit", required=True, help="the commit the check ran at")
    ap.add_argument("--machine", required=True, help="the machine, in words")
    ap.add_argument("--command", required=True, help="the command that ran the check")
    ap.add_argument("--recorded-at", default=None, help="default: the stamp in the --text file's name")
    args = ap.parse_args(argv)
    try:
        text, images = json.loads(args.text.read_text()), json.loads(args.images.read_text())
    except (OSError, ValueError) as e:
        ap.exit(2, f"gpu_record: error: {e}\n")
    if not text.get("runs") or "image_scaling" not in images:
        ap.exit(2, "gpu_record: error: these files hold no text runs or no image figures\n")
    stamp = args.recorded_at or _iso(args.text.stem.removeprefix("gpu-"))
    record(build(text, images, args.commit, args.machine, args.command, stamp))
    print(f"recorded the GPU run of {args.commit} in {BENCH_DIR / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
