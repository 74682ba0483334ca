"""Turn what the user has into an ``Exportable``: two deterministic graphs plus the spec.

- this project's checkpoints (a path or a ``Checkpoint``) and ``VAE`` modules: :mod:`.native`;
- any other ``nn.Module`` that encodes to a diagonal Gaussian and decodes (classic PyTorch
  VAEs, encoder/decoder pairs, diffusers' ``AutoencoderKL``): :mod:`.foreign`, by probing;
- user code named on the command line (``package.module:factory`` + a state dict): :mod:`.user_code`;
- a diffusers model or pipeline folder (``config.json`` + safetensors): :mod:`.diffusers_folder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_deploy.adapters.foreign import ADAPTERS, from_module
from vae_deploy.adapters.native import from_checkpoint, from_vae
from vae_deploy.errors import ConfigError
from vae_deploy.exporters.spec import Exportable
from vae_deploy.training.checkpoint import Checkpoint, load_checkpoint
from vae_deploy.training.model import VAE

__all__ = ["ADAPTERS", "from_checkpoint", "from_diffusers", "from_module", "from_vae", "to_exportable"]


def from_diffusers(
    path: str | Path,
    subfolder: str | None = None,
    example_input: Any = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    likelihood: str | None = None,
    dynamic_spatial: bool | None = None,
    encode_fn: str | None = None,
    decode_fn: str | None = None,
) -> Exportable:
    """A diffusers VAE folder (or a pipeline folder's ``vae/``) as an ``Exportable``, probed on
    ``example_input`` (default: a seeded [-1, 1] batch of ``input_shape``, else 3x64x64)."""
    from vae_deploy.adapters.diffusers_folder import example_for, load_diffusers, read_config, resolve_folder
    from vae_deploy.adapters.families import refuse_class

    root, sub = resolve_folder(path, subfolder)
    refuse_class(read_config(root / sub if sub else root).get("_class_name"))  # before loading the weights
    module = load_diffusers(root, sub)
    x = example_input if example_input is not None else example_for(module, input_shape)
    exp = from_module(module, x, likelihood=likelihood, dynamic_spatial=dynamic_spatial,
                      source_path=str(root / sub if sub else root), encode_fn=encode_fn, decode_fn=decode_fn)
    exp.spec.config["diffusers"] = {"path": str(root.resolve()), "subfolder": sub}
    return exp


def to_exportable(
    obj: Any,
    example_input: Any = None,
    *,
    likelihood: str | None = None,
    dynamic_spatial: bool | None = None,
    source_path: str = "",
    encode_fn: str | None = None,
    decode_fn: str | None = None,
) -> Exportable:
    """Accept a checkpoint path, a ``Checkpoint``, a ``VAE``, an ``Exportable``, a diffusers
    model folder, or any VAE-like ``nn.Module`` (probed on ``example_input``; see
    :mod:`vae_deploy.adapters.foreign`). ``encode_fn``/``decode_fn`` name the module's methods
    (or submodules) when they are not ``encode``/``decode`` or ``encoder``/``decoder``."""
    if isinstance(obj, Exportable):
        return obj
    if isinstance(obj, (str, Path)) and Path(obj).is_dir():
        return from_diffusers(obj, example_input=example_input, likelihood=likelihood,
                              dynamic_spatial=dynamic_spatial, encode_fn=encode_fn, decode_fn=decode_fn)
    native = isinstance(obj, (str, Path, Checkpoint, VAE))
    if native and (likelihood is not None or dynamic_spatial is not None or encode_fn or decode_fn):
        raise ConfigError("likelihood, dynamic_spatial and encode_fn/decode_fn apply to foreign modules; a vae-deploy "
                          "checkpoint or VAE records its own")
    if isinstance(obj, (str, Path)):
        return from_checkpoint(load_checkpoint(obj))
    if isinstance(obj, Checkpoint):
        return from_checkpoint(obj)
    if isinstance(obj, VAE):
        return from_vae(obj)
    import torch

    if isinstance(obj, torch.nn.Module):
        return from_module(obj, example_input, likelihood=likelihood, dynamic_spatial=dynamic_spatial,
                           source_path=source_path, encode_fn=encode_fn, decode_fn=decode_fn)
    raise ConfigError(
        f"cannot export a {type(obj).__name__}: expected a checkpoint path, a Checkpoint, a vae_deploy VAE, "
        "or a torch.nn.Module with encode(x) -> (mu, logvar) and decode(z) -> x_hat"
    )
