"""What an export needs to know about a model: its two halves and the contract's metadata.

``ExportSpec`` is the single source of the artifact contract's metadata (export/README.md):
the ONNX ``metadata_props``, the manifest's ``model`` section and the runtime's shape checks
are all derived from it, so they cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

FORMAT_VERSION = 1
META_PREFIX = "vae_deploy."


@dataclass(frozen=True)
class ExportSpec:
    input_shape: tuple[int, ...]  # per example, no batch axis; -1 marks a dynamic axis
    latent_shape: tuple[int, ...]  # per example: [latent_dim] (flat) or e.g. [4, -1, -1] (spatial)
    likelihood: str = "bernoulli"
    family: str = "mlp"
    scaling_factor: float = 1.0
    # Names of dynamic axes beyond the batch: e.g. ("height", "width") for diffusers VAEs.
    dynamic_axes: tuple[str, ...] = ("batch",)
    source_sha256: str = ""
    source_path: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    # Data for checks at export: a few real examples (e.g. the checkpoint's test split).
    data_spec: dict[str, Any] = field(default_factory=dict)
    # Concrete shapes the export was traced and checked at. With dynamic axes they are what a
    # consumer needs to pick sizes (sampling draws z of ``example_latent_shape``); empty means
    # "same as input_shape / latent_shape" (no dynamic per-example axis).
    example_input_shape: tuple[int, ...] = ()
    example_latent_shape: tuple[int, ...] = ()

    @property
    def latent_dim(self) -> int:
        """Elements per latent; -1 when the latent has a dynamic axis (it varies with the input)."""
        return -1 if self.has_dynamic_latent else math.prod(self.latent_shape)

    @property
    def has_dynamic_latent(self) -> bool:
        return any(d < 0 for d in self.latent_shape)

    @property
    def adapter(self) -> str | None:
        """The adapter a foreign (bring-your-own) model was exported through; None for ours."""
        return self.config.get("adapter") if self.config else None

    @property
    def concrete_input_shape(self) -> tuple[int, ...]:
        """The per-example input shape to use when a concrete one is needed (the example's)."""
        return tuple(self.example_input_shape) or tuple(self.input_shape)

    @property
    def concrete_latent_shape(self) -> tuple[int, ...]:
        return tuple(self.example_latent_shape) or tuple(self.latent_shape)

    def metadata(self, role: str, precision: str = "fp32") -> dict[str, str]:
        """The ONNX ``metadata_props`` of the contract; all values are strings."""
        from vae_deploy import __version__

        def shape(s: tuple[int, ...]) -> str:
            return ",".join(str(v) for v in s)

        return {
            f"{META_PREFIX}format_version": str(FORMAT_VERSION),
            f"{META_PREFIX}role": role,
            f"{META_PREFIX}input_shape": shape(self.input_shape),
            f"{META_PREFIX}latent_shape": shape(self.latent_shape),
            f"{META_PREFIX}latent_dim": str(self.latent_dim),
            f"{META_PREFIX}likelihood": self.likelihood,
            f"{META_PREFIX}family": self.family,
            f"{META_PREFIX}precision": precision,
            f"{META_PREFIX}dynamic_axes": ",".join(self.dynamic_axes),
            f"{META_PREFIX}scaling_factor": repr(float(self.scaling_factor)),
            f"{META_PREFIX}example_input_shape": shape(self.concrete_input_shape),
            f"{META_PREFIX}example_latent_shape": shape(self.concrete_latent_shape),
            f"{META_PREFIX}source_sha256": self.source_sha256,
            f"{META_PREFIX}producer_version": __version__,
        }

    def model_section(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["latent_shape"] = list(self.latent_shape)
        d["dynamic_axes"] = list(self.dynamic_axes)
        d["example_input_shape"] = list(self.concrete_input_shape)
        d["example_latent_shape"] = list(self.concrete_latent_shape)
        d["latent_dim"] = self.latent_dim
        for k in ("source_sha256", "source_path"):
            d.pop(k)
        return d

    @classmethod
    def from_model_section(cls, d: dict[str, Any], source: dict[str, Any] | None = None) -> ExportSpec:
        keep = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        keep["input_shape"] = tuple(keep["input_shape"])
        keep["latent_shape"] = tuple(keep["latent_shape"])
        keep["dynamic_axes"] = tuple(keep.get("dynamic_axes", ("batch",)))
        for k in ("example_input_shape", "example_latent_shape"):
            keep[k] = tuple(keep.get(k, ()))
        if source:
            keep["source_sha256"] = source.get("sha256", "")
            keep["source_path"] = source.get("path", "")
        return cls(**keep)


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


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
    # The fp32 parity tolerance (a ``vae_deploy.parity.Tolerance``) when the default, sized for
    # this project's small models, is too tight for the architecture; None: the default.
    fp32_tolerance: Any = None
