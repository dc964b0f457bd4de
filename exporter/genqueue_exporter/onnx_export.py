"""torch -> ONNX: the graph each model kind and KV contract is exported as, and the export itself.

One graph per call: ``export_graph`` writes the fp32 graph of a model under a KV contract, ``export_fp16`` a
half-precision copy. The names, dtypes and dynamic axes of every graph's inputs and outputs come from a
``GraphSpec``, which also becomes the manifest's I/O description, so the worker reads the same names the
exporter wrote. The ragged contract is built by hand around a contrib op (``gpt_ragged.py``); the other
graphs go through ``torch.onnx.export``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from genqueue.registry import ModelKind, TensorSpec
from genqueue_exporter.errors import ExportError
from genqueue_exporter.gpt_ragged import build_ragged_onnx, ragged_names

log = logging.getLogger(__name__)
# torch.onnx warns on every export that torchvision's ops cannot be registered; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

DEFAULT_OPSET = 18


@dataclass
class GraphSpec:
    """Names, dtypes and shapes of one graph's I/O; strings in shapes are dynamic axis names."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    varargs_from: int | None = None  # inputs from this index on are the module's ``*past`` argument

    @property
    def dynamic_axes(self) -> dict[str, dict[str, str]]:
        axes: dict[str, dict[str, str]] = {}
        for t in (*self.inputs, *self.outputs):
            dyn = {str(i): d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if dyn:
                axes[t.name] = dyn
        return axes

    def torch_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {int(i): d for i, d in ax.items()} for n, ax in self.dynamic_axes.items()}


def kv_output_names(n_layer: int, contract: str) -> list[str]:
    prefix = "new_key_values" if contract == "append" else "present"
    return [f"{prefix}.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def text_graph_spec(
    n_layer: int, n_head: int, head_dim: int, vocab: int, kv_dtype: str, contract: str = "append"
) -> GraphSpec:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = kv_output_names(n_layer, contract)
    kv_len = "seq" if contract == "append" else "total"
    return GraphSpec(
        inputs=[
            TensorSpec(name="input_ids", dtype="int64", shape=["batch", "seq"]),
            TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "total"]),
            TensorSpec(name="position_ids", dtype="int64", shape=["batch", "seq"]),
            *[TensorSpec(name=n, dtype=kv_dtype, shape=["batch", n_head, "past", head_dim]) for n in past],
        ],
        outputs=[
            TensorSpec(name="logits", dtype=kv_dtype, shape=["batch", 1, vocab]),  # the last position's (gpt.py)
            *[TensorSpec(name=n, dtype=kv_dtype, shape=["batch", n_head, kv_len, head_dim]) for n in present],
        ],
        varargs_from=3,
    )


def ragged_graph_spec(n_layer: int, n_head: int, head_dim: int, vocab: int) -> GraphSpec:
    past, present = ragged_names(n_layer)
    return GraphSpec(
        inputs=[
            TensorSpec(name="input_ids", dtype="int64", shape=["batch", "seq"]),
            TensorSpec(name="position_ids", dtype="int64", shape=["batch", "seq"]),
            TensorSpec(name="seqlens_k", dtype="int32", shape=["batch"]),
            TensorSpec(name="total_sequence_length", dtype="int32", shape=[]),
            *[TensorSpec(name=n, dtype="float32", shape=["batch", n_head, "past", head_dim]) for n in past],
        ],
        outputs=[
            TensorSpec(name="logits", dtype="float32", shape=["batch", 1, vocab]),  # each row's last token
            *[TensorSpec(name=n, dtype="float32", shape=["batch", n_head, "present", head_dim]) for n in present],
        ],
    )


def image_graph_spec(latent: int, conditional: bool, c: int, h: int, w: int, dtype: str) -> GraphSpec:
    inputs = [TensorSpec(name="z", dtype=dtype, shape=["batch", latent])]
    if conditional:
        inputs.append(TensorSpec(name="class_label", dtype="int64", shape=["batch"]))
    return GraphSpec(inputs=inputs, outputs=[TensorSpec(name="images", dtype=dtype, shape=["batch", c, h, w])])



def graph_spec(kind: ModelKind, cfg: Any, dtype: str, contract: str) -> GraphSpec:
    """The I/O of the graph of a model with config ``cfg`` (GPTConfig or DCGANConfig)."""
    if kind is ModelKind.text:
        if contract == "ragged":
            return ragged_graph_spec(cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.vocab_size)
        return text_graph_spec(cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.vocab_size, dtype, contract)
    return image_graph_spec(cfg.latent_size, cfg.num_classes > 0, cfg.channels, cfg.image_size, cfg.image_size, dtype)


def _export_module(kind: ModelKind, model: nn.Module, contract: str) -> nn.Module:
    """The module whose ``forward`` is the graph: GPT.forward is the concat contract, AppendKV the append one."""
    if kind is ModelKind.text and contract == "append":
        from genqueue_exporter.gpt import GPT, AppendKV

        assert isinstance(model, GPT)
        return AppendKV(model)
    return model


