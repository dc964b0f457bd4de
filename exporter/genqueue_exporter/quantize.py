"""int8 variants: dynamic quantization of an exported fp32 graph's weights."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from genqueue_exporter.errors import ExportError
from genqueue_exporter.onnx_export import check_onnx_file


def quantize_int8(fp32_onnx: Path, out: Path) -> str:
    """Dynamic int8 quantization of the MatMul/Gemm weights; activations stay float, so I/O is unchanged."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The dynamo exporter's value_info carries shapes from before its Gemm rewrites, which the quantizer's
    # strict shape inference rejects; it re-infers them anyway.
    model = onnx.load(str(fp32_onnx))
    del model.graph.value_info[:]
    plain = out.with_name("fp32-plain.onnx")
    onnx.save_model(model, str(plain))
    logging.disable(logging.WARNING)  # quantize_dynamic logs advice to the root logger on every call
    try:
        quantize_dynamic(
            model_input=str(plain), model_output=str(out), weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            # Shape inference cannot type the outputs of com.microsoft ops (the ragged graph's attention).
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except Exception as e:
        raise ExportError(f"int8 quantization failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    finally:
        logging.disable(logging.NOTSET)
        plain.unlink(missing_ok=True)
    check_onnx_file(out)
    return "quantize_dynamic(int8)"
