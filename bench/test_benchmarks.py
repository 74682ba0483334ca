"""pytest-benchmark suite: model x backend x batch size, for sampling and encoding.

    pytest bench/ --benchmark-json out.json
    pytest bench/ -k "ref-mlp28 and bs512"        # one slice
    pytest bench/ --benchmark-group-by=group      # the default: backends side by side per cell

Each test is grouped by (model, op, batch size), so pytest-benchmark's table compares the
backends of one cell. pytest-benchmark times one test after another; for measurements with
the backends interleaved round by round (a shared, noisy machine) use ``make bench`` or
``vae-deploy bench``, which also write the report.
"""

from __future__ import annotations

import pytest

from bench.conftest import backend, models
from vae_deploy import benchmarking as vb


def _run(benchmark, case, op: str) -> None:
    model_name, name, bs = case
    model = models()[model_name]
    why = vb.op_supported(model, name, op)
    if why:
        pytest.skip(why)
    b = backend(model_name, name)
    fn = vb.make_call(b, op, bs, vb.input_batch(model, bs) if op == "encode" else None)
    benchmark.group = f"{model_name} {op} bs{bs}"
    benchmark.extra_info.update({"model": model_name, "backend": name, "op": op, "batch_size": bs})
    benchmark(fn)
    median = benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s"] = bs / median if median else None
    role = "decoder" if op == "sample" else "encoder"
    if role not in model.flops:
        x_shape, z_shape = vb.example_shapes(model.manifest)
        model.flops[role] = vb.onnx_flops(model.folder / f"{role}.onnx", z_shape if role == "decoder" else x_shape)
    flops = model.flops[role]
    if flops and median:
        benchmark.extra_info["gflops"] = flops * bs / median / 1e9


def test_sample(benchmark, case) -> None:
    """Host noise z ~ N(0, I) + decoder, ``batch_size`` samples per call."""
    _run(benchmark, case, "sample")


def test_encode(benchmark, case) -> None:
    """Encoder on a fixed batch of uniform [0, 1) inputs."""
    _run(benchmark, case, "encode")


def test_batcher(benchmark, batcher_model) -> None:
    """64 concurrent single-sample clients through the micro-batcher vs offline batch 64."""
    why = vb.batcher_unavailable_reason()
    if why:
        pytest.skip(why)
    rt = backend(batcher_model, vb.ORT)
    cfg = vb.BenchConfig(batcher_rounds=1, batcher_window_s=1.0)
    res = benchmark.pedantic(vb.measure_batcher, args=(rt, cfg), rounds=1, iterations=1)
    benchmark.group = f"{batcher_model} micro-batcher"
    benchmark.extra_info.update({k: res[k] for k in ("clients", "samples_per_s", "offline_samples_per_s", "ratio")})
