"""int8 variants through ``onnxruntime.quantization``: dynamic for matrix products, static
(QDQ, calibrated) for convolutional graphs.

Choices, each measured on this project's 2-core AVX2 machine (no VNNI), batch 512, one
thread, CPU time (bench/variants.py reproduces them):

- **Dynamic** (weights int8 once, activations quantised per batch at run time) for graphs
  whose work is MatMul/Gemm: the 16-256-512-784 MLP decoder ran 1.7x faster than fp32.
  Dynamic quantisation of *convolutions* (ConvInteger) was 3.7x slower than fp32, so only
  MatMul/Gemm are quantised dynamically.
- **Static QDQ** (activation ranges calibrated once on real data, then fixed) for graphs
  with convolutions: onnxruntime fuses the Q/DQ pairs into QLinearConv. On the rewritten
  28x28 conv decoder: 1.25x faster than its fp32 form (dynamic: 1.0x); 64x64x3: 1.35x
  (dynamic: 1.1x). On the MLP static was no faster than dynamic and 3-7x less accurate
  (fixed ranges), hence ``auto``.
- **Signed int8 weights with ``reduce_range``** (7-bit weights): the u8 x s8 kernels of
  AVX2 without VNNI sum pairs of products in int16 and saturate with full 8-bit weights; on
  the MLP that gave 3.4e-2 max error instead of 2.4e-3. Unsigned weights avoid it but ran
  1.3x slower. VNNI and ARM machines lose nothing measurable with 7-bit weights.
- **Per-channel weight scales**: on a trained MLP (digits) they halved the decoder's error
  (max 6.6e-2 -> 3.0e-2, mean 4.2e-3 -> 2.2e-3) at the same speed.
- **Calibration** for the decoder covers posterior means, N(0, I) draws *and* +-4 sigma
  corners: without the corners min/max ranges clip there (errors up to 0.6 on a trained conv
  decoder); with them, typical inputs lose about 2x resolution (mean error 2.9e-3 -> 5.8e-3),
  the test ELBO moves 0.13%.
- ConvTranspose is never quantised: onnxruntime's CPU provider has no int8 kernel for it,
  so Q/DQ around it would only add work (the fp32-fast rewrite turns the wide ones into
  Conv first).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vae_deploy.errors import ExportError

METHODS = ("auto", "dynamic", "static")
DYNAMIC_OPS = ("MatMul", "Gemm")
STATIC_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_BATCH = 64


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice (pre-processing, per-tensor info) through the root
    logger at INFO/WARNING; an export should not print it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def choose_method(model: onnx.ModelProto) -> str | None:
    """``static`` for graphs with convolutions, ``dynamic`` for matrix products only, None if
    nothing in the graph has an int8 kernel worth using."""
    ops = {n.op_type for n in model.graph.node}
    if "Conv" in ops:
        return "static"
    if ops & set(DYNAMIC_OPS):
        return "dynamic"
    return None


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an in-memory array."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self._it = iter([{input_name: np.ascontiguousarray(data[i:i + batch], dtype=np.float32)}
                         for i in range(0, len(data), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without value_info: the quantizer re-infers shapes and refuses stale entries for
    weights it transposes (seen with the dynamo exporter's Gemm weights)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    return m


def quantize_int8(
    model: onnx.ModelProto,
    *,
    method: str = "auto",
    calibration: np.ndarray | None = None,
    op_types: Sequence[str] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return the int8 model and a JSON-able description of how it was made.

    ``calibration`` (examples of the graph's input) is required for the static method.
    Raises ExportError when nothing can be quantised or the method cannot run.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method not in METHODS:
        raise ExportError(f"unknown int8 method {method!r}; expected one of {METHODS}")
    chosen = choose_method(model) if method == "auto" else method
    if chosen is None:
        raise ExportError("no MatMul, Gemm or Conv to quantise")
    if chosen == "static" and (calibration is None or len(calibration) == 0):
        raise ExportError("static int8 quantisation needs calibration data")
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="vae-deploy-int8-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        try:
            if chosen == "dynamic":
                ops = list(op_types or DYNAMIC_OPS)
                quantize_dynamic(_clean(model), out, op_types_to_quantize=ops, weight_type=QuantType.QInt8,
                                 reduce_range=True, per_channel=True, extra_options={"MatMulConstBOnly": True})
                info: dict[str, Any] = {"method": "dynamic", "ops": ops, "weights": "int8 per channel, 7-bit range",
                                        "activations": "uint8, range measured per batch at run time"}
            else:
                assert calibration is not None
                ops = list(op_types or STATIC_OPS)
                quantize_static(_clean(model), out, _Batches(input_name, calibration), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=ops, per_channel=True, reduce_range=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
                info = {"method": "static-qdq", "ops": ops, "weights": "int8 per channel, 7-bit range",
                        "activations": "uint8, ranges calibrated (min/max)",
                        "calibration_examples": int(len(calibration))}
        except ExportError:
            raise
        except Exception as e:  # the quantizer raises many types
            raise ExportError(f"int8 quantisation ({chosen}) failed: {type(e).__name__}: {e}") from e
        q = onnx.load(str(out))
    return q, info
