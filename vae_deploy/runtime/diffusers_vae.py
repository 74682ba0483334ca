"""A drop-in ``pipe.vae`` for diffusers pipelines, backed by an exported ``Runtime``.

``pipe.vae = RuntimeAutoencoder.load("export/")`` and the pipeline runs its VAE steps on
onnxruntime/OpenVINO instead of torch, with no glue: this object offers exactly what diffusers
pipelines touch on ``self.vae`` (StableDiffusion/SDXL/img2img/DiT in diffusers 0.42):

- ``config``: a diffusers ``FrozenDict`` with ``scaling_factor``, ``shift_factor``,
  ``latents_mean``/``latents_std`` (None when undeclared, as SDXL checks), ``latent_channels``,
  ``in_channels``/``out_channels``, ``force_upcast=False`` (the export runs at its own precision)
  and ``block_out_channels`` of the right *length*, so ``vae_scale_factor = 2 ** (len - 1)``
  computes right (the channel counts themselves are not recorded in an export).
- ``decode(z, return_dict=True)`` -> ``DecoderOutput(sample=...)`` (or ``(sample,)``), a tensor
  of the input's dtype and device; ``encode(x).latent_dist`` is diffusers' own
  ``DiagonalGaussianDistribution`` (``sample(generator)``, ``mode()``, ``mean``; deterministic
  encoders, ``ExportSpec.posterior == "deterministic"``, give ``sample == mode``).
- ``dtype``, ``device``, ``to(...)``, ``enable_tiling``/``disable_tiling`` (the Runtime's
  ``tile=``, diffusers' tile rule and sizes), ``enable_slicing``/``disable_slicing``.

It is not a ``torch.nn.Module``: pipelines move, offload and cast only modules, and there are no
weights here to move. Needs torch and diffusers (the ``byo`` extra); the Runtime itself stays
torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from vae_deploy.errors import InputError
from vae_deploy.runtime.core import Runtime
from vae_deploy.runtime.latents import norm_space

#: diffusers' AutoencoderKL default for Stable Diffusion (sample_size 512 / 8): an export does
#: not record the model's sample_size, so tiling starts from this; set ``tile_latent_min_size``.
DEFAULT_TILE_LATENT = 64


class RuntimeAutoencoder:
    """What a diffusers pipeline calls on ``pipe.vae``, answered by a :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        spec = runtime.spec
        if len(spec.concrete_input_shape) != 3 or len(spec.concrete_latent_shape) != 3:
            raise InputError(f"a pipeline VAE needs images [N, C, H, W] and latents [N, c, h, w]; this export has "
                             f"input {list(spec.input_shape)} and latent {list(spec.latent_shape)}")
        self.ratio = max(1, spec.concrete_input_shape[1] // spec.concrete_latent_shape[1])
        self.config = FrozenDict(_config(spec, self.ratio))
        self.use_tiling = False
        self.use_slicing = False
        self.tile_latent_min_size = DEFAULT_TILE_LATENT
        self.tile_sample_min_size = DEFAULT_TILE_LATENT * self.ratio
        self._dtype = torch.float32
        self._device = torch.device("cpu")

    @classmethod
    def load(cls, path: str | Path = "export", **runtime_options: Any) -> RuntimeAutoencoder:
        """Open an export folder with :meth:`Runtime.load` (same options: engine, precision, provider...)."""
        return cls(Runtime.load(path, **runtime_options))

    # --- what pipelines read ---------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, *args: Any, **kwargs: Any) -> RuntimeAutoencoder:
        """Record the dtype/device a pipeline asks for (outputs follow the input's anyway)."""
        for a in (*args, kwargs.get("device"), kwargs.get("dtype")):
            if isinstance(a, torch.dtype):
                self._dtype = a
            elif isinstance(a, (str, torch.device)):
                self._device = torch.device(a)
        return self

    def eval(self) -> RuntimeAutoencoder:
        return self

    def requires_grad_(self, requires_grad: bool = True) -> RuntimeAutoencoder:
        return self

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Decode in latent tiles of ``tile_latent_min_size`` (encode: image tiles of
        ``tile_sample_min_size``) when the input is larger, as diffusers' AutoencoderKL does."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """One image at a time (memory for one, not the batch)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    # --- decode / encode --------------------------------------------------------------------
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None,
               **_: Any) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw (unscaled) latents -> images in the decoder's range, as ``AutoencoderKL.decode``."""
        arr = _numpy(z)
        tile = None
        if self.use_tiling and (arr.shape[-1] > self.tile_latent_min_size or arr.shape[-2] > self.tile_latent_min_size):
            tile = self.tile_latent_min_size
        parts = [arr[i:i + 1] for i in range(len(arr))] if self.use_slicing and len(arr) > 1 else [arr]
        x = np.concatenate([self.runtime.decode(p, tile=tile) for p in parts])
        sample = torch.from_numpy(x).to(device=z.device, dtype=z.dtype)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[Any]:
        """Images -> ``latent_dist`` (diffusers' ``DiagonalGaussianDistribution``)."""
        arr = _numpy(x)
        tile = None
        if self.use_tiling and (arr.shape[-1] > self.tile_sample_min_size or arr.shape[-2] > self.tile_sample_min_size):
            tile = self.tile_sample_min_size
        parts = [arr[i:i + 1] for i in range(len(arr))] if self.use_slicing and len(arr) > 1 else [arr]
        outs = [self.runtime.encode(p, tile=tile) for p in parts]
        mu, logvar = (np.concatenate([o[k] for o in outs]) for k in (0, 1))
        params = torch.from_numpy(np.concatenate([mu, logvar], axis=1)).to(device=x.device, dtype=x.dtype)
        dist = DiagonalGaussianDistribution(params, deterministic=self.runtime.spec.posterior == "deterministic")
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def __call__(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                 generator: torch.Generator | None = None) -> DecoderOutput | tuple[torch.Tensor]:
        """``AutoencoderKL.forward``: encode, take the mode (or a sample), decode."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict)

    def __repr__(self) -> str:
        return f"RuntimeAutoencoder({self.runtime!r})"


def _config(spec: Any, ratio: int) -> dict[str, Any]:
    """The AutoencoderKL config keys pipelines read, from the export's spec."""
    levels = int(round(math.log2(ratio))) + 1
    channels = int(spec.concrete_latent_shape[0])
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": int(spec.concrete_input_shape[0]),
        "out_channels": int(spec.concrete_input_shape[0]),
        "latent_channels": channels,
        "block_out_channels": tuple([0] * levels),  # only the length is known: vae_scale_factor
        "sample_size": int(spec.concrete_input_shape[1]),
        "scaling_factor": float(spec.scaling_factor),
        "shift_factor": float(spec.shift_factor),
        # config-style statistics only: FLUX.2's are BatchNorm ones on the patchified latent (4C values)
        "latents_mean": list(spec.latents_mean) if norm_space(spec) == "channel" else None,
        "latents_std": list(spec.latents_std) if norm_space(spec) == "channel" else None,
        "force_upcast": False,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
    }


def _numpy(t: Any) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"expected a torch.Tensor, got {type(t).__name__}")
    return np.ascontiguousarray(t.detach().to(device="cpu", dtype=torch.float32).numpy())
