"""Turn what the user has into an ``Exportable``: two deterministic graphs plus the spec.

- this project's checkpoints (a path or a ``Checkpoint``) and ``VAE`` modules: :mod:`.native`;
- any other ``nn.Module`` that encodes to a diagonal Gaussian and decodes (classic PyTorch
  VAEs, encoder/decoder pairs, diffusers' ``AutoencoderKL``): :mod:`.foreign`, by probing;
- user code named on the command line (``package.module:factory`` + a state dict): :mod:`.user_code`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_deploy.adapters.foreign import ADAPTERS, from_module
from vae_deploy.adapters.native import from_checkpoint, from_vae
from vae_deploy.checkpoint import Checkpoint, load_checkpoint
from vae_deploy.errors import ConfigError
from vae_deploy.exporters.spec import Exportable
from vae_deploy.model import VAE

__all__ = ["ADAPTERS", "from_checkpoint", "from_module", "from_vae", "to_exportable"]


def to_exportable(
    obj: Any,
    example_input: Any = None,
    *,
    likelihood: str | None = None,
    dynamic_spatial: bool | None = None,
    source_path: str = "",
) -> Exportable:
    """Accept a checkpoint path, a ``Checkpoint``, a ``VAE``, an ``Exportable`` or any VAE-like
    ``nn.Module`` (probed on ``example_input``; see :mod:`vae_deploy.adapters.foreign`)."""
    if isinstance(obj, Exportable):
        return obj
    native = isinstance(obj, (str, Path, Checkpoint, VAE))
    if native and (likelihood is not None or dynamic_spatial is not None):
        raise ConfigError("likelihood and dynamic_spatial apply to foreign modules; a vae-deploy checkpoint or VAE "
                          "records its own")
    if isinstance(obj, (str, Path)):
        return from_checkpoint(load_checkpoint(obj))
    if isinstance(obj, Checkpoint):
        return from_checkpoint(obj)
    if isinstance(obj, VAE):
        return from_vae(obj)
    import torch

    if isinstance(obj, torch.nn.Module):
        return from_module(obj, example_input, likelihood=likelihood, dynamic_spatial=dynamic_spatial,
                           source_path=source_path)
    raise ConfigError(
        f"cannot export a {type(obj).__name__}: expected a checkpoint path, a Checkpoint, a vae_deploy VAE, "
        "or a torch.nn.Module with encode(x) -> (mu, logvar) and decode(z) -> x_hat"
    )