def _example_args(kind: ModelKind, cfg: Any, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    # Every dynamic axis gets a size >= 2 in the example: torch.export specializes sizes 0 and 1.
    if kind is ModelKind.text:
        B, S, P = 2, 3, 4
        ids = torch.zeros(B, S, dtype=torch.long)
        mask = torch.ones(B, P + S, dtype=torch.long)
        pos = torch.arange(P, P + S).unsqueeze(0).expand(B, S).contiguous()
        past = [torch.zeros(B, cfg.n_head, P, cfg.head_dim, dtype=dtype) for _ in range(2 * cfg.n_layer)]
        return (ids, mask, pos, *past)
    return (torch.zeros(2, cfg.latent_size, dtype=dtype), torch.zeros(2, dtype=torch.long))


def export_graph(kind: ModelKind, model: nn.Module, contract: str, spec: GraphSpec, out: Path) -> str:
    """Write the fp32 graph of ``model`` (GPT or dcgan.Generator) to ``out``; returns which exporter made it."""
    fp32 = model.eval().float()
    if kind is ModelKind.text and contract == "ragged":
        return build_ragged_onnx(fp32, out)
    cfg: Any = model.config
    return to_onnx(_export_module(kind, fp32, contract), _example_args(kind, cfg, torch.float32), spec, out)


def export_fp16(kind: ModelKind, model: nn.Module, spec: GraphSpec, out: Path, contract: str = "append") -> str:
    """Export a half-precision copy of the module (fp16 I/O and KV cache).

    Exporting ``model.half()`` instead of converting the fp32 graph keeps dtype-dependent constants right:
    the attention mask's fill value is ``finfo(float16).min``, which a blind cast of fp32's minimum would
    turn into -inf (and NaN rows).
    """
    half = copy.deepcopy(model).eval().half()
    cfg: Any = model.config
    try:
        return to_onnx(_export_module(kind, half, contract), _example_args(kind, cfg, torch.float16), spec, out) + "(fp16)"
    except ExportError as e:
        raise ExportError(f"fp16 export failed: {e}") from e


def _dynamo_shapes(spec: GraphSpec) -> tuple[Any, ...]:
    """torch.export dynamic shapes in argument order; ``total`` is left for the exporter to derive."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    out: list[Any] = []
    for t in spec.inputs:
        ax: dict[int, Any] = {}
        for i, d in enumerate(t.shape):
            if isinstance(d, str):
                ax[i] = dims.setdefault(d, Dim(d))
        out.append(ax)
    if spec.varargs_from is not None:
        # torch.export wants a ``*args`` parameter's shapes as one nested tuple.
        return (*out[: spec.varargs_from], tuple(out[spec.varargs_from :]))
    return tuple(out)


def _rename_dims(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give graph I/O the manifest's axis names (dynamo writes e.g. ``past + seq`` for ``total``)."""
    wanted = {t.name: t.shape for t in (*spec.inputs, *spec.outputs)}
    for vi in (*model.graph.input, *model.graph.output):
        shape = wanted.get(vi.name)
        if shape is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(shape):
            if isinstance(d, str) and i < len(dims):
                dims[i].dim_param = d


def _reraise_interrupt(error: BaseException) -> None:
    """torch.export wraps a Ctrl-C that lands inside it (TorchExportError from ... from KeyboardInterrupt):
    an interrupt is the user stopping the export, not a failure to fall back from."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if not isinstance(e, Exception):
            raise type(e)(*e.args) from error  # the interrupt itself (Ctrl-C, or SIGTERM through the CLI)
        seen.add(id(e))
        e = e.__cause__ or e.__context__


def to_onnx(
    model: nn.Module, args: tuple[torch.Tensor, ...], spec: GraphSpec, path: Path, opset: int = DEFAULT_OPSET
) -> str:
    """Export ``model`` to one self-contained ``path`` and return which exporter produced it.

    dynamo (torch.export) first: it is torch's supported path. The TorchScript exporter is kept as a fallback
    because it still handles models torch.export cannot trace. Either way the weights are written inside the
    file (the manifest's sha256 covers one file) and the graph is checked with onnx.checker.
    """
    in_names = [t.name for t in spec.inputs]
    out_names = [t.name for t in spec.outputs]
    proto: onnx.ModelProto | None = None
    method = "dynamo"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, args, f=None, input_names=in_names, output_names=out_names, opset_version=opset,
                dynamo=True, dynamic_shapes=_dynamo_shapes(spec), external_data=False, optimize=True,
                verbose=False,
            )
        assert program is not None
        proto = program.model_proto
    except Exception as e:  # the fallback is the point: any dynamo failure gets the second exporter
        _reraise_interrupt(e)
        log.warning("dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        method = "torchscript"
        ts_path = path.with_name("torchscript.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, args, str(ts_path), input_names=in_names, output_names=out_names,
                    opset_version=min(opset, 17), dynamo=False, dynamic_axes=spec.torch_dynamic_axes(),
                )
            proto = onnx.load(str(ts_path))
        except Exception as e2:
            raise ExportError(f"ONNX export failed with both exporters: {type(e2).__name__}: {e2}") from e2
        finally:
            ts_path.unlink(missing_ok=True)
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != in_names or got_out != out_names:
        raise ExportError(f"exported graph has I/O {got_in} -> {got_out}, expected {in_names} -> {out_names}")
    _rename_dims(proto, spec)
    if proto.ByteSize() >= 2**31 - 1:
        raise ExportError("model is over 2 GB, which a single-file ONNX cannot hold")
    onnx.save_model(proto, str(path))
    check_onnx_file(path)
    return method


def check_onnx_file(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file; any failure becomes one ExportError line naming the file."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: not a valid ONNX model ({first})") from e
    return model


def onnx_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ExportError(f"{path}: no default-domain opset import")

