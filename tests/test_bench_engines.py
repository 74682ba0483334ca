"""Bench: engine x precision rows, peers, auto's pick among gated rows, CPU flags, plots, console."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from vae_deploy import benchmarking as vb
from vae_deploy.benchmarking import targets
from vae_deploy.benchmarking.report import PLOTS_SKIPPED, write_report
from vae_deploy.runtime.engines import cpu


def _model(exports):
    return vb.prepare_export(exports["mlp"], name="tiny")


def test_every_engine_x_precision_is_a_row_and_peers_too(exports):
    names = vb.candidate_backends(_model(exports))
    for row in ("eager", "eager-bf16", "torch-compile", "ort-plain", "torchscript", "ort-cpu", "ort-cpu-bare",
                "openvino-cpu", "openvino-cpu-bf16"):
        assert row in names


def test_plain_ort_peer_decodes_like_the_runtime(exports):
    """The HF-Optimum-style peer: default session options, the same fp32 graph."""
    import numpy as np

    model = _model(exports)
    cfg = vb.BenchConfig.make(quick=True, backends=("ort-plain", "ort-cpu"))
    backends, skipped = vb.build_backends(model, cfg)
    assert set(backends) == {"ort-plain", "ort-cpu"}, skipped
    z = np.random.default_rng(0).standard_normal((3, *vb.example_shapes(model.manifest)[1]), dtype=np.float32)
    np.testing.assert_allclose(backends["ort-plain"].decode(z), backends["ort-cpu"].decode(z), atol=1e-5)
    assert backends["ort-plain"].sample(2).shape[0] == 2


def test_engine_filter_and_peer_skip_reasons(exports, monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {f: False for f in cpu.KEY_FLAGS})  # a CPU without bf16
    cfg = vb.BenchConfig.make(quick=True, engines=("onnxruntime",), backends=("eager*", "torch-compile", "ort-cpu",
                                                                             "openvino*"))
    backends, skipped = vb.build_backends(_model(exports), cfg)
    assert set(backends) == {"eager", "ort-cpu"}  # no openvino row: --engine onnxruntime
    assert "no native bf16" in skipped["eager-bf16"]
    assert "disabled" in skipped["torch-compile"]  # --quick leaves compilation out
    for b in backends.values():
        b.close()


def _cell(model, backend, sps, speedup):
    return {"model": model, "op": "sample", "batch_size": 1, "backend": backend, "samples_per_s": sps,
            "samples_per_s_best": sps * 1.1, "speedup_vs_eager": speedup, "speedup_vs_eager_best": speedup * 1.1}


def _report(native_bf16=True):
    cells = [_cell("ref-sd-vae", "eager", 1.0, 1.0), _cell("ref-sd-vae", "eager-bf16", 1.5, 1.5),
             _cell("ref-sd-vae", "ort-cpu", 1.3, 1.3), _cell("ref-sd-vae", "openvino-cpu-bf16", 9.0, 9.0),
             _cell("ref-sd-vae", "openvino-cpu-int8", 20.0, 20.0)]
    model = {"name": "ref-sd-vae", "parity_output_max_abs": 1.0, "parity_output_range": 2.0,
             "parity_max_abs_diff": {"eager-bf16": 0.01, "ort-cpu": 1e-6, "openvino-cpu-bf16": 0.01,
                                     "openvino-cpu-int8": 0.5}}  # int8 row far off: must not be auto's pick
    return {"cells": cells, "models": [model], "batcher": [], "skipped": [],
            "machine": {"native_bf16": native_bf16}}


def test_auto_is_the_fastest_row_that_passes_its_gate():
    report = _report()
    pick, notes = targets.auto_pick(report, "ref-sd-vae", "sample", 1)
    assert pick["backend"] == "openvino-cpu-bf16"
    assert any(n.startswith("openvino-cpu-int8 excluded") for n in notes)
    rows = {t["metric"]: t for t in targets.evaluate_targets(report) if t["model"] == "ref-sd-vae"}
    assert rows["auto_speedup_vs_eager"]["measured"] == 9.0 and rows["auto_speedup_vs_eager"]["met"]
    assert rows["auto_vs_best_peer"]["measured"] == pytest.approx(6.0)
    assert "0.50% of the output range 2" in rows["auto_speedup_vs_eager"]["note"]  # error vs eager reported
    no_bf16 = {t["metric"]: t for t in targets.evaluate_targets(_report(native_bf16=False))}
    assert "no native bf16" in no_bf16["auto_vs_ort_fp32"]["note"]


def test_machine_records_the_cpu_flags():
    from vae_deploy.benchmarking.machine import machine_info

    m = machine_info(vb.BenchConfig.make(quick=True))
    assert set(m["cpu_flags"]) == set(cpu.KEY_FLAGS) and isinstance(m["native_bf16"], bool)
    assert "openvino" in m["versions"]


def test_plots_skipped_is_said(monkeypatch, tmp_path):
    report = {**_report(), "schema": {}, "config": {"ops": ["sample"], "batch_sizes": [1]}, "targets": []}
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    try:
        paths = write_report(report, tmp_path)
    except Exception:  # the Markdown renderer needs a full report; the plot decision comes first
        paths = {}
    assert "throughput" not in paths
    from vae_deploy.cli import main

    monkeypatch.setattr(vb, "run_benchmark", lambda *a, **k: {**report, "duration_s": 0.0})
    monkeypatch.setattr("vae_deploy.benchmarking.report.write_report", lambda r, out: {"markdown": out / "report.md"})
    res = CliRunner().invoke(main, ["bench", "--quick", "--no-reference-models", "--out", str(tmp_path)])
    assert PLOTS_SKIPPED in res.output, res.output


def test_openvino_static_shapes_compile_per_shape_and_agree(exports):
    """The static-shape lever: each batch size gets its own static compilation (bounded), and
    every one computes what the dynamic graph computes."""
    import numpy as np

    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from vae_deploy.runtime.engines.openvino import MAX_STATIC, OpenVinoEngine

    folder = exports["conv"]
    dyn = OpenVinoEngine(folder / "encoder.onnx", folder / "decoder.onnx", threads=1)
    st = OpenVinoEngine(folder / "encoder.onnx", folder / "decoder.onnx", threads=1, static_shapes=True)
    latent = dyn.declared_input("decoder")
    rng = np.random.default_rng(0)
    for n in range(1, MAX_STATIC + 3):
        z = rng.standard_normal((n, *latent), dtype=np.float32)
        np.testing.assert_allclose(st.decode(z), dyn.decode(z), atol=1e-5)
    assert len(st._static) == MAX_STATIC and ("decoder", (MAX_STATIC + 2, *latent)) in st._static
    assert not dyn._static and st.describe()["static_shapes"] is True
