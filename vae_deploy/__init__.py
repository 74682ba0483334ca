"""vae-deploy: train a VAE, export its encoder and decoder, run, verify and measure them."""

from __future__ import annotations

__version__ = "0.1.0"

from vae_deploy.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from vae_deploy.model import VAE, VAEConfig  # noqa: E402

__all__ = ["VAE", "VAEConfig", "load_checkpoint", "save_checkpoint", "__version__"]
