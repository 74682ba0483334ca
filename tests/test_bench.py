"""The benchmark harness in quick mode: report schema, every cell present, files written.

No speed is asserted here (this machine is shared and noisy); ``make bench`` measures.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vae_deploy import benchmarking as vb
from vae_deploy.benchmarking.report import write_report
from vae_deploy.training.checkpoint import load_checkpoint

BATCH_SIZES = (1, 4)


@pytest.fixture(scope="module")
def quick_report(exports, tmp_path_factory):
    cfg = vb.BenchConfig.make(quick=True, batch_sizes=BATCH_SIZES, rounds=2, round_s=0.002, ceiling_size=256,
                              batcher_window_s=0.1, batcher_clients=8)
    report = vb.run_benchmark([exports["mlp"]], cfg, names=["tiny"])
    out = tmp_path_factory.mktemp("bench")
    return report, write_report(report, out), out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_report_schema_and_every_cell(quick_report):
    report, paths, _ = quick_report
    ceilings = report["ceilings"]["by_precision"]
    assert ceilings["fp32"]["gflops"] > 0 and ceilings["fp32"]["engine"]
    assert report["machine"]["cpu_class"] in ("amx", "avx512-bf16", "avx512", "avx2", "baseline")
    for c in report["cells"]:
        assert c["cpu_class"] == report["machine"]["cpu_class"]
        if c.get("gflops"):
            assert c["ceiling_precision"] in ("fp32", "bf16", "int8", "fp16")
            assert c["ceiling_fraction"] == pytest.approx(
                c["gflops"] / (ceilings.get(c["ceiling_precision"]) or ceilings["fp32"])["gflops"])
    data = json.loads(paths["json"].read_text())  # what users read back: strict JSON, no NaN
    assert data["schema"] == {"name": "vae-deploy-bench", "version": 1}
    for key in ("config", "machine", "models", "cells", "batcher", "skipped", "targets", "matmul_ceiling",
                "duration_s"):
        assert key in data, key
    m = data["machine"]
    for key in ("date", "cpu_model", "logical_cores", "torch_threads", "ort_intra_op_threads", "versions", "env"):
        assert key in m, key
    assert {"torch", "onnxruntime", "numpy"} <= set(m["versions"])
    assert _num(data["matmul_ceiling"]["gflops"]) and data["matmul_ceiling"]["gflops"] > 0

    (model,) = data["models"]
    assert model["name"] == "tiny" and model["kind"] == "export"
    assert {"eager", "torchscript", "ort-cpu", "ort-cpu-bare"} <= set(model["backends"])
    assert model["flops_per_sample"]["decoder"] == 4352.0  # 2 x (4*32 + 32*64)
    assert model["flops_per_sample"]["encoder"] == 4608.0  # 2 x (64*32 + 32*4 + 32*4)
    for name, v in model["parity_max_abs_diff"].items():  # bf16 rows carry 8 significant bits
        assert v < (2e-2 if name.endswith("-bf16") else 1e-4), (name, v)
    assert "checkpoint" in model["eager_baseline"]

    cells = {(c["model"], c["op"], c["backend"], c["batch_size"]): c for c in data["cells"]}
    expected = {("tiny", op, b, bs) for op in vb.OPS for b in model["backends"] for bs in BATCH_SIZES}
    assert set(cells) == expected
    for key, c in cells.items():
        assert "error" not in c, (key, c.get("error"))
        assert _num(c["samples_per_s"]) and c["samples_per_s"] > 0
        assert c["samples_per_s_best"] >= c["samples_per_s"]
        assert c["contention"] is None or 0 <= c["contention"] <= 1
        assert set(c["latency_ms"]) == {"p50", "p95", "p99", "mean", "min"}
        assert all(_num(v) and v > 0 for v in c["latency_ms"].values())
        assert c["latency_ms"]["p50"] <= c["latency_ms"]["p95"] <= c["latency_ms"]["p99"]
        assert isinstance(c["disturbed"], bool) and isinstance(c["disturbed_reasons"], list)
        assert c["rounds"] == 2 and len(c["round_samples_per_s"]) == 2
        assert _num(c["speedup_vs_eager"]) and _num(c["gflops"]) and _num(c["ceiling_fraction"])
        if c["backend"] == "ort-cpu":
            assert _num(c["overhead_vs_bare"]) and _num(c["overhead_vs_bare_paired"])
        else:
            assert c["overhead_vs_bare"] is None and c["overhead_vs_bare_paired"] is None
    prof = model["runtime_overhead_profile"]
    for op in ("sample", "encode"):
        assert _num(prof[op]["overhead_us"]) and prof[op]["steps_us"]
        assert all(_num(v) and v >= 0 for v in prof[op]["steps_us"].values())
        ab = prof[op]["ab"]
        assert ab["pairs"] >= 50 and _num(ab["overhead"]) and _num(ab["median_diff_us"]) and ab["bare_p50_us"] > 0
    assert cells[("tiny", "sample", "eager", 1)]["speedup_vs_eager"] == 1.0

    skipped = {s["backend"] for s in data["skipped"]}
    if not any(p == "cuda" for p in m["ort_providers_working"]):
        assert {"ort-cuda", "ort-tensorrt"} <= skipped

    # targets stated for another CPU class are left out
    assert len(data["targets"]) == sum(not t.get("cpu_classes") or m["cpu_class"] in t["cpu_classes"]
                                       for t in vb.TARGETS)
    for t in data["targets"]:
        assert {"label", "metric", "measured", "measured_best", "target", "met", "met_best", "comparison",
                "note"} <= set(t)
        assert t["met"] is None and t["met_best"] is None  # no reference model in a quick run: nothing claimed
    if vb.batcher_unavailable_reason() is None:
        (b,) = data["batcher"]
        assert b["model"] == "tiny" and b["clients"] == 8
        assert _num(b["samples_per_s"]) and _num(b["offline_samples_per_s"]) and _num(b["ratio"])


def test_markdown_and_plots_written(quick_report):
    report, paths, out = quick_report
    md = paths["markdown"].read_text()
    assert "## Targets" in md and "## tiny: sampling" in md and "## tiny: encoder" in md
    assert "## Runtime overhead at batch 1" in md
    assert "| ort-cpu-bare |" in md
    for name in ("throughput.png", "latency.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_flops_match_the_torch_count(exports):
    ckpt = load_checkpoint(json.loads((exports["conv"] / "manifest.json").read_text())["source"]["path"])
    model = ckpt.build_model().eval()
    cfg = model.config
    z = torch.zeros(1, cfg.latent_dim)
    x = torch.zeros(1, *cfg.input_shape)
    assert vb.onnx_flops(exports["conv"] / "decoder.onnx") == vb.torch_flops(model.decoder, z)
    assert vb.onnx_flops(exports["conv"] / "encoder.onnx") == vb.torch_flops(model.encoder, x)


def test_time_group_interleaves_and_flags():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    cfg = vb.BenchConfig(rounds=6, round_s=1e-4, warmup_s=0.0, switch_warm_s=0.0, max_calls_per_round=1)
    res = vb.time_group(calls, 1, cfg)
    timed = order[6:]  # 3 backends x (cold + warm-up call) first
    # every round: one re-warm call then one timed call per backend, in that round's order
    rounds = [timed[i:i + 6:2] for i in range(0, len(timed), 6)]
    assert timed[::2] == timed[1::2] and len(rounds) == 6
    assert rounds == vb.round_orders(["a", "b", "c"], 6)
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert {r[0] for r in rounds} == {"a", "b", "c"}  # every backend leads some round
    follows = {(r[i], r[i + 1]) for r in rounds for i in range(2)}
    assert follows == {(p, q) for p in "abc" for q in "abc" if p != q}
    assert all(r["rounds"] == 6 for r in res.values())

    def boom():
        raise RuntimeError("no such kernel")

    res = vb.time_group({"ok": lambda: None, "bad": boom}, 1, cfg)
    assert res["bad"] == {"error": "RuntimeError: no such kernel"} and "samples_per_s" in res["ok"]

    stats = vb.cell_stats([1.0, 1.0, 2.0, 4.0], [0.001] * 9 + [0.01], [1, 1, 1, 1], 1, cfg)
    assert stats["disturbed"] and len(stats["disturbed_reasons"]) == 2
    assert vb.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == 2.0


def test_cli_bench_quick(exports, tmp_path):
    from click.testing import CliRunner

    from vae_deploy.cli import main

    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["bench", str(exports["mlp"]), "--quick", "--batch-sizes", "2",
                                    "--backends", "eager,ort-cpu*", "--ops", "sample", "--no-batcher",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "report.json").read_text())
    assert {c["backend"] for c in data["cells"]} == {"eager", "ort-cpu", "ort-cpu-bare"}
    assert (out / "report.md").is_file()
    bad = CliRunner().invoke(main, ["bench", str(exports["mlp"]), "--ops", "decode", "--out", str(out)])
    assert bad.exit_code == 1 and "unknown op" in bad.output


def test_every_precision_variant_in_the_manifest_is_a_backend(exports, tmp_path):
    """A variant listed in manifest.json (here a relabelled copy of the fp32 decoder) becomes its
    own row for sampling; with no encoder at that precision its encode cells are skipped."""
    import shutil

    from vae_deploy.exporters.manifest import file_entry

    folder = tmp_path / "variants"
    shutil.copytree(exports["mlp"], folder)
    shutil.copy(folder / "decoder.onnx", folder / "decoder.int8.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["decoder.int8.onnx"] = file_entry(folder / "decoder.int8.onnx", role="decoder", fmt="onnx",
                                                        precision="int8")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    cfg = vb.BenchConfig.make(quick=True, batch_sizes=(1,), rounds=1, round_s=0.001, ceiling_size=128,
                              backends=("ort-cpu*",), batcher=False)
    report = vb.run_benchmark([folder], cfg)
    (model,) = report["models"]
    assert model["backends"] == ["ort-cpu", "ort-cpu-bare", "ort-cpu-int8"]
    assert model["precisions"] == ["fp32", "int8"]
    cells = {(c["op"], c["backend"]) for c in report["cells"]}
    assert ("sample", "ort-cpu-int8") in cells and ("encode", "ort-cpu-int8") not in cells
    assert any(s["backend"] == "ort-cpu-int8" and s.get("op") == "encode" for s in report["skipped"])
    assert model["parity_max_abs_diff"]["ort-cpu-int8"] == 0.0  # same graph: same numbers
