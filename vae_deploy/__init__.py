"""vae-deploy: train a VAE, export its encoder and decoder, run, verify and measure them."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from vae_deploy.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from vae_deploy.model import VAE, VAEConfig  # noqa: E402

__all__ = ["VAE", "VAEConfig", "Runtime", "MicroBatcher", "export", "load_checkpoint", "save_checkpoint",
           "__version__"]

_LAZY = {
    "Runtime": ("vae_deploy.runtime", "Runtime"),
    "MicroBatcher": ("vae_deploy.batcher", "MicroBatcher"),
    "export": ("vae_deploy.exporters", "export"),
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
