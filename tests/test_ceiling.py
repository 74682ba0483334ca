"""The bench's ceilings: theoretical peak from flags/cores/clock, the measured GEMM per engine and
precision, and which ceiling a row is held to."""

from __future__ import annotations

import numpy as np
import pytest

from vae_deploy.benchmarking.ceiling import (
    _matmul_onnx,
    ceilings_by_precision,
    gemm_ceilings,
    row_precision,
    share_of_ceiling,
)
from vae_deploy.runtime.engines.cpu import KEY_FLAGS, cpu_class, physical_cores, theoretical_peak

AMX = {f: True for f in KEY_FLAGS}
AVX512_BF16 = {**AMX, "amx_bf16": False, "amx_int8": False}
AVX512 = {**AVX512_BF16, "avx512_bf16": False}
AVX2 = {f: f == "avx2" for f in KEY_FLAGS}
NONE = {f: False for f in KEY_FLAGS}


@pytest.mark.parametrize("flags, klass, fp32, bf16, int8", [
    (AMX, "amx", 64, 1024, 2048),
    (AVX512_BF16, "avx512-bf16", 64, 128, 256),
    (AVX512, "avx512", 64, None, 256),
    (AVX2, "avx2", 32, None, 64),
    (NONE, "baseline", 8, None, None),
])
def test_class_and_peak_follow_the_flags(flags, klass, fp32, bf16, int8):
    assert cpu_class(flags) == klass
    for precision, per_cycle in (("fp32", fp32), ("bf16", bf16), ("int8", int8)):
        peak = theoretical_peak(precision, flags, cores=2, ghz=2.5)
        if per_cycle is None:  # no native unit: no peak claimed (bf16 would be emulated)
            assert peak["gflops"] is None and peak["unit"] is None
        else:
            assert peak["gflops"] == pytest.approx(per_cycle * 2 * 2.5)


def test_peak_without_a_clock_is_unknown_not_zero(monkeypatch):
    import vae_deploy.runtime.engines.cpu as cpu

    monkeypatch.setattr(cpu, "_clock_ghz", lambda: (None, "unknown"))
    peak = theoretical_peak("fp32", AVX2, cores=4)
    assert peak["gflops"] is None and peak["clock_from"] == "unknown" and peak["unit"] == "avx2"
    assert theoretical_peak("fp32", AVX2, cores=4, ghz=3.0)["gflops"] == pytest.approx(384.0)


def test_this_machine_has_a_core_count_and_a_fp32_peak():
    assert physical_cores() >= 1
    peak = theoretical_peak("fp32")
    assert peak["unit"] is not None and (peak["gflops"] is None or peak["gflops"] > 0)


@pytest.mark.parametrize("backend, precision", [
    ("openvino-cpu-bf16", "bf16"), ("eager-bf16", "bf16"), ("ort-cpu-int8", "int8"), ("openvino-cpu-int8", "int8"),
    ("ort-cuda-fp16", "fp16"), ("ort-cpu", "fp32"), ("ort-cpu-fp32-winograd", "fp32"), ("openvino-cpu", "fp32"),
    ("ort-cpu-fp32-fast", "fp32"), ("eager", "fp32"),
])
def test_each_row_is_held_to_its_own_precision(backend, precision):
    assert row_precision(backend) == precision


def test_best_engine_per_precision_and_share():
    measured = [
        {"engine": "torch", "precision": "fp32", "gflops": 100.0},
        {"engine": "onnxruntime", "precision": "fp32", "gflops": 150.0},
        {"engine": "openvino", "precision": "fp32", "gflops": None, "error": "x"},
        {"engine": "openvino", "precision": "bf16", "gflops": 900.0},
        {"engine": "torch", "precision": "bf16", "gflops": 700.0},
    ]
    c = ceilings_by_precision(measured)
    assert (c["fp32"]["engine"], c["fp32"]["gflops"]) == ("onnxruntime", 150.0)
    assert (c["bf16"]["engine"], c["bf16"]["gflops"]) == ("openvino", 900.0)
    assert share_of_ceiling(75.0, "ort-cpu", c) == pytest.approx(0.5)
    assert share_of_ceiling(450.0, "openvino-cpu-bf16", c) == pytest.approx(0.5)
    assert share_of_ceiling(75.0, "ort-cpu-int8", c) == pytest.approx(0.5)  # int8 not measured: fp32's
    assert share_of_ceiling(None, "ort-cpu", c) is None


def test_the_reference_gemm_graph_computes_the_product():
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    a, b = rng.random((16, 16), dtype=np.float32), rng.random((16, 16), dtype=np.float32)
    sess = ort.InferenceSession(_matmul_onnx(16, b), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"a": a})[0], a @ b, rtol=1e-5)


def test_gemm_ceilings_measure_every_engine_here():
    got = gemm_ceilings(size=64, repeats=1, threads=1, bf16=False)
    by = {(m["engine"], m["precision"]): m for m in got}
    assert by[("torch", "fp32")]["gflops"] > 0 and by[("onnxruntime", "fp32")]["gflops"] > 0
    ov = by[("openvino", "fp32")]
    assert ov["gflops"] > 0 or "not installed" in ov["error"]
    assert not [k for k in by if k[1] == "bf16"]  # bf16=False: none measured


@pytest.mark.parametrize("cap, klass", [("AVX2", "avx2"), ("avx512_core", "avx512"), ("AVX512_CORE_BF16", "avx512-bf16"),
                                        ("", None)])
def test_onednn_isa_cap_hides_the_flags_above_it(monkeypatch, cap, klass):
    import vae_deploy.runtime.engines.cpu as cpu

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("test cpu", frozenset(KEY_FLAGS)))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    flags = cpu.cpu_flags()
    assert cpu.cpu_class(flags) == (klass or "amx")
    assert cpu.native_bf16(flags) == (klass in ("avx512-bf16", None))
