"""The SD 1.x-architecture decoder at a real size, every lever side by side in one run.

    python bench/sd_levers.py --size 256 --rounds 3 --threads 2 [--rows eager,ov-bf16,...]

Rows (each one interleaved per round with the others, so load hits all alike): torch eager fp32,
eager bf16 (autocast + channels_last, where bf16 is native), ORT fp32 (the Runtime's session
options), ORT with onnxruntime's own transformer optimizer (GroupNorm/SiLU fusion), ORT on the
Winograd F(2x2)/F(4x4) graphs, OpenVINO f32/bf16 with dynamic shapes and compiled static for the
size, OpenVINO bf16 on the F(4x4) graph, and int8 (static QDQ calibrated on decoded latents).
Prints seconds per image (median round and best), speed-up vs eager fp32 (paired median), achieved
GFLOP/s (the fp32 graph's MACs, so algebraic rows show *effective* GFLOP/s), max-abs error and
PSNR of the decoded image against eager fp32. Writes JSON with ``--json``.
The SD export is cached (``--cache-dir``, default bench/results/cache): ~5 minutes the first time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROWS = ("eager", "eager-bf16", "ort", "ort-fused", "ort-wino2", "ort-wino4", "ov", "ov-static", "ov-bf16",
        "ov-bf16-static", "ov-bf16-wino4", "ort-int8")
DEFAULT_ROWS = ("eager", "eager-bf16", "ort", "ort-wino4", "ov", "ov-bf16", "ov-bf16-static")


def psnr(ref: np.ndarray, got: np.ndarray) -> float:
    """PSNR over the reference's own range (the decoder's output is not clipped here)."""
    span = float(ref.max() - ref.min()) or 1.0
    mse = float(np.mean((ref.astype(np.float64) - got) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(span * span / mse)


def _ort(path: Path, threads: int, *, level: str = "all") -> Any:
    import onnxruntime as ort

    from vae_deploy.runtime.engines.onnxruntime import default_session_options

    so = default_session_options(threads)
    if level == "none":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda z: sess.run(None, {name: z})[0]


def _ov(path: Path, threads: int, precision: str, static: tuple[int, ...] | None) -> Any:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if static:
        model.reshape({model.input(0).get_any_name(): list(static)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                                                 "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()
    return lambda z: req.infer({0: z}, share_inputs=True).to_tuple()[0].copy()


def _variant(base: Path, kind: str, log: Any) -> Path:
    """The Winograd/fused/int8 decoder graph beside the cached export (built once)."""
    import onnx

    out = base.parent / f"decoder.{kind}.onnx"
    if out.is_file():
        return out
    log(f"building {out.name} ...")
    if kind.startswith("wino"):
        from vae_deploy.exporters.winograd import winograd_rewrite

        m = winograd_rewrite(onnx.load(str(base)), int(kind[-1])).model
        onnx.save(m, str(out))
    elif kind == "fused":
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(base), model_type="vae", opt_level=0, use_gpu=False)
        opt.save_model_to_file(str(out))
    elif kind == "int8":
        from vae_deploy.exporters.quantize import quantize_int8

        rng = np.random.default_rng(0)
        cal = rng.standard_normal((4, 4, 32, 32), dtype=np.float32)  # decoded latents' scale: N(0, I)
        m, _ = quantize_int8(onnx.load(str(base)), method="static", calibration=cal)
        onnx.save(m, str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="image side in pixels (latent side = size / 8)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--cache-dir", default="bench/results/cache")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"Error: unknown row(s) {bad}; expected some of {list(ROWS)}", file=sys.stderr)
        return 2

    import torch

    from vae_deploy.benchmarking.sd import prepare_sd
    from vae_deploy.checks.flops import onnx_flops
    from vae_deploy.runtime.engines.cpu import cpu_class, native_bf16

    torch.set_num_threads(a.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    bm = prepare_sd(Path(a.cache_dir), log=log)
    dec_path = bm.folder / "decoder.onnx"
    lat = (1, 4, a.size // 8, a.size // 8)
    z = np.random.default_rng(0).standard_normal(lat, dtype=np.float32)
    flops = onnx_flops(dec_path, lat[1:])
    decoder = bm.eager[1]
    calls: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for r in rows:
        if r == "eager":
            calls[r] = lambda z, d=decoder: _eager(d, z, None)
        elif r == "eager-bf16":
            if not native_bf16():
                skipped[r] = "no native bf16 on this CPU"
                continue
            cl = decoder.to(memory_format=torch.channels_last)
            calls[r] = lambda z, d=cl: _eager(d, z, torch.bfloat16)
        elif r == "ort":
            calls[r] = _ort(dec_path, a.threads)
        elif r == "ort-fused":
            calls[r] = _ort(_variant(dec_path, "fused", log), a.threads)
        elif r in ("ort-wino2", "ort-wino4"):
            calls[r] = _ort(_variant(dec_path, r[4:], log), a.threads)
        elif r == "ort-int8":
            calls[r] = _ort(_variant(dec_path, "int8", log), a.threads)
        elif r.startswith("ov"):
            prec = "bf16" if "bf16" in r else "f32"
            if prec == "bf16" and not native_bf16():
                skipped[r] = "no native bf16 on this CPU"
                continue
            path = _variant(dec_path, "wino4", log) if r.endswith("wino4") else dec_path
            calls[r] = _ov(path, a.threads, prec, lat if r.endswith("static") else None)
    ref = None
    outs: dict[str, np.ndarray] = {}
    for name, fn in calls.items():  # cold call (compilation, allocation), kept for the error figures
        t0 = time.perf_counter()
        outs[name] = np.asarray(fn(z), dtype=np.float32)
        log(f"{name}: first call {time.perf_counter() - t0:.1f} s")
    ref = outs.get("eager")
    ref_name = "eager"
    if ref is None and "ort" in outs:  # no eager row: errors against onnxruntime fp32 (within 1e-4 of eager)
        ref, ref_name = outs["ort"], "ort"
    times: dict[str, list[float]] = {n: [] for n in calls}
    names = list(calls)
    for i in range(a.rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            t0 = time.perf_counter()
            calls[name](z)
            times[name].append(time.perf_counter() - t0)
    result: dict[str, Any] = {"size": a.size, "latent": list(lat), "threads": a.threads, "rounds": a.rounds,
                              "cpu_class": cpu_class(), "decoder_gflop": flops / 1e9 if flops else None,
                              "load_average": list(os.getloadavg()), "rows": {}, "skipped": skipped, "errors_against": ref_name}
    print(f"SD decoder {lat} -> {a.size} px, {a.threads} threads, CPU {cpu_class()}, "
          f"{(flops or 0) / 1e9:.0f} GFLOP/image, load {os.getloadavg()[0]:.1f}")
    for name in names:
        t = np.array(times[name])
        row: dict[str, Any] = {"s_median": float(np.median(t)), "s_best": float(t.min())}
        if "eager" in times:
            row["speedup_vs_eager"] = float(np.median(np.array(times["eager"]) / t))
            row["speedup_vs_eager_best"] = float(min(times["eager"]) / t.min())
        if flops:
            row["gflops_best"] = flops / t.min() / 1e9
        if ref is not None and name != ref_name:
            row["max_abs"] = float(np.abs(outs[name] - ref).max())
            row["psnr_db"] = psnr(ref, outs[name])
        result["rows"][name] = row
        print(f"  {name:16s} {row['s_median']:7.2f} s (best {row['s_best']:6.2f})  x{row.get('speedup_vs_eager', 1):5.2f} "
              f"(best-vs-best x{row.get('speedup_vs_eager_best', 1):5.2f})  {row.get('gflops_best', 0):6.0f} GFLOP/s"
              + (f"  max-abs {row['max_abs']:.2e} PSNR {row['psnr_db']:.1f} dB" if "max_abs" in row else ""))
    for name, why in skipped.items():
        print(f"  {name:16s} skipped: {why}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


def _eager(decoder: Any, z: np.ndarray, dtype: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        if dtype is None:
            return decoder(torch.from_numpy(z)).numpy()
        with torch.autocast("cpu", dtype=dtype):
            return decoder(torch.from_numpy(z).to(memory_format=torch.channels_last)).float().numpy()


if __name__ == "__main__":
    sys.exit(main())
