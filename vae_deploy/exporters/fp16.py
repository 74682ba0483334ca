"""fp16 variants for GPU deployment (CUDA, TensorRT), made by onnxruntime's own converter.

- Inputs and outputs stay float32 (``keep_io_types``): the contract (float32 tensors) and
  every host-side computation (noise, reparameterisation, ELBO) are unchanged; the casts
  sit inside the graph.
- Ops kept in float32 (``BLOCK_LIST``): the converter's defaults plus ``Sigmoid`` (an fp16
  probability near 1 has a step of 4.9e-4, so ``log(1 - p)`` in the Bernoulli likelihood
  would be badly off for pixels that are off), and ``Exp``/``Log``/``Softplus``/``Pow``
  (overflow or cancellation; none is in this project's graphs, user models may have them).
  ``Clip`` (the logvar clamp to [-30, 20]) stays in fp16: both bounds are representable
  and the ``exp`` that follows runs in the host in float32.
- Weights beyond fp16's range (65504) are refused rather than clipped silently; NaN/Inf in
  the outputs are caught by the parity check (same places as the reference, or fail) on
  real data and on the +-4 sigma latents.

On CPU, onnxruntime has fp16 kernels for few ops and runs the rest through inserted casts:
correct (that is how the variant is verified at export) but no faster than fp32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from vae_deploy.errors import ExportError

FP16_MAX = 65504.0
EXTRA_BLOCKED = ("Sigmoid", "Exp", "Log", "Softplus", "Pow")
CPU_NOTE = ("fp16 files are for GPU deployment (CUDA/TensorRT): onnxruntime on CPU runs them through "
            "float32 casts and gains nothing over fp32")


def block_list() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(EXTRA_BLOCKED))


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The fp16 model (float32 IO) and a JSON-able description; ExportError if impossible."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    too_big = []
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            a = numpy_helper.to_array(t)
            if a.size and float(np.abs(a).max()) > FP16_MAX:
                too_big.append(f"{t.name} (max |w| {float(np.abs(a).max()):.3g})")
    if too_big:
        raise ExportError(f"weights beyond float16's range (65504): {', '.join(too_big[:3])}")
    blocked = block_list()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    try:
        out = convert_float_to_float16(m, keep_io_types=True, op_block_list=blocked)
    except Exception as e:
        raise ExportError(f"fp16 conversion failed: {type(e).__name__}: {e}") from e
    out = _toposort(out)
    kept = sorted({n.op_type for n in out.graph.node if n.op_type in blocked})
    return out, {"method": "onnxruntime.transformers.float16 (keep_io_types)", "io": "float32",
                 "kept_in_float32": kept, "note": CPU_NOTE}


def _toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter appends the input casts after the nodes that read them (with
    ``keep_io_types``); onnx requires topological order. onnx_ir's stable sort fixes it."""
    import onnx_ir as ir

    m = ir.from_proto(model)
    m.graph.sort()
    return ir.to_proto(m)
