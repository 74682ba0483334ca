"""The machine a report was measured on: CPU model and flags, threads, library versions."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.benchmarking.config import BenchConfig


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(cfg: BenchConfig) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from vae_deploy import __version__
    from vae_deploy.runtime.engines.cpu import cpu_flags, native_bf16
    from vae_deploy.runtime.engines.openvino import version as openvino_version
    from vae_deploy.runtime.providers import provider_works

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
                "numpy": np.__version__, "vae_deploy": __version__, "openvino": openvino_version()}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    try:
        import onnx

        versions["onnx"] = onnx.__version__
    except ImportError:  # pragma: no cover
        pass
    env_keys = ("OMP", "MKL", "OPENBLAS", "KMP", "GOMP", "ORT", "CUDA_VISIBLE_DEVICES")
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "native_bf16": native_bf16(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel_backend": _torch_parallel_backend(torch),
        "ort_intra_op_threads": cfg.threads if cfg.threads else "onnxruntime default (one per physical core)",
        "ort_inter_op_threads": 1,
        "ort_providers_available": ort.get_available_providers(),
        "ort_providers_working": [p for p in ("cpu", "cuda") if provider_works(p)]
        + (["tensorrt"] if provider_works("cuda") and provider_works("tensorrt") else []),
        "versions": versions,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(env_keys)},
    }


def _torch_parallel_backend(torch: Any) -> str:
    try:
        for line in torch.__config__.parallel_info().splitlines():
            if "parallel backend" in line:
                return line.split(":", 1)[1].strip()
    except Exception:  # pragma: no cover
        pass
    return "unknown"
