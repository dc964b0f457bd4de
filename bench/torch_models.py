"""The PyTorch modules of the built-in models, with the weights read back from their ONNX files.

A model folder holds no torch checkpoint, only ``model.onnx``. The dynamo exporter keeps most parameter
names equal to the ``state_dict`` keys; the rest are recovered from each node's metadata:

* a ``Linear`` whose weight was pre-transposed for ``MatMul`` becomes an anonymous ``val_*`` initializer;
  the node's ``namespace`` names the module (``.../h.0.attn.c_attn: torch.nn.modules.linear.Linear/...``);
* a ``BatchNorm`` folded into the preceding ``Gemm``/``ConvTranspose`` (rule ``FuseBatchNormInto*``)
  leaves a scaled weight under the conv's name plus a ``<name>_bias``; the BatchNorm module is then set to
  the identity plus that bias, which computes the same function as the folded graph.

``verify_*`` compare torch against onnxruntime on the same inputs; the benchmarks refuse to time a model
whose logits do not match. torch is imported here and only here in bench (never in the worker).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from genqueue.registry import ModelEntry
from genqueue_exporter.dcgan import DCGANConfig, Generator
from genqueue_exporter.gpt import GPT, GPTConfig

_MODULE_RE = re.compile(r"([A-Za-z0-9_.]+): torch\.nn\.modules\.(?:linear\.Linear|batchnorm\.BatchNorm\dd)")


def _module_path(node: onnx.NodeProto, kind: str) -> str | None:
    """The FQN of the innermost ``kind`` (``Linear``/``BatchNorm``) module a node was traced from."""
    for p in node.metadata_props:
        if p.key == "namespace":
            found = [m.group(1) for m in _MODULE_RE.finditer(p.value) if kind in m.group(0)]
            return found[-1] if found else None
    return None


def onnx_state_dict(model: torch.nn.Module, onnx_path: Path) -> dict[str, torch.Tensor]:
    """A complete ``state_dict`` for ``model`` rebuilt from the initializers of ``onnx_path``."""
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, arr in inits.items():
        if name in target and tuple(target[name].shape) == arr.shape:
            out[name] = torch.from_numpy(arr.copy())
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "ConvTranspose", "Conv") or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in inits:
            continue
        rule = next((p.value for p in node.metadata_props if p.key == "pkg.onnxscript.rewriter.rule_name"), "")
        if rule.startswith("FuseBatchNormInto"):
            bn = _module_path(node, "BatchNorm")
            if bn is None or len(node.input) < 3:
                raise ValueError(f"cannot map folded BatchNorm of node {node.name}")
            bias = torch.from_numpy(inits[node.input[2]].copy())
            out[f"{bn}.weight"] = torch.ones_like(bias)
            out[f"{bn}.bias"] = bias
            out[f"{bn}.running_mean"] = torch.zeros_like(bias)
            # (x - 0) / sqrt(var + eps) * 1 + b with var + eps == 1: the identity plus the folded bias.
            eps = float(model.get_submodule(bn).eps)  # type: ignore[arg-type]
            out[f"{bn}.running_var"] = torch.full_like(bias, 1.0 - eps)
            if f"{bn}.num_batches_tracked" in target:
                out[f"{bn}.num_batches_tracked"] = target[f"{bn}.num_batches_tracked"]
            continue
        if w in target:
            continue
        lin = _module_path(node, "Linear")
        if lin is None or f"{lin}.weight" not in target:
            continue
        arr = inits[w]
        want = tuple(target[f"{lin}.weight"].shape)
        transposed = node.op_type == "MatMul" or not any(a.name == "transB" and a.i for a in node.attribute)
        t = torch.from_numpy((arr.T if transposed else arr).copy())
        if tuple(t.shape) != want:
            raise ValueError(f"{w} -> {lin}.weight: shape {tuple(t.shape)} != {want}")
        out[f"{lin}.weight"] = t
    # Tied embeddings: GPT's lm_head shares wte's tensor, which the export keeps under one name.
    if "wte.weight" in target and "wte.weight" not in out and "lm_head.weight" in out:
        out["wte.weight"] = out["lm_head.weight"]
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"{onnx_path}: no ONNX initializer found for {missing}")
    return out


def ragged_state_dict(model: torch.nn.Module, onnx_path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a ragged-contract graph (exporter/genqueue_exporter/gpt_ragged.py names its initializers after
    the parameters: ``<module>.w`` is a Linear weight stored [in,out] or a LayerNorm weight, ``<module>.b``
    the bias)."""
    graph = onnx.load(str(onnx_path)).graph
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        name = {"wte": "wte.weight", "wpe": "wpe.weight", "lm_head.w": "lm_head.weight"}.get(init.name)
        if name is None and init.name.endswith((".w", ".b")):
            name = init.name[:-2] + (".weight" if init.name.endswith(".w") else ".bias")
        if name is None or name not in target:
            continue
        if arr.ndim == 2 and name not in ("wte.weight", "wpe.weight"):
            arr = arr.T  # MatMul weights are stored [in,out]; nn.Linear keeps [out,in]
        out[name] = torch.from_numpy(arr.copy())
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"{onnx_path}: no ONNX initializer found for {missing}")
    return out


