"""vae-deploy: train a VAE, export its encoder and decoder, run, verify and measure them.

``vae_deploy.export(model, "export/", example_input=x)`` and ``vae_deploy.verify(model,
"export/", example_input=x)`` are imported on first use, so ``import vae_deploy`` stays light
(no onnx, onnxruntime or exporter machinery until needed).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from vae_deploy.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from vae_deploy.model import VAE, VAEConfig  # noqa: E402

__all__ = ["VAE", "VAEConfig", "export", "load_checkpoint", "save_checkpoint", "verify", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "export":
        from vae_deploy.api import export

        return export
    if name == "verify":
        # ``vae_deploy.verify`` is also a submodule: importing it makes it this package's
        # attribute, whatever was there before. So the attribute is always the module, made
        # callable (calling it is ``vae_deploy.api.verify``).
        import vae_deploy.verify as module

        return module
    raise AttributeError(f"module 'vae_deploy' has no attribute {name!r}")
