"""Engines: how one chunk of the export's ONNX graphs runs (onnxruntime, OpenVINO).

``Runtime`` reads the manifest and checks checksums, then asks :func:`open_engine` for the pair
of graphs at a precision; ``tune`` measures every engine x precision that passes its accuracy
gate and ``auto`` loads the winner. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_deploy.errors import ArtifactError, ConfigError, EngineError
from vae_deploy.runtime.engines.base import Engine, backend_label
from vae_deploy.runtime.engines.cpu import bf16_refusal

ENGINES = ("onnxruntime", "openvino")
ENGINE_CHOICES = ("auto", *ENGINES)
PRECISIONS = ("fp32", "fp32-fast", "int8", "bf16", "fp16", "fp32-winograd")
# Precisions that are not a file of their own: the engine runs the fp32 graph at that precision.
HINT_PRECISIONS = {"bf16": "fp32"}

__all__ = ["ENGINES", "ENGINE_CHOICES", "PRECISIONS", "Engine", "backend_label", "open_engine", "check_choice",
           "available_engines", "file_precision", "variant_file"]


def check_choice(engine: str, precision: str) -> None:
    if engine not in ENGINE_CHOICES:
        raise ConfigError(f"engine must be one of {list(ENGINE_CHOICES)}, got {engine!r}")
    if precision not in (*PRECISIONS, "auto"):
        raise ConfigError(f"precision must be one of {[*PRECISIONS, 'auto']}, got {precision!r}")


def file_precision(precision: str) -> str:
    """The file variant a precision reads (bf16 reads the fp32 graph)."""
    return HINT_PRECISIONS.get(precision, precision)


def available_engines() -> list[str]:
    from vae_deploy.runtime.engines.openvino import version

    return ["onnxruntime"] + (["openvino"] if version() else [])


def open_engine(engine: str, encoder_path: str | Path, decoder_path: str | Path, *, precision: str = "fp32",
                provider: str = "auto", threads: int | None = None, cache_dir: str | Path | None = None,
                force_bf16: bool = False, **ort_options: Any) -> Engine:
    """Open both graphs on ``engine``; bf16 is refused on a CPU without native bf16 unless forced."""
    check_choice(engine, precision)
    if engine == "auto" or precision == "auto":
        raise ConfigError("engine/precision 'auto' is resolved by Runtime.load (from the tuning file)")
    if precision == "bf16" and not force_bf16:
        why = bf16_refusal()
        if why:
            raise EngineError(why)
    if engine == "onnxruntime":
        from vae_deploy.runtime.engines.onnxruntime import OrtEngine

        return OrtEngine(Path(encoder_path), Path(decoder_path), precision=precision, provider=provider,
                         threads=threads, cache_dir=cache_dir, **ort_options)
    from vae_deploy.runtime.engines.openvino import OpenVinoEngine

    if ort_options.get("session_options") is not None:
        raise ConfigError("session_options are onnxruntime's; engine 'openvino' does not take them")
    device = "cpu" if provider == "auto" else provider
    if device in ("cuda", "tensorrt"):
        raise EngineError(f"engine 'openvino' has no {device!r} device; use engine 'onnxruntime' for CUDA/TensorRT, "
                          "or provider 'cpu' (or 'gpu'/'npu' for Intel devices)")
    return OpenVinoEngine(Path(encoder_path), Path(decoder_path), precision=precision, device=device,
                          threads=threads, cache_dir=cache_dir)

def variant_file(manifest: dict[str, Any], role: str, precision: str) -> str:
    """The ONNX file for ``role`` at ``precision``; the encoder falls back to fp32 when a
    precision was only produced for the decoder (sampling needs only the decoder)."""
    precision = file_precision(precision)
    files = manifest.get("files", {})
    for name, e in files.items():
        if e.get("format") == "onnx" and e.get("role") == role and e.get("precision") == precision:
            return name
    if precision != "fp32" and role == "encoder":
        return variant_file(manifest, role, "fp32")
    have = sorted({e.get("precision") for e in files.values() if e.get("format") == "onnx" and e.get("role") == role})
    raise ArtifactError(f"no {role} ONNX file at precision {precision!r} in this export (has {have})")
