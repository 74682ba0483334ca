"""This project's own models: checkpoints (a path or a loaded ``Checkpoint``) and ``VAE`` modules."""

from __future__ import annotations

from typing import Any

import torch

from vae_deploy.exporters.spec import DecoderGraph, EncoderGraph, Exportable, ExportSpec
from vae_deploy.images import export_output_range
from vae_deploy.training.checkpoint import Checkpoint
from vae_deploy.training.model import VAE


def from_vae(model: VAE, *, source_sha256: str = "", source_path: str = "",
             data_spec: dict[str, Any] | None = None) -> Exportable:
    """A ``VAE`` knows its shapes and likelihood from its config: no probing needed."""
    cfg = model.config
    model = model.eval()
    spec = ExportSpec(
        input_shape=cfg.input_shape, latent_shape=(cfg.latent_dim,), likelihood=cfg.likelihood,
        family=cfg.family, source_sha256=source_sha256, source_path=source_path, config=cfg.to_dict(),
        data_spec=data_spec or {}, output_range=export_output_range(cfg.likelihood, cfg.family, data_spec),
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
