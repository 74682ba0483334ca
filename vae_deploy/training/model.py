"""The VAE: a frozen, JSON-able config and a module with a deterministic encode/decode.

Only ``encode`` and ``decode`` are ever exported; the reparameterisation and the noise it
needs live in :meth:`VAE.forward` (training) and in host code (every runtime), so no graph
ever contains a random operator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vae_deploy.errors import ConfigError

FAMILIES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
# diffusers clamps logvar to this range: exp(0.5 * 20) is still far from float32 overflow.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass(frozen=True)
class VAEConfig:
    """Everything needed to rebuild a VAE; plain JSON types only (stored in checkpoints).

    ``hidden`` is the encoder's layer widths for ``mlp`` (the decoder mirrors them) and the
    two convolution channel counts followed by optional fully-connected widths for ``conv``.
    """

    family: str = "mlp"
    input_shape: tuple[int, ...] = (1, 8, 8)
    latent_dim: int = 8
    hidden: tuple[int, ...] = (256,)
    likelihood: str = "bernoulli"
    beta: float = 1.0
    # Standard deviation of the Gaussian likelihood p(x|z) = N(x_hat, obs_std^2); unused for Bernoulli.
    obs_std: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not self.input_shape or any(s < 1 for s in self.input_shape):
            raise ConfigError(f"input_shape must be non-empty positive sizes, got {self.input_shape}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {self.hidden}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.obs_std <= 0:
            raise ConfigError(f"obs_std must be > 0, got {self.obs_std}")
        if self.family == "conv":
            if len(self.input_shape) != 3:
                raise ConfigError(
                    f"the conv family needs input_shape (C, H, W), got {self.input_shape}"
                )
            _, h, w = self.input_shape
            if h % 4 or w % 4:
                raise ConfigError(
                    f"the conv family needs H and W divisible by 4, got {h}x{w} (input_shape {self.input_shape})"
                )
            if len(self.hidden) < 2:
                raise ConfigError(
                    f"the conv family needs hidden=(c1, c2, *fc) with two channel counts, got {self.hidden}"
                )

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    @staticmethod
    def default_hidden(family: str) -> tuple[int, ...]:
        return (256,) if family == "mlp" else (32, 64, 256)


class ELBO(NamedTuple):
    """Negative ELBO (the loss) and its parts, each averaged over the batch, in nats."""

    loss: torch.Tensor
    recon: torch.Tensor  # -log p(x|z), summed over data dims
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)), summed over latent dims


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over every non-batch dim."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)


def recon_nll(
    x: torch.Tensor,
    likelihood: str,
    *,
    logits: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    obs_std: float = 0.1,
) -> torch.Tensor:
    """-log p(x|z) per example, summed over data dims.

    Bernoulli takes logits when available (numerically exact) and otherwise the
    probabilities that an exported decoder returns.
    """
    if likelihood == "bernoulli":
        if logits is not None:
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            assert mean is not None
            nll = F.binary_cross_entropy(mean.clamp(1e-7, 1 - 1e-7), x, reduction="none")
    else:
        m = mean if mean is not None else logits
        assert m is not None
        nll = 0.5 * ((x - m) / obs_std) ** 2 + math.log(obs_std) + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with sigma = exp(0.5 * logvar)."""
    return mu + torch.exp(0.5 * logvar) * eps


class _Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if cfg.family == "mlp":
            layers: list[nn.Module] = [nn.Flatten()]
            width = cfg.input_size
            for h in cfg.hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
        else:
            c, hh, ww = cfg.input_shape
            c1, c2, *fc = cfg.hidden
            layers = [
                nn.Conv2d(c, c1, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.Flatten(),
            ]
            width = c2 * (hh // 4) * (ww // 4)
            for h in fc:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
        self.body = nn.Sequential(*layers)
        self.mu = nn.Linear(width, cfg.latent_dim)
        self.logvar = nn.Linear(width, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)


class _Decoder(nn.Module):
    """Maps z to the likelihood's *pre-activation* (logits for Bernoulli)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.latent_dim
        if cfg.family == "mlp":
            for h in reversed(cfg.hidden):
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers += [nn.Linear(width, cfg.input_size), nn.Unflatten(1, cfg.input_shape)]
        else:
            c, hh, ww = cfg.input_shape
            c1, c2, *fc = cfg.hidden
            for h in reversed(fc):
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers += [
                nn.Linear(width, c2 * (hh // 4) * (ww // 4)),
                nn.ReLU(),
                nn.Unflatten(1, (c2, hh // 4, ww // 4)),
                nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class VAE(nn.Module):
    """A VAE whose ``encode``/``decode`` are deterministic and exportable."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config)
        self.decoder = _Decoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) as (mu, logvar), logvar clamped to [-30, 20]."""
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean: probabilities (Bernoulli) or means (Gaussian)."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass: returns (decoder pre-activation, mu, logvar)."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = reparameterize(mu, logvar, eps)
        return self.decode_logits(z), mu, logvar

    def elbo(self, x: torch.Tensor, eps: torch.Tensor | None = None, beta: float | None = None) -> ELBO:
        """Negative ELBO averaged over the batch: E[-log p(x|z)] + beta * KL, in nats per example."""
        out, mu, logvar = self(x, eps)
        cfg = self.config
        if cfg.likelihood == "bernoulli":
            recon = recon_nll(x, cfg.likelihood, logits=out)
        else:
            recon = recon_nll(x, cfg.likelihood, mean=out, obs_std=cfg.obs_std)
        kl = kl_normal(mu, logvar)
        b = cfg.beta if beta is None else beta
        recon_m, kl_m = recon.mean(), kl.mean()
        return ELBO(recon_m + b * kl_m, recon_m, kl_m)
