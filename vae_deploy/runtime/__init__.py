"""The runtime: ``Runtime`` over the export's ONNX graphs, its engines and precisions, tiling,
latents in and images out, the micro-batcher. Torch-free: a service needs numpy and onnxruntime.

``Runtime`` and ``variant_file`` are imported on first use, so ``vae_deploy.runtime.core.images`` (numpy
only) does not pull in onnxruntime.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Runtime", "variant_file"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vae_deploy.runtime import core

        return getattr(core, name)
    raise AttributeError(f"module 'vae_deploy.runtime.core' has no attribute {name!r}")
