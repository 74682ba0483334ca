"""Turn what the user has into an ``Exportable``: two deterministic graphs plus the spec.

Today: this project's checkpoints (a path or a loaded ``Checkpoint``) and ``VAE`` modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vae_deploy.checkpoint import Checkpoint, load_checkpoint
from vae_deploy.errors import ConfigError
from vae_deploy.exporters.spec import DecoderGraph, EncoderGraph, Exportable, ExportSpec
from vae_deploy.model import VAE


def from_vae(model: VAE, *, source_sha256: str = "", source_path: str = "",
             data_spec: dict[str, Any] | None = None) -> Exportable:
    cfg = model.config
    model = model.eval()
    spec = ExportSpec(
        input_shape=cfg.input_shape, latent_shape=(cfg.latent_dim,), likelihood=cfg.likelihood,
        family=cfg.family, source_sha256=source_sha256, source_path=source_path, config=cfg.to_dict(),
        data_spec=data_spec or {},
    )
    gen = torch.Generator().manual_seed(0)
    return Exportable(
        encoder=EncoderGraph(model.encode, model),
        decoder=DecoderGraph(model.decode, model),
        spec=spec,
        example_x=torch.rand((2, *cfg.input_shape), generator=gen),
        example_z=torch.randn((2, cfg.latent_dim), generator=gen),
    )


def from_checkpoint(ckpt: Checkpoint) -> Exportable:
    return from_vae(
        ckpt.build_model(), source_sha256=ckpt.sha256 or "", source_path=str(ckpt.path or ""),
        data_spec=ckpt.meta.get("data") or {},
    )


def to_exportable(obj: Any, example_input: torch.Tensor | None = None) -> Exportable:
    """Accept a checkpoint path, a ``Checkpoint``, a ``VAE`` or an ``Exportable``."""
    if isinstance(obj, Exportable):
        return obj
    if isinstance(obj, (str, Path)):
        return from_checkpoint(load_checkpoint(obj))
    if isinstance(obj, Checkpoint):
        return from_checkpoint(obj)
    if isinstance(obj, VAE):
        return from_vae(obj)
    raise ConfigError(
        f"cannot export a {type(obj).__name__}: expected a checkpoint path, a Checkpoint, a vae_deploy VAE, "
        "or a module with encode(x) -> (mu, logvar) and decode(z) -> x_hat"
    )
