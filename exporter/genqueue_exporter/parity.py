"""Parity: an exported graph, run by ONNX Runtime, against the torch fp32 module it came from.

Every variant is measured before it is published, and the figures go into its manifest. A case whose max
|ORT - torch| is over the tolerance of its kind and precision fails the export with one line naming the case
and the output. The ragged graph's cases live with its builder (``gpt_ragged.ragged_parity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genqueue.registry import ModelKind
from genqueue_exporter.errors import ExportError
from genqueue_exporter.gpt_ragged import ragged_parity
from genqueue_exporter.onnx_export import GraphSpec
from genqueue_exporter.ortload import ort_session as load_ort_session

# Max |ORT - torch fp32| allowed per precision. fp32 text logits reach |20|+ and float reassociation in
# ORT's fused kernels moves them by ~1e-5..1e-4, so 1e-3 is strict yet not flaky. Quantized figures only
# guard against a broken graph; their quality is the metrics' business.
TOLERANCE: dict[str, dict[str, float]] = {
    "text": {"fp32": 1e-3, "fp16": 5e-2, "int8": 1.5},
    "image": {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.25},
}


def ort_session(path: Path) -> Any:
    # Parity inputs are tiny; one thread avoids ORT's spinning thread pool fighting torch's for the cores.
    return load_ort_session(path, threads=1)



def check_parity(kind: ModelKind, model: nn.Module, onnx_path: Path, spec: GraphSpec, contract: str,
                 tol: float) -> dict[str, float]:
    """Every parity case of the graph at ``onnx_path``; returns each case's max |ORT - torch|."""
    if kind is ModelKind.text and contract == "ragged":
        return ragged_parity(model, ort_session(onnx_path), tol)
    if kind is ModelKind.text:
        return text_parity(model, onnx_path, spec, tol, contract=contract)
    return image_parity(model, onnx_path, spec, tol)


def _max_diff(ort_out: Sequence[np.ndarray], torch_out: Sequence[torch.Tensor], names: list[str]) -> tuple[float, str]:
    worst, worst_name = 0.0, names[0]
    for name, a, b in zip(names, ort_out, torch_out, strict=True):
        d = float(np.abs(a.astype(np.float32) - b.detach().float().numpy()).max()) if a.size else 0.0
        if not np.isfinite(d):
            d = float("inf")
        if d > worst:
            worst, worst_name = d, name
    return worst, worst_name


def _check(case: str, diff: float, out_name: str, tol: float) -> None:
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"parity check failed: case {case}, output {out_name}: max |ORT - torch| = {diff:.3g} > tolerance {tol:g}")


def text_parity(
    model: nn.Module, onnx_path: Path, spec: GraphSpec, tol: float, seed: int = 0, contract: str = "append"
) -> dict[str, float]:
    """ORT vs the torch fp32 model on prefill (P=0), decode (P>0, S=1), a chunk (P>0, S>1) and left padding.

    ``left_pad_vs_alone`` is ORT against ORT: a left-padded row's logits and keys/values against the same
    row run alone, the property the worker's batching relies on.
    """
    from genqueue_exporter.gpt import GPT, position_ids_from_mask

    assert isinstance(model, GPT)
    gpt: GPT = model.eval().float()
    cfg = gpt.config
    sess = ort_session(onnx_path)
    np_dtype = np.float16 if spec.inputs[3].dtype == "float16" else np.float32
    in_names = [t.name for t in spec.inputs]
    out_names = [t.name for t in spec.outputs]
    g = torch.Generator().manual_seed(seed)
    results: dict[str, float] = {}

    def run(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: list[torch.Tensor]) -> tuple[list[np.ndarray], tuple[torch.Tensor, ...]]:
        with torch.no_grad():
            ref = gpt.forward_append(ids, mask, pos, *past) if contract == "append" else gpt(ids, mask, pos, *past)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
        feed.update({n: p.numpy().astype(np_dtype) for n, p in zip(in_names[3:], past, strict=True)})
        return sess.run(out_names, feed), ref

    def case(name: str, B: int, S: int, past: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        P = past[0].shape[2]
        ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
        mask = torch.ones(B, P + S, dtype=torch.long)
        pos = torch.arange(P, P + S).unsqueeze(0).expand(B, S).contiguous()
        got, ref = run(ids, mask, pos, past)
        diff, worst = _max_diff(got, ref, out_names)
        _check(name, diff, worst, tol)
        results[name] = diff
        kv = list(ref[1:])
        if contract == "append":  # the next case's past is what a worker's cache would hold
            kv = [torch.cat([p, n], dim=2) for p, n in zip(past, kv, strict=True)]
        return ids, kv

    S0 = min(6, cfg.block_size - 4)
    _, past = case("prefill_b2", 2, S0, gpt.empty_past(2))
    _, past2 = case("decode_b2", 2, 1, past)
    case("chunk_b2", 2, 3, past2)

    # Left padding: three rows of different lengths, right-aligned in one [3,L] batch.
    L = min(8, cfg.block_size)
    lengths = [L, L - 3, max(1, L - 6)]
    rows = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lengths]
    ids = torch.zeros(3, L, dtype=torch.long)
    mask = torch.zeros(3, L, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, L - len(row):] = row
        mask[r, L - len(row):] = 1
    pos = position_ids_from_mask(mask, L)
    got, ref = run(ids, mask, pos, gpt.empty_past(3))
    diff, worst = _max_diff(got, ref, out_names)
    _check("left_pad_b3", diff, worst, tol)
    results["left_pad_b3"] = diff
    alone_diff, worst = 0.0, "logits"
    for r, row in enumerate(rows):
        n = len(row)
        one, _ = run(row.unsqueeze(0), torch.ones(1, n, dtype=torch.long), torch.arange(n).unsqueeze(0), gpt.empty_past(1))
        # The logits are the last token's; the keys/values cover the row's every real position.
        pairs = [(got[0][r, -1], one[0][0, -1])] + [(got[t][r, :, L - n:], one[t][0]) for t in range(1, len(out_names))]
        for name, (a, b) in zip(out_names, pairs, strict=True):
            d = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
            d = d if np.isfinite(d) else float("inf")
            if d > alone_diff:
                alone_diff, worst = d, name
    _check("left_pad_vs_alone", alone_diff, worst, tol)
    results["left_pad_vs_alone"] = alone_diff
    return results


def image_parity(model: nn.Module, onnx_path: Path, spec: GraphSpec, tol: float, seed: int = 0) -> dict[str, float]:
    """ORT vs torch for batch sizes 1, 3 and 7 (the batch axis must really be dynamic)."""
    from genqueue_exporter.dcgan import Generator

    assert isinstance(model, Generator)
    gen: Generator = model.eval().float()
    cfg = gen.config
    sess = ort_session(onnx_path)
    np_dtype = np.float16 if spec.inputs[0].dtype == "float16" else np.float32
    g = torch.Generator().manual_seed(seed)
    results: dict[str, float] = {}
    for B in (1, 3, 7):
        z = torch.randn(B, cfg.latent_size, generator=g)
        c = torch.randint(0, cfg.num_classes, (B,), generator=g)
        with torch.no_grad():
            ref = gen(z, c)
        got = sess.run(["images"], {"z": z.numpy().astype(np_dtype), "class_label": c.numpy()})
        diff, worst = _max_diff(got, [ref], ["images"])
        _check(f"batch_{B}", diff, worst, tol)
        results[f"batch_{B}"] = diff
    return results
