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
    "VAE": ("vae_deploy.model", "VAE"),
    "VAEConfig": ("vae_deploy.model", "VAEConfig"),
    "load_checkpoint": ("vae_deploy.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("vae_deploy.checkpoint", "save_checkpoint"),
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
    if name == "verify":
        # ``vae_deploy.verify`` is also a submodule, and importing a submodule makes it the
        # package's attribute of that name, whatever was there. So the attribute is always the
        # module, made callable: ``vae_deploy.verify(model, "export/", ...)`` is
        # ``vae_deploy.api.verify``.
        import vae_deploy.verify as module

        return module
    raise AttributeError(f"module 'vae_deploy' has no attribute {name!r}")