def load_gpt(entry: ModelEntry) -> GPT:
    cfg = dict(entry.manifest.extra["config"])
    model = GPT(GPTConfig(**cfg))
    spec = entry.manifest.text
    ragged = spec is not None and spec.kv_contract == "ragged"
    model.load_state_dict((ragged_state_dict if ragged else onnx_state_dict)(model, entry.onnx_path))
    return model.eval()


def load_generator(entry: ModelEntry) -> Generator:
    model = Generator(DCGANConfig.from_dict(dict(entry.manifest.extra["config"])))
    model.load_state_dict(onnx_state_dict(model, entry.onnx_path))
    return model.eval()


def _ort(entry: ModelEntry) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])


@torch.inference_mode()
def verify_gpt(model: GPT, entry: ModelEntry, batch: int = 3, prompt: int = 12, steps: int = 3) -> float:
    """Max |torch - ORT| over the logits of a prefill and ``steps`` decode steps (random ids, full masks)."""
    cfg = model.config
    sess = _ort(entry)
    names = [f"past_key_values.{i}.{kv}" for i in range(cfg.n_layer) for kv in ("key", "value")]
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, (batch, prompt)).astype(np.int64)
    past_t = model.empty_past(batch)
    past_o = [p.numpy() for p in past_t]
    worst, t = 0.0, 0
    for _ in range(steps + 1):
        s = ids.shape[1]
        mask = np.ones((batch, t + s), np.int64)
        pos = np.tile(np.arange(t, t + s, dtype=np.int64), (batch, 1))
        lt, *past_t = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos), *past_t)
        feeds = {"input_ids": ids, "position_ids": pos, **dict(zip(names, past_o, strict=True))}
        if entry.manifest.text is not None and entry.manifest.text.kv_contract == "ragged":
            feeds["seqlens_k"] = np.full(batch, t + s - 1, np.int32)
            feeds["total_sequence_length"] = np.array(t + s, np.int32)
        else:
            feeds["attention_mask"] = mask
        lo, *kv = sess.run(None, feeds)
        # The append contract returns only the new columns; the others return the whole cache.
        append = entry.manifest.text is not None and entry.manifest.text.kv_contract == "append"
        past_o = [np.concatenate([p, n], axis=2) for p, n in zip(past_o, kv, strict=True)] if append else kv
        worst = max(worst, float(np.abs(lt.numpy() - lo).max()))
        t += s
        ids = lo[:, -1].argmax(-1)[:, None].astype(np.int64)
    return worst


@torch.inference_mode()
def verify_generator(model: Generator, entry: ModelEntry, batch: int = 8) -> float:
    cfg = model.config
    sess = _ort(entry)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((batch, cfg.latent_size)).astype(np.float32)
    labels = (np.arange(batch) % cfg.num_classes).astype(np.int64)
    a = model(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
    b = sess.run(["images"], {"z": z, "class_label": labels})[0]
    return float(np.abs(a - b).max())


def export_checkpoints(text: ModelEntry, image: ModelEntry | None, folder: Path, tolerance: float = 1e-3) -> dict[str, Any]:
    """Write ``gpt.pt`` and, with ``image``, ``generator.pt`` (config + state_dict, what a PyTorch user would
    have on disk) after checking each module against ORT; returns the parity figures."""
    folder.mkdir(parents=True, exist_ok=True)
    gpt = load_gpt(text)
    diffs = {"text_max_abs_diff": verify_gpt(gpt, text)}
    gen = load_generator(image) if image is not None else None
    if gen is not None and image is not None:
        diffs["image_max_abs_diff"] = verify_generator(gen, image)
    for k, v in diffs.items():
        if not v <= tolerance:
            raise RuntimeError(f"torch and ORT disagree ({k}={v:.2e} > {tolerance}); refusing to benchmark")
    spec = text.manifest.text
    assert spec is not None
    # What the user knows about their model: trained with BOS before each document, and its EOS id.
    tokens = {"prepend_bos": bool(getattr(spec, "prepend_bos", False)), "bos_token_id": spec.bos_token_id,
              "eos_token_id": spec.eos_token_id}
    torch.save({"config": gpt.config.to_dict(), "state_dict": gpt.state_dict(), "tokens": tokens}, folder / "gpt.pt")
    if gen is not None:
        torch.save({"config": gen.config.to_dict(), "state_dict": gen.state_dict()}, folder / "generator.pt")
    return diffs
