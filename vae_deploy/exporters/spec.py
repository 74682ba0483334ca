"""What an export needs to know about a model: its two halves and the contract's metadata.

``ExportSpec`` is the single source of the artifact contract's metadata (export/README.md):
the ONNX ``metadata_props``, the manifest's ``model`` section and the runtime's shape checks
are all derived from it, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vae_deploy.artifacts import FORMAT_VERSION, META_PREFIX, ExportSpec, parse_shape  # noqa: F401


class EncoderGraph(nn.Module):
    """x -> (mu, logvar): the exported encoder, deterministic by construction."""

    def __init__(self, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], owner: nn.Module):
        super().__init__()
        self.owner = owner  # registers the weights
        self._encode = encode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self._encode(x)
        return mu, logvar


class DecoderGraph(nn.Module):
    """z -> x_hat: the exported decoder (likelihood mean, activation applied)."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module):
        super().__init__()
        self.owner = owner
        self._decode = decode

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._decode(z)


@dataclass
class Exportable:
    """A model ready to export: its two graphs, the spec, and example inputs for tracing."""

    encoder: nn.Module
    decoder: nn.Module
    spec: ExportSpec
    example_x: torch.Tensor
    example_z: torch.Tensor
    # The fp32 parity tolerance (a ``vae_deploy.checks.parity.Tolerance``) when the default, sized for
    # this project's small models, is too tight for the architecture; None: the default.
    fp32_tolerance: Any = None
