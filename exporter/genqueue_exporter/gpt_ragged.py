"""The "ragged" text contract: a GPT written straight to ONNX around onnxruntime's GroupQueryAttention.

Why a third contract: with a left-padded cache every row of a continuous batch attends over the longest
live row's length, and the concat/append graphs pay that in memory traffic on every step. ORT's
``com.microsoft.GroupQueryAttention`` takes each row's own length (``seqlens_k``), reads only that many
cached positions, and writes the new keys/values into the cache buffer in place when ``present`` is bound
to ``past``'s memory. So rows of any lengths share one step without padding, and no step copies the cache.

torch.export cannot emit a contrib op, so this module builds the graph from the module's weights with
``onnx.helper``: the same GPT-2 computation as :class:`genqueue_exporter.gpt.GPT` (pre-LN blocks, tanh
GELU, tied head), checked against that module by :func:`ragged_parity` before anything is published.

Contract (registry.py): inputs ``input_ids`` int64 [B,S], ``position_ids`` int64 [B,S], ``seqlens_k`` int32
[B] (each row's total length minus one: past + its real new tokens - 1), ``total_sequence_length`` int32
scalar (the longest row's total), ``past_key_values.<i>.key`` / ``.value`` [B,H,M,D]; outputs ``logits``
[B,1,V] (each row's last real token; graphs written before this was so return [B,S,V], which the worker
still reads) and ``present.<i>.key`` / ``.value`` [B,H,max(M,total),D]. Rows are right-padded: a row's
tokens sit at positions 0..len-1 of its cache row, and a prompt batch puts each row's real tokens first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from genqueue_exporter.errors import ExportError

RAGGED_OPSET = 18
MS_DOMAIN = "com.microsoft"


def ragged_names(n_layer: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return past, present


def build_ragged_onnx(model: Any, path: Path, all_logits: bool = False) -> str:
    """Write the ragged graph of ``model`` (a GPT, fp32) to ``path``; returns the exporter label.

    ``all_logits`` writes every position's logits [B,S,V] instead of each row's last token's, the layout of
    earlier exports; only ``bench.prefill`` uses it, to measure what the last-token head saves."""
    cfg = model.config
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    C, H, D, V = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.vocab_size
    past, present = ragged_names(cfg.n_layer)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def linear(x: str, prefix: str, out: str) -> str:
        # nn.Linear stores [out,in]; MatMul wants [in,out]. The bias Add stays a node of its own after ORT's
        # optimizations (ORT's profiler lists one Add per bias); a SkipLayerNormalization graph that folds it
        # in measured slower on the CPU (bench/FINDINGS.md).
        w = init(f"{prefix}.w", sd[f"{prefix}.weight"].T)
        b = init(f"{prefix}.b", sd[f"{prefix}.bias"])
        nodes.append(helper.make_node("MatMul", [x, w], [f"{out}.mm"]))
        nodes.append(helper.make_node("Add", [f"{out}.mm", b], [out]))
        return out

    def layer_norm(x: str, prefix: str, out: str) -> str:
        w, b = init(f"{prefix}.w", sd[f"{prefix}.weight"]), init(f"{prefix}.b", sd[f"{prefix}.bias"])
        nodes.append(helper.make_node("LayerNormalization", [x, w, b], [out], axis=-1, epsilon=cfg.layer_norm_epsilon))
        return out

    wte = init("wte", sd["wte.weight"])  # [V,C]
    wpe = init("wpe", sd["wpe.weight"])  # [ctx,C]
    nodes.append(helper.make_node("Gather", [wte, "input_ids"], ["tok_emb"]))  # [B,S,C]
    nodes.append(helper.make_node("Gather", [wpe, "position_ids"], ["pos_emb"]))  # [B,S,C]
    nodes.append(helper.make_node("Add", ["tok_emb", "pos_emb"], ["h0"]))
    h = "h0"
    split_sizes = "qkv_sizes"
    inits.append(numpy_helper.from_array(np.array([C, C, C], np.int64), split_sizes))
    for i in range(cfg.n_layer):
        p = f"h.{i}"
        x = layer_norm(h, f"{p}.ln_1", f"{p}.x1")
        qkv = linear(x, f"{p}.attn.c_attn", f"{p}.qkv")  # [B,S,3C]
        nodes.append(helper.make_node("Split", [qkv, split_sizes], [f"{p}.q", f"{p}.k", f"{p}.v"], axis=2))
        nodes.append(helper.make_node(
            "GroupQueryAttention",
            [f"{p}.q", f"{p}.k", f"{p}.v", past[2 * i], past[2 * i + 1], "seqlens_k", "total_sequence_length"],
            [f"{p}.att", present[2 * i], present[2 * i + 1]],
            domain=MS_DOMAIN, num_heads=H, kv_num_heads=H,
        ))  # [B,S,C]; scale defaults to 1/sqrt(D), causal within the new tokens
        a = linear(f"{p}.att", f"{p}.attn.c_proj", f"{p}.a")
        nodes.append(helper.make_node("Add", [h, a], [f"{p}.r1"]))
        x2 = layer_norm(f"{p}.r1", f"{p}.ln_2", f"{p}.x2")
        fc_w = init(f"{p}.mlp.c_fc.w", sd[f"{p}.mlp.c_fc.weight"].T)
        fc_b = init(f"{p}.mlp.c_fc.b", sd[f"{p}.mlp.c_fc.bias"])
        nodes.append(helper.make_node("MatMul", [x2, fc_w], [f"{p}.fc"]))
        # FastGelu is GPT-2's tanh GELU with the bias add folded in: one kernel instead of eight ops.
        nodes.append(helper.make_node("FastGelu", [f"{p}.fc", fc_b], [f"{p}.g"], domain=MS_DOMAIN))
        m = linear(f"{p}.g", f"{p}.mlp.c_proj", f"{p}.m")
        nodes.append(helper.make_node("Add", [f"{p}.r1", m], [f"{p}.out"]))
        h = f"{p}.out"
    if not all_logits:
        # Each row's last real token alone goes through ln_f and the head: in a right-padded prompt batch
        # that is position seqlens_k (its length - 1); in a decode step (S=1) position 0. min(seqlens_k, S-1)
        # is both. Every position's [B,S,V] logits would cost S x V floats per row (GPT.forward says why).
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "one_i64"))
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "two_i64"))
        inits.append(numpy_helper.from_array(np.array([1, 2], np.int64), "axes_12"))
        inits.append(numpy_helper.from_array(np.array([1, 1, C], np.int64), "last_shape"))
        nodes += [
            helper.make_node("Shape", ["input_ids"], ["ids_shape"]),  # [2]: B, S
            helper.make_node("Slice", ["ids_shape", "one_i64", "two_i64"], ["seq_len"]),  # [1]: S
            helper.make_node("Sub", ["seq_len", "one_i64"], ["seq_last"]),
            helper.make_node("Cast", ["seqlens_k"], ["seqlens_i64"], to=TensorProto.INT64),
            helper.make_node("Min", ["seqlens_i64", "seq_last"], ["last_pos"]),  # [B]
            helper.make_node("Unsqueeze", ["last_pos", "axes_12"], ["last_pos3"]),  # [B,1,1]
            helper.make_node("Expand", ["last_pos3", "last_shape"], ["last_idx"]),  # [B,1,C]
            helper.make_node("GatherElements", [h, "last_idx"], ["h_last"], axis=1),  # [B,1,C]
        ]
        h = "h_last"
    xf = layer_norm(h, "ln_f", "xf")
    head = init("lm_head.w", sd["lm_head.weight"].T)  # tied to wte: [C,V]
    nodes.append(helper.make_node("MatMul", [xf, head], ["logits"]))  # [B,1,V] ([B,S,V] with all_logits)

    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", i32, []),
        *[helper.make_tensor_value_info(n, f32, ["batch", H, "past", D]) for n in past],
    ]
    outputs = [
        helper.make_tensor_value_info("logits", f32, ["batch", "seq" if all_logits else 1, V]),
        *[helper.make_tensor_value_info(n, f32, ["batch", H, "present", D]) for n in present],
    ]
    # Contrib-op outputs get explicit types: ONNX shape inference cannot see through com.microsoft ops, and
    # the int8 quantizer needs every MatMul input typed.
    typed = [
        *[helper.make_tensor_value_info(f"h.{i}.att", f32, ["batch", "seq", C]) for i in range(cfg.n_layer)],
        *[helper.make_tensor_value_info(f"h.{i}.g", f32, ["batch", "seq", 4 * C]) for i in range(cfg.n_layer)],
    ]
    graph = helper.make_graph(nodes, "genqueue_gpt_ragged", inputs, outputs, initializer=inits, value_info=typed)
    proto = helper.make_model(
        graph, producer_name="genqueue-exporter", ir_version=10,
        opset_imports=[helper.make_opsetid("", RAGGED_OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
    )
    if proto.ByteSize() >= 2**31 - 1:
        raise ExportError("model is over 2 GB, which a single-file ONNX cannot hold")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return "onnx-helper(ragged)"


def ragged_parity(model: Any, sess: Any, tol: float, seed: int = 0) -> dict[str, float]:
    """ORT (ragged graph) vs the torch fp32 module, row by row: a prompt batch, a decode step, right-padded
    prompts of different lengths, and rows of different cache lengths decoding together."""
    gpt = model.eval().float()
    cfg = gpt.config
    H, D = cfg.n_head, cfg.head_dim
    past_names, present_names = ragged_names(cfg.n_layer)
    out_names = ["logits", *present_names]
    g = torch.Generator().manual_seed(seed)
    results: dict[str, float] = {}

    def torch_row(ids: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One unpadded row through the torch module: its last token's logits [V] and its KV [H,n,D] each."""
        t = torch.tensor([ids])
        with torch.no_grad():
            logits, *kv = gpt(t, torch.ones_like(t), torch.arange(len(ids)).unsqueeze(0), *gpt.empty_past(1))
        return logits[0, -1].numpy(), [x[0].numpy() for x in kv]

    def run(ids: np.ndarray, pos: np.ndarray, seqlens: np.ndarray, total: int, past: list[np.ndarray]) -> list[np.ndarray]:
        feed: dict[str, Any] = {
            "input_ids": ids, "position_ids": pos, "seqlens_k": seqlens.astype(np.int32),
            "total_sequence_length": np.array(total, np.int32),
        }
        feed.update(zip(past_names, past, strict=True))
        return list(sess.run(out_names, feed))

    def check(name: str, diff: float, output: str = "logits") -> None:
        if not diff <= tol:  # also catches NaN; the same message as parity.py's checks
            raise ExportError(f"parity check failed: case {name}, output {output}: max |ORT - torch| = {diff:.3g} > tolerance {tol:g}")
        results[name] = diff

    lengths = [min(8, cfg.block_size - 2), max(1, min(8, cfg.block_size - 2) - 3), max(1, min(8, cfg.block_size - 2) - 6)]
    rows = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    S = max(lengths)
    empty = [np.zeros((len(rows), H, 0, D), np.float32) for _ in past_names]

    # Right-padded prompts: each row's last-token logits and its keys/values equal the row alone through torch.
    ids = np.zeros((len(rows), S), np.int64)
    pos = np.zeros((len(rows), S), np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        pos[r, : len(row)] = np.arange(len(row))
    out = run(ids, pos, np.array(lengths) - 1, S, empty)
    ref = [torch_row(row) for row in rows]
    check("prompt_ragged_b3", max(float(np.abs(out[0][r, -1] - ref[r][0]).max()) for r in range(len(rows))))
    # The logits cover each row's last token only; the keys and values cover every position of every row.
    check("prompt_ragged_b3_kv", max(
        float(np.abs(out[1 + t][r, :, : len(row)] - ref[r][1][t]).max()) for r, row in enumerate(rows) for t in range(len(past_names))
    ), "present")

    # Decode: rows of different cache lengths take one step together, the cache in a wider buffer.
    M = S + 4
    cache = [np.zeros((len(rows), H, M, D), np.float32) for _ in past_names]
    for t, present in enumerate(out[1:]):
        cache[t][:, :, :S] = present[:, :, :S]
    nxt = torch.randint(0, cfg.vocab_size, (len(rows),), generator=g).tolist()
    step = run(
        np.array(nxt, np.int64)[:, None], np.array(lengths, np.int64)[:, None], np.array(lengths), S + 1, cache,
    )
    ref = [torch_row([*row, n]) for row, n in zip(rows, nxt, strict=True)]
    check("decode_ragged_b3", max(float(np.abs(step[0][r, -1] - ref[r][0]).max()) for r in range(len(rows))))
    return results
