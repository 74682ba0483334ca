"""A ceiling that is a ceiling: per precision, the best large GEMM through every engine the rows
use (onnxruntime's MLAS, OpenVINO, torch), beside the theoretical peak from the CPU's flags,
cores and clock.

A model row's "share of the ceiling" divides its achieved GFLOP/s by the practical ceiling *of its
own precision* (an OpenVINO bf16 row by the best bf16 GEMM, an fp32 row by the best fp32 GEMM), so
a share above 100% means the row does fewer multiplications than its graph counts (Winograd) or
the reference GEMM is badly tuned, and is flagged, not celebrated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Which precision's ceiling a backend row is held to (by name); everything else is fp32.
ROW_PRECISIONS = (("-bf16", "bf16"), ("-int8", "int8"), ("-fp16", "fp16"))


def row_precision(backend: str) -> str:
    """The arithmetic a bench row runs: ``openvino-cpu-bf16``/``eager-bf16`` -> bf16, ``*-int8`` ->
    int8, ``*-fp16`` -> fp16, everything else (fp32-fast and fp32-winograd included) -> fp32."""
    for suffix, precision in ROW_PRECISIONS:
        if backend.endswith(suffix):
            return precision
    return "fp32"


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_matmul_ceiling(size: int = 2048, repeats: int = 5, numpy_too: bool = True) -> dict[str, Any]:
    """Best fp32 GFLOP/s of a square ``size`` matmul: torch.mm (at torch's thread count) and,
    with ``numpy_too``, numpy's ``@`` (its BLAS's own thread count, which torch's setting does
    not reach), best of ``repeats`` each after one warm-up."""
    import torch

    flops = 2.0 * size**3
    out: dict[str, Any] = {"size": size, "repeats": repeats}
    gen = torch.Generator().manual_seed(0)
    a = torch.rand((size, size), generator=gen)
    b = torch.rand((size, size), generator=gen)
    an, bn = a.numpy(), b.numpy()
    libs = [("torch.mm", lambda: torch.mm(a, b))]
    if numpy_too:
        libs.append(("numpy.matmul", lambda: an @ bn))
    for name, fn in libs:
        out[name] = flops / _best_of(fn, repeats) / 1e9
    out["gflops"] = max(out[name] for name, _ in libs)
    return out


def _matmul_onnx(size: int, b: np.ndarray) -> bytes:
    """``Y = A @ B`` with B a constant initializer (as a layer's weights are: engines may
    pre-pack it), A a [size, size] float32 input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def gemm_ceilings(size: int = 2048, repeats: int = 5, threads: int | None = None,
                  engines: tuple[str, ...] = ("torch", "onnxruntime", "openvino"),
                  bf16: bool | None = None) -> list[dict[str, Any]]:
    """GFLOP/s of a ``size``^3 GEMM per (engine, precision): torch fp32 (+ bf16), onnxruntime fp32
    (MLAS), OpenVINO f32 (+ bf16 through ``INFERENCE_PRECISION_HINT``). bf16 entries only where
    it is native (``bf16=None``: ask the CPU flags). An engine that cannot run says why."""
    import torch

    from vae_deploy.runtime.engines.cpu import native_bf16

    bf16 = native_bf16() if bf16 is None else bf16
    flops = 2.0 * size**3
    gen = torch.Generator().manual_seed(0)
    a_t, b_t = torch.rand((size, size), generator=gen), torch.rand((size, size), generator=gen)
    a, b = a_t.numpy(), b_t.numpy()
    out: list[dict[str, Any]] = []

    def add(engine: str, precision: str, fn: Callable[[], Any]) -> None:
        try:
            s = _best_of(fn, repeats)
            out.append({"engine": engine, "precision": precision, "gflops": flops / s / 1e9, "size": size})
        except Exception as e:  # an engine that cannot run here is reported, not fatal
            out.append({"engine": engine, "precision": precision, "gflops": None, "error": f"{type(e).__name__}: {e}"})

    if "torch" in engines:
        with torch.inference_mode():
            add("torch", "fp32", lambda: torch.mm(a_t, b_t))
            if bf16:
                a16, b16 = a_t.bfloat16(), b_t.bfloat16()
                add("torch", "bf16", lambda: torch.mm(a16, b16))
    model = _matmul_onnx(size, b) if {"onnxruntime", "openvino"} & set(engines) else b""
    if "onnxruntime" in engines:
        import onnxruntime as ort

        from vae_deploy.runtime.engines.onnxruntime import default_session_options

        sess = ort.InferenceSession(model, default_session_options(threads), providers=["CPUExecutionProvider"])
        add("onnxruntime", "fp32", lambda: sess.run(None, {"a": a}))
    if "openvino" in engines:
        from vae_deploy.runtime.engines.openvino import version

        if version() is None:
            out.append({"engine": "openvino", "precision": "fp32", "gflops": None, "error": "openvino not installed"})
        else:
            import openvino as ov

            core = ov.Core()
            for precision, hint in (("fp32", "f32"), *((("bf16", "bf16"),) if bf16 else ())):
                cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                       "NUM_STREAMS": 1}
                if threads:
                    cfg["INFERENCE_NUM_THREADS"] = int(threads)
                try:
                    req = core.compile_model(core.read_model(model, b""), "CPU", cfg).create_infer_request()
                except Exception as e:
                    out.append({"engine": "openvino", "precision": precision, "gflops": None,
                                "error": f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}"})
                    continue
                add("openvino", precision, lambda req=req: req.infer({0: a}, share_inputs=True))
    return out


def ceilings_by_precision(measured: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{precision: {"gflops": best, "engine": who, "peak": theoretical, ...}}`` from
    :func:`gemm_ceilings` entries (several runs may be concatenated: the best counts)."""
    from vae_deploy.runtime.engines.cpu import theoretical_peak

    out: dict[str, dict[str, Any]] = {}
    for m in measured:
        if m.get("gflops") is None:
            continue
        cur = out.get(m["precision"])
        if cur is None or m["gflops"] > cur["gflops"]:
            out[m["precision"]] = {"gflops": m["gflops"], "engine": m["engine"]}
    for precision, entry in out.items():
        peak = theoretical_peak(precision)
        entry["peak_gflops"] = peak["gflops"]
        entry["peak"] = peak
        entry["share_of_peak"] = entry["gflops"] / peak["gflops"] if peak["gflops"] else None
    return out


def share_of_ceiling(gflops: float | None, backend: str, ceilings: dict[str, dict[str, Any]]) -> float | None:
    """A row's achieved GFLOP/s over the practical ceiling of its own precision (fp32's where
    that precision was not measured, e.g. int8)."""
    if not gflops:
        return None
    c = ceilings.get(row_precision(backend)) or ceilings.get("fp32")
    return gflops / c["gflops"] if c and c.get("gflops") else None
