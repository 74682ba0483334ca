"""Which diffusers autoencoders the contract cannot express, and why: one line each, before work.

The contract is ``encode(x) -> (mu, logvar)`` and ``decode(z) -> x_hat`` with ``z`` the only
decoder input. Models whose decoder needs more than ``z`` or draws noise, or whose latent is a
codebook index, would export something that is not the model; they are refused by class name
with the reason. Video VAEs (3-D convolutions) need a 5-D example ``[N, C, T, H, W]``: without
one the probe would fail deep inside the model ("expected 5-D input, got 4-D"), so a 4-D
example is refused with the flag that fixes it.
"""

from __future__ import annotations

from typing import Any

from vae_deploy.errors import ConfigError

#: class name -> why it is not exported.
UNSUPPORTED = {
    "VQModel": "its latent is quantised to a codebook inside decode (VQ-GAN: nearest-code lookup), not the "
               "Gaussian or continuous deterministic latent the export contract describes",
    "AsymmetricAutoencoderKL": "its decoder takes the masked image and the mask besides z (inpainting); the "
                               "contract's decoder takes z alone, and exporting decode(z) would drop them silently",
    "ConsistencyDecoderVAE": "its decoder is a diffusion UNet sampled from noise over several steps (random "
                             "operators and a scheduler loop); graphs must be deterministic",
    "AutoencoderKLTemporalDecoder": "decode(z, num_frames) needs the frame count besides z (Stable Video "
                                    "Diffusion's temporal decoder); the contract's decoder takes z alone",
}


def refuse_class(name: Any) -> None:
    """ConfigError (one line) when the class ``name`` cannot be exported."""
    if isinstance(name, str) and name in UNSUPPORTED:
        raise ConfigError(f"{name} is not supported: {UNSUPPORTED[name]}")


def require_video_input(module: Any, example_ndim: int | None) -> None:
    """A module with 3-D convolutions (a video VAE: Wan, HunyuanVideo, LTX, Mochi, CogVideoX,
    Qwen-Image) needs a 5-D example; say so instead of letting the probe fail inside it.
    ``example_ndim`` None: no example was given (nothing to infer a frame count from)."""
    import torch

    if example_ndim in (4, None) and any(isinstance(m, torch.nn.Conv3d) for m in module.modules()):
        cfg = getattr(module, "config", None)
        channels = getattr(cfg, "in_channels", None) or 3
        raise ConfigError(
            f"{type(module).__name__} is a video VAE (3-D convolutions): its input is [N, C, T, H, W], got "
            f"{'a 4-D example' if example_ndim else 'no example'}; pass --input-shape C,T,H,W (e.g. {channels},5,32,32; causal video VAEs take 1+4k frames, "
            "images are T=1) or an example_input of that shape")
