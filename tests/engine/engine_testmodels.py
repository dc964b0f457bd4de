"""Hand-made tiny ONNX models with the registry's contract, built with the ``onnx`` helper API.

They stand in for the exporter's built-in models when ``genqueue_exporter`` (torch) is not importable, and
they let the engine tests run in seconds. Weights are random: outputs mean nothing, but the graphs follow
the exact input/output contract in ``genqueue.registry`` (KV cache as explicit inputs/outputs, left
padding through ``attention_mask``, explicit ``position_ids``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

BYTE_VOCAB = 256  # byte-level alphabet; the special end-of-text token comes right after it


def build_byte_tokenizer(path: Path | None = None):  # -> tokenizers.Tokenizer
    """A byte-level tokenizer with no merges: every byte is one token, id 256 is ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = BYTE_VOCAB
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    if path is not None:
        tok.save(str(path))
    return tok


def _gpt_graph(vocab: int, n_layer: int, n_head: int, head_dim: int, ctx: int, seed: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = n_head * head_dim
    inits: list = []
    nodes: list = []

    def w(name: str, shape: tuple[int, ...], std: float) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name))
        return name

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    one_i = const("one_i", np.array(1, np.int64))
    zero_i = const("zero_i", np.array(0, np.int64))
    neg = const("neg_big", np.array(-1e9, np.float32))
    zero_f = const("zero_f", np.array(0.0, np.float32))
    one_f = const("one_f", np.array(1.0, np.float32))
    shape_bshd = const("shape_bshd", np.array([0, 0, n_head, head_dim], np.int64))
    shape_bsc = const("shape_bsc", np.array([0, 0, c], np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    half = const("half", np.array(0.5, np.float32))
    rsqrt2 = const("rsqrt2", np.array(1 / np.sqrt(2.0), np.float32))

    wte = w("wte", (vocab, c), 0.5)
    wpe = w("wpe", (ctx, c), 0.1)
    x = node("Add", [node("Gather", [wte, "input_ids"], "tok_emb"), node("Gather", [wpe, "position_ids"], "pos_emb")], "x0")

    # Bias [B,1,S,T]: padding from attention_mask, causal from the past length P = T - S.
    t_len = node("Gather", [node("Shape", ["attention_mask"], "mask_shape"), one_i], "t_len")
    s_len = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), one_i], "s_len")
    p_len = node("Sub", [t_len, s_len], "p_len")
    qi = node("Add", [node("Range", [zero_i, s_len, one_i], "q_range"), p_len], "q_pos")  # [S]
    kj = node("Range", [zero_i, t_len, one_i], "k_pos")  # [T]
    axes0 = const("axes0", np.array([0], np.int64))
    axes1 = const("axes1", np.array([1], np.int64))
    axes12 = const("axes12", np.array([1, 2], np.int64))
    causal = node("LessOrEqual", [node("Unsqueeze", [kj, axes0], "k_row"), node("Unsqueeze", [qi, axes1], "q_col")], "causal")
    causal_bias = node("Where", [causal, zero_f, neg], "causal_bias")  # [S,T]
    maskf = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    pad_bias = node("Mul", [node("Sub", [one_f, maskf], "mask_inv"), neg], "pad_bias")  # [B,T]
    bias = node("Add", [node("Unsqueeze", [pad_bias, axes12], "pad_bias4"), causal_bias], "att_bias")

    def ln(inp: str, prefix: str) -> str:
        g = const(prefix + ".g", np.ones(c, np.float32))
        b = const(prefix + ".b", np.zeros(c, np.float32))
        return node("LayerNormalization", [inp, g, b], prefix + ".out", axis=-1, epsilon=1e-5)

    def heads(inp: str, name: str) -> str:  # [B,S,C] -> [B,H,S,D]
        r = node("Reshape", [inp, shape_bshd], name + ".r")
        return node("Transpose", [r], name + ".t", perm=[0, 2, 1, 3])

    for i in range(n_layer):
        p = f"h{i}"
        h = ln(x, p + ".ln1")
        qkv = node("MatMul", [h, w(p + ".wqkv", (c, 3 * c), 1.0 / np.sqrt(c))], p + ".qkv")
        nodes.append(helper.make_node("Split", [qkv, const(p + ".split", np.array([c, c, c], np.int64))], [p + ".q", p + ".k", p + ".v"], axis=2))
        q, k, v = heads(p + ".q", p + ".qh"), heads(p + ".k", p + ".kh"), heads(p + ".v", p + ".vh")
        k_all = node("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = node("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        kt = node("Transpose", [k_all], p + ".kT", perm=[0, 1, 3, 2])
        att = node("Add", [node("Mul", [node("MatMul", [q, kt], p + ".qk"), scale], p + ".qks"), bias], p + ".att")
        att = node("Softmax", [att], p + ".probs", axis=-1)
        y = node("MatMul", [att, v_all], p + ".y")
        y = node("Reshape", [node("Transpose", [y], p + ".yt", perm=[0, 2, 1, 3]), shape_bsc], p + ".yc")
        x = node("Add", [x, node("MatMul", [y, w(p + ".wo", (c, c), 1.0 / np.sqrt(c))], p + ".o")], p + ".x1")
        h2 = ln(x, p + ".ln2")
        f = node("MatMul", [h2, w(p + ".wfc", (c, 4 * c), 1.0 / np.sqrt(c))], p + ".fc")
        erf = node("Erf", [node("Mul", [f, rsqrt2], p + ".fs")], p + ".erf")
        g = node("Mul", [node("Mul", [f, half], p + ".fh"), node("Add", [erf, one_f], p + ".erf1")], p + ".gelu")
        x = node("Add", [x, node("MatMul", [g, w(p + ".wpr", (4 * c, c), 1.0 / np.sqrt(4 * c))], p + ".mlp")], p + ".x2")
    xf = ln(x, "lnf")
    nodes.append(helper.make_node("MatMul", [xf, node("Transpose", [wte], "wteT", perm=[1, 0])], ["logits"]))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", vocab])]
    for i in range(n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, ["batch", n_head, "past", head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, ["batch", n_head, "total", head_dim]))
    graph = helper.make_graph(nodes, "tiny_gpt", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, inputs, outputs


def _gan_graph(latent: int, num_classes: int, channels: int, size: int, seed: int):
    """A small DCGAN-like generator: Linear -> 4x4 map -> two ConvTranspose x2 -> Tanh (size must be 16)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    assert size == 16
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []

    def w(name: str, shape: tuple[int, ...], std: float) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name))
        return name

    f = 32
    inp = "z"
    if num_classes:
        emb = w("class_emb", (num_classes, latent), 1.0)
        nodes.append(helper.make_node("Gather", [emb, "class_label"], ["cls"]))
        nodes.append(helper.make_node("Mul", ["z", "cls"], ["zc"]))
        inp = "zc"
    nodes.append(helper.make_node("Gemm", [inp, w("fc", (latent, f * 16), 1 / np.sqrt(latent))], ["h0"]))
    inits.append(numpy_helper.from_array(np.array([-1, f, 4, 4], np.int64), "shape0"))
    nodes.append(helper.make_node("Reshape", ["h0", "shape0"], ["h0r"]))
    nodes.append(helper.make_node("Relu", ["h0r"], ["h0a"]))
    nodes.append(helper.make_node("ConvTranspose", ["h0a", w("ct1", (f, f // 2, 4, 4), 0.1)], ["h1"], strides=[2, 2], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["h1"], ["h1a"]))
    nodes.append(helper.make_node("ConvTranspose", ["h1a", w("ct2", (f // 2, channels, 4, 4), 0.3)], ["h2"], strides=[2, 2], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Tanh", ["h2"], ["images"]))
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", latent])]
    if num_classes:
        inputs.append(helper.make_tensor_value_info("class_label", TensorProto.INT64, ["batch"]))
    outputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, size, size])]
    model = helper.make_model(helper.make_graph(nodes, "tiny_gan", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, inputs, outputs


def _spec(vi) -> dict:
    from onnx import helper

    t = vi.type.tensor_type
    dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
    return {"name": vi.name, "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": dims}


def _write(folder: Path, model, inputs, outputs, manifest: dict) -> Path:
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    specs_in, specs_out = [_spec(v) for v in inputs], [_spec(v) for v in outputs]
    dyn = {s["name"]: {str(i): d for i, d in enumerate(s["shape"]) if isinstance(d, str)} for s in specs_in + specs_out}
    base = {
        "format": 1, "name": folder.parent.name, "version": folder.name, "sha256": digest, "opset": 17,
        "exporter_version": "handmade-test", "inputs": specs_in, "outputs": specs_out, "dynamic_axes": dyn,
        "parity": {"tolerance": 0.0, "max_abs_diff": {}}, "source": "test",
    }
    (folder / "manifest.json").write_text(json.dumps({**base, **manifest}, indent=1))
    return folder


def build_text_model(
    folder: Path, n_layer: int = 2, n_head: int = 2, head_dim: int = 16, ctx: int = 128, seed: int = 0, vocab: int = BYTE_VOCAB + 1
) -> Path:
    """Write ``model.onnx``, ``tokenizer.json`` and ``manifest.json`` for a random byte-level GPT.

    ``vocab`` may exceed the tokenizer's 257 ids (to match a bigger model's logits cost); extra ids decode to
    nothing."""
    model, inputs, outputs = _gpt_graph(vocab, n_layer, n_head, head_dim, ctx, seed)
    folder.mkdir(parents=True, exist_ok=True)
    build_byte_tokenizer(folder / "tokenizer.json")
    text = {
        "vocab_size": vocab, "n_layer": n_layer, "n_head": n_head, "head_dim": head_dim,
        "n_embd": n_head * head_dim, "context_length": ctx, "bos_token_id": BYTE_VOCAB,
        "eos_token_id": BYTE_VOCAB, "pad_token_id": BYTE_VOCAB,
    }
    return _write(folder, model, inputs, outputs, {"kind": "text", "text": text})


def build_image_model(folder: Path, latent: int = 16, num_classes: int = 10, channels: int = 1, seed: int = 0) -> Path:
    model, inputs, outputs = _gan_graph(latent, num_classes, channels, 16, seed)
    image = {"latent_size": latent, "num_classes": num_classes, "channels": channels, "height": 16, "width": 16}
    return _write(folder, model, inputs, outputs, {"kind": "image", "image": image})
