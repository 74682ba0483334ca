"""vae-deploy: train a VAE, export its encoder and decoder, run, verify and measure them.

``vae_deploy.export(model, "export/", example_input=x)``, ``vae_deploy.verify(model,
"export/", example_input=x)``, ``Runtime`` and ``MicroBatcher`` are imported on first use, so
``import vae_deploy`` stays light (no torch, onnx, onnxruntime or exporter machinery until needed).
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

__all__ = ["VAE", "VAEConfig", "Runtime", "MicroBatcher", "export", "verify", "load_checkpoint", "save_checkpoint",
           "__version__"]

# Everything is imported on first use: a service that only runs exported models (``Runtime``)
# then needs numpy and onnxruntime, not torch.
_LAZY = {
    "VAE": ("vae_deploy.training.model", "VAE"),
    "VAEConfig": ("vae_deploy.training.model", "VAEConfig"),
    "load_checkpoint": ("vae_deploy.training.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("vae_deploy.training.checkpoint", "save_checkpoint"),
    "Runtime": ("vae_deploy.runtime.core", "Runtime"),
    "MicroBatcher": ("vae_deploy.runtime.batcher", "MicroBatcher"),
    "export": ("vae_deploy.exporters", "export"),
    "verify": ("vae_deploy.api", "verify"),
}


def __getattr__(name: str) -> Any:
    """Import onnxruntime and the exporters only when used: `import vae_deploy` stays light."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vae_deploy' has no attribute {name!r}")
