"""CUDA smoke and speed check for a machine with an NVIDIA GPU (run by hand or by CI that has one).

    python bench/gpu_check.py EXPORT_DIR [EXPORT_DIR ...] --out results.json

For each export folder: does onnxruntime's CUDA provider really load; do the CUDA Runtime's
outputs (plain and IO-bound, every precision variant) match the CPU Runtime's; and how fast
does it sample at several batch sizes, CPU and CUDA side by side. Needs only numpy and
onnxruntime-gpu and this package (pip install -e . or the wheel), not torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _env() -> dict:
    import onnxruntime as ort

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cores": os.cpu_count(),
            "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001
        info["nvidia_smi"] = f"unavailable: {e}"
    return info


def _time(fn, budget_s: float = 1.0, min_rounds: int = 5) -> float:
    """Median seconds per call after a warm-up."""
    for _ in range(3):
        fn()
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < min_rounds or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) > 2000:
            break
    return float(np.median(times))


def check_export(folder: Path, batch_sizes: list[int]) -> dict:
    from vae_deploy.exporters.manifest import load_manifest
    from vae_deploy.runtime.core import Runtime

    manifest = load_manifest(folder)
    precisions = sorted({e["precision"] for e in manifest["files"].values() if e["format"] == "onnx"})
    out: dict = {"folder": str(folder), "model": manifest["model"], "precisions": {}}
    cpu = Runtime.load(folder, provider="cpu")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((257, *cpu.sample_latent_shape()), dtype=np.float32)
    x = rng.random((257, *cpu.spec.concrete_input_shape), dtype=np.float32)
    ref_dec, (ref_mu, _) = cpu.decode(z), cpu.encode(x)
    ref_rec = cpu.reconstruct(x)
    for prec in precisions:
        entry: dict = {}
        try:
            rt = Runtime.load(folder, provider="cuda", precision=prec, max_batch=100)
            entry["provider"] = rt.provider
            entry["session_providers"] = rt.decoder_session.get_providers()
            entry["max_abs_vs_cpu_fp32"] = {
                "decode": float(np.abs(rt.decode(z) - ref_dec).max()),
                "encode_mu": float(np.abs(rt.encode(x)[0] - ref_mu).max()),
                "reconstruct_iobound": float(np.abs(rt.reconstruct(x) - ref_rec).max()),
            }
            entry["seeded_sample_repeatable"] = bool(np.array_equal(rt.sample(8, seed=1), rt.sample(8, seed=1)))
            speed = {}
            for bs in batch_sizes:
                big = Runtime.load(folder, provider="cuda", precision=prec, max_batch=max(batch_sizes))
                t_gpu = _time(lambda big=big, bs=bs: big.sample(bs))
                t_cpu = _time(lambda bs=bs: cpu.sample(bs)) if prec == "fp32" else None
                speed[bs] = {"cuda_samples_per_s": bs / t_gpu,
                             "cpu_fp32_samples_per_s": None if t_cpu is None else bs / t_cpu}
            entry["speed"] = speed
        except Exception as e:  # noqa: BLE001 - report, keep going
            entry["error"] = f"{type(e).__name__}: {e}"
        out["precisions"][prec] = entry
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("exports", nargs="+", type=Path)
    ap.add_argument("--batch-sizes", default="1,64,512,4096")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = ap.parse_args()
    from vae_deploy.runtime.providers import provider_works

    result: dict = {"env": _env(), "cuda_works": provider_works("cuda"), "tensorrt_works": provider_works("tensorrt")}
    print(json.dumps(result, indent=1), flush=True)
    bs = [int(b) for b in args.batch_sizes.split(",")]
    result["exports"] = []
    if result["cuda_works"]:
        for folder in args.exports:
            r = check_export(folder, bs)
            result["exports"].append(r)
            print(json.dumps(r, indent=1), flush=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0 if result["cuda_works"] else 1


if __name__ == "__main__":
    sys.exit(main())
