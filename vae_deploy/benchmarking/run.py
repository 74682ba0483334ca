"""One benchmark run: every model x op x batch size, backends side by side, into a report dict."""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vae_deploy.benchmarking.backends import build_backends, make_call, op_supported, parity_details
from vae_deploy.benchmarking.batcher import batcher_unavailable_reason, measure_batcher
from vae_deploy.benchmarking.ceiling import (
    ceilings_by_precision,
    gemm_ceilings,
    measure_matmul_ceiling,
    row_precision,
    share_of_ceiling,
)
from vae_deploy.benchmarking.config import BARE, EAGER, ORT, SCHEMA, BenchConfig
from vae_deploy.benchmarking.machine import machine_info
from vae_deploy.benchmarking.models import (
    REFERENCE_MODELS,
    BenchModel,
    default_cache_dir,
    example_shapes,
    input_batch,
    precision_variants,
    prepare_export,
    prepare_reference,
)
from vae_deploy.benchmarking.overhead import profile_runtime_overhead
from vae_deploy.benchmarking.sd import SD_NAME, sd_models, sd_unavailable_reason
from vae_deploy.benchmarking.targets import evaluate_targets
from vae_deploy.benchmarking.timing import CpuMonitor, measure_ab, paired_ratio, time_group
from vae_deploy.checks.flops import onnx_flops
from vae_deploy.errors import ConfigError


def run_benchmark(export_dirs: Sequence[str | Path] = (), cfg: BenchConfig | None = None, *,
                  names: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every model (the given export folders, then the reference models) and return
    the report dictionary (see ``bench_report.write_report`` for the files)."""
    import torch

    cfg = cfg or BenchConfig()
    cfg.validate()
    say = log or (lambda s: None)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    machine = machine_info(cfg)
    load = machine["load_average_start"]
    flags = [f for f, v in machine["cpu_flags"].items() if v]
    say(f"machine: {machine['cpu_model']} ({', '.join(flags) or 'none of the key CPU flags'}), "
        f"{machine['usable_cores']} usable cores, torch threads {machine['torch_threads']}, load average "
        + ("unknown" if not load else "/".join(f"{v:.2f}" for v in load) + " (1/5/15 min)"))
    say("each cell line: samples/s per backend (median round); a trailing '!' marks a disturbed cell "
        "(rounds spread widely, slow tail calls or other processes on the CPUs): read it with care")
    from vae_deploy.runtime.engines.cpu import cpu_class

    klass = cpu_class(machine["cpu_flags"])
    machine["cpu_class"] = klass
    run_monitor = CpuMonitor().start()
    ceiling = [measure_matmul_ceiling(cfg.ceiling_size, cfg.ceiling_repeats, numpy_too=cfg.threads is None)]
    gemms = gemm_ceilings(cfg.ceiling_size, cfg.ceiling_repeats, cfg.threads)
    say(f"[{klass}] GEMM ceilings {cfg.ceiling_size}^3: " + ", ".join(
        f"{g['engine']} {g['precision']} {g['gflops']:.1f}" for g in gemms if g.get("gflops")) + " GFLOP/s")

    models: list[BenchModel] = []
    skipped_models: list[dict[str, str]] = []
    for i, d in enumerate(export_dirs):
        models.append(prepare_export(d, names[i] if names and i < len(names) else None))
    if cfg.reference_models:
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        for ref in REFERENCE_MODELS:
            models.append(prepare_reference(ref, cache, log=say))
        if cfg.sd_model:
            why = sd_unavailable_reason()
            if why:
                skipped_models.append({"model": SD_NAME, "reason": why})
                say(f"[{SD_NAME}] skipped: {why}")
            else:
                models.extend(sd_models(cache, cfg.sd_sizes, log=say))
    if not models:
        raise ConfigError("nothing to measure: give an export folder or enable the reference models")
    taken = set()
    for m in models:  # unique names
        base, i = m.name, 2
        while m.name in taken:
            m.name, i = f"{base}-{i}", i + 1
        taken.add(m.name)

    report: dict[str, Any] = {"schema": dict(SCHEMA), "config": cfg.to_dict(), "machine": machine,
                              "models": [], "cells": [], "batcher": [], "skipped": []}
    report["skipped"].extend({"model": m["model"], "backend": "*", "reason": m["reason"]} for m in skipped_models)
    no_batcher = batcher_unavailable_reason() if cfg.batcher else "disabled (--no-batcher)"
    for model in models:
        x_shape, z_shape = example_shapes(model.manifest)
        model.flops["decoder"] = onnx_flops(model.folder / "decoder.onnx", z_shape)
        model.flops["encoder"] = onnx_flops(model.folder / "encoder.onnx", x_shape)
        mcfg = cfg
        if model.name.startswith(SD_NAME):  # seconds per call: few rounds, no time cap, no warm-up loop
            mcfg = dataclasses.replace(cfg, rounds=cfg.sd_rounds, min_rounds=min(cfg.min_rounds, cfg.sd_rounds),
                                       max_group_s=float("inf"), warmup_s=0.0)
        backends, skipped = build_backends(model, mcfg)
        say(f"[{model.name}] {model.description}: backends {', '.join(backends)}"
            + (f"; skipped {', '.join(skipped)}" if skipped else ""))
        parity, out_scale, out_range = (parity_details(model, backends) if cfg.parity_check and backends
                                        else ({}, float("nan"), float("nan")))
        report["models"].append({
            "name": model.name, "kind": model.kind, "description": model.description,
            "folder": str(model.folder), "family": model.manifest["model"].get("family"),
            "input_shape": model.manifest["model"]["input_shape"],
            "latent_shape": model.manifest["model"]["latent_shape"],
            "config": model.manifest["model"].get("config") or None,
            "flops_per_sample": dict(model.flops), "backends": list(backends), "skipped_backends": skipped,
            "eager_baseline": model.eager_note, "parity_max_abs_diff": parity,
            "parity_output_max_abs": out_scale, "parity_output_range": out_range,
            "parity_reference": EAGER if EAGER in backends else next(iter(backends), None),
            "precisions": ["fp32", *precision_variants(model.manifest)],
        })
        for name, why in skipped.items():
            report["skipped"].append({"model": model.name, "backend": name, "reason": why})
        for op in [o for o in cfg.ops if model.ops is None or o in model.ops]:
            for bs in model.batch_sizes or cfg.batch_sizes:
                x = input_batch(model, bs) if op == "encode" else None
                calls = {}
                for name, b in backends.items():
                    why = op_supported(model, name, op)
                    if why:
                        report["skipped"].append({"model": model.name, "backend": name, "op": op,
                                                  "batch_size": bs, "reason": why})
                        continue
                    calls[name] = make_call(b, op, bs, x, model.latent_shape)
                res = time_group(calls, bs, mcfg, log=say)
                eager_rounds = res.get(EAGER, {}).get("round_samples_per_s")
                bare_rounds = res.get(BARE, {}).get("round_samples_per_s")
                flops = model.flops.get("decoder" if op == "sample" else "encoder")
                line = []
                for name, st in res.items():
                    cell = {"model": model.name, "op": op, "backend": name, "batch_size": bs, "cpu_class": klass, **st}
                    if "error" not in st:
                        cell["speedup_vs_eager"] = (paired_ratio(st["round_samples_per_s"], eager_rounds)
                                                    if eager_rounds else None)
                        # Best round vs best round: what each backend does when the machine lets it
                        # (noise only ever slows a round down), the contention-robust estimate.
                        cell["speedup_vs_eager_best"] = (st["samples_per_s_best"] / res[EAGER]["samples_per_s_best"]
                                                         if eager_rounds else None)
                        # The wrapper adds a fixed cost per call, so its overhead is read on the
                        # median call (robust to stalls); the paired-throughput figure is kept too.
                        cell["overhead_vs_bare"] = None
                        cell["overhead_vs_bare_paired"] = None
                        cell["overhead_vs_bare_min"] = None
                        if name == ORT and bare_rounds:
                            bare_p50 = res[BARE]["latency_ms"]["p50"]
                            cell["overhead_vs_bare"] = st["latency_ms"]["p50"] / bare_p50 - 1.0
                            cell["overhead_vs_bare_min"] = st["latency_ms"]["min"] / res[BARE]["latency_ms"]["min"] - 1.0
                            r = paired_ratio(bare_rounds, st["round_samples_per_s"])
                            cell["overhead_vs_bare_paired"] = None if r is None else r - 1.0
                        cell["gflops"] = flops * st["samples_per_s"] / 1e9 if flops else None
                        cell["gflops_best"] = flops * st["samples_per_s_best"] / 1e9 if flops else None
                        line.append(f"{name} {st['samples_per_s']:.4g}/s" + ("!" if st["disturbed"] else ""))
                    report["cells"].append(cell)
                say(f"  [{klass}] {model.name} {op} bs {bs}: " + ", ".join(line))
        # The wrapper's per-call profile and the micro-batcher mean something only for fast calls:
        # on the SD decoder (seconds per call) they would run for hours.
        fast_calls = not model.name.startswith(SD_NAME)
        if ORT in backends and fast_calls:
            prof = profile_runtime_overhead(backends[ORT], calls=200 if cfg.quick else 2000,
                                            rounds=3 if cfg.quick else 15)
            for op in ("sample", "encode"):
                if op not in cfg.ops:
                    continue
                if BARE in backends:
                    x1 = input_batch(model, 1) if op == "encode" else None
                    ab = measure_ab(make_call(backends[BARE], op, 1, x1), make_call(backends[ORT], op, 1, x1),
                                    seconds=0.1 if cfg.quick else 1.0)
                    prof[op]["ab"] = ab
                    p50 = ab["bare_p50_us"]
                    prof[op]["bare_p50_us"] = p50
                    prof[op]["overhead_fraction_of_bare_p50"] = prof[op]["overhead_us"] / p50 if p50 else None
            report["models"][-1]["runtime_overhead_profile"] = prof
        if no_batcher is None and ORT in backends and fast_calls and (
                cfg.batcher_models is None or model.name in cfg.batcher_models):
            say(f"  {model.name} micro-batcher: {cfg.batcher_clients} clients ...")
            try:
                res = measure_batcher(backends[ORT], cfg, log=say)
                report["batcher"].append({"model": model.name, "backend": ORT, **res})
                say(f"  {model.name} micro-batcher: {res['samples_per_s']:.4g}/s vs offline batch "
                    f"{cfg.batcher_max_batch} {res['offline_samples_per_s']:.4g}/s (ratio {res['ratio']:.2f})")
            except Exception as e:
                report["batcher"].append({"model": model.name, "backend": ORT, "error": f"{type(e).__name__}: {e}"})
        for b in backends.values():
            b.close()
        gc.collect()
        ceiling.append(measure_matmul_ceiling(cfg.ceiling_size, cfg.ceiling_repeats, numpy_too=cfg.threads is None))
    if no_batcher is not None:
        report["skipped"].append({"backend": "micro-batcher", "reason": no_batcher})

    ceiling.append(measure_matmul_ceiling(cfg.ceiling_size, cfg.ceiling_repeats, numpy_too=cfg.threads is None))
    gemms += gemm_ceilings(cfg.ceiling_size, cfg.ceiling_repeats, cfg.threads)
    ceilings = ceilings_by_precision(gemms + [{"engine": "torch/numpy", "precision": "fp32", "gflops": c["gflops"]}
                                              for c in ceiling])
    report["ceilings"] = {"by_precision": ceilings, "gemm_measurements": gemms, "cpu_class": klass,
                          "method": f"best of {cfg.ceiling_repeats} {cfg.ceiling_size}^3 GEMMs per engine and precision "
                                    "(torch.mm, onnxruntime MatMul with constant weights, OpenVINO f32/bf16), at the "
                                    "start and the end of the run; peak = flags x cores x clock"}
    best = ceilings["fp32"]["gflops"]
    report["matmul_ceiling"] = {"gflops": best, "measurements": ceiling,
                                "method": f"best of {cfg.ceiling_repeats} fp32 {cfg.ceiling_size}^3 torch.mm"
                                          + (" and numpy matmul" if cfg.threads is None else
                                             f" at {cfg.threads} thread(s)")
                                          + ", at the start, after each model and at the end of the run"}
    for cell in report["cells"]:
        if "error" not in cell:
            # Each row against the GEMM ceiling of its own precision (bf16 rows: the best bf16 GEMM).
            cell["ceiling_precision"] = row_precision(cell["backend"])
            cell["ceiling_fraction"] = share_of_ceiling(cell.get("gflops"), cell["backend"], ceilings)
            cell["ceiling_fraction_best"] = share_of_ceiling(cell.get("gflops_best"), cell["backend"], ceilings)
    report["targets"] = evaluate_targets(report)
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["machine"]["other_processes_cpu_share"] = run_monitor.stop()
    report["duration_s"] = time.perf_counter() - t_start
    return report
