"""Training: Adam on the negative ELBO, seeded, with optional KL warm-up.

Kept as one plain loop over in-memory tensors (no DataLoader): the bundled datasets fit in
memory many times over, and per-step overhead dominates at these sizes.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import click
import numpy as np
import torch

from vae_deploy.data import Dataset
from vae_deploy.model import VAE, VAEConfig


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    # Linearly ramp the KL weight from 0 to beta over this many epochs (0: no warm-up).
    kl_warmup_epochs: int = 0
    eval_samples: int = 10

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self}")


@dataclass
class TrainResult:
    model: VAE
    metrics: dict[str, float]
    history: list[float]
    seconds: float


@torch.no_grad()
def evaluate(model: VAE, x: np.ndarray | torch.Tensor, *, samples: int = 10, seed: int = 1234) -> dict[str, float]:
    """Test-set negative ELBO (nats per example), averaged over ``samples`` fixed noise draws.

    Uses beta = 1 whatever the training beta was: the bound on -log p(x) is what is reported.
    """
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    totals = np.zeros(3)
    for _ in range(samples):
        mu_shape = (xt.shape[0], model.config.latent_dim)
        eps = torch.randn(mu_shape, generator=gen)
        parts = model.elbo(xt, eps=eps, beta=1.0)
        totals += [float(parts.loss), float(parts.recon), float(parts.kl)]
    loss, recon, kl = totals / samples
    return {"test_nelbo": float(loss), "test_recon": float(recon), "test_kl": float(kl), "n_test": int(xt.shape[0])}


def train(
    model_config: VAEConfig,
    data: Dataset,
    train_config: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh VAE on ``data.train``; same seeds, same weights."""
    if tuple(data.input_shape) != tuple(model_config.input_shape):
        raise ValueError(
            f"data examples have shape {data.input_shape}, model expects {model_config.input_shape}"
        )
    torch.manual_seed(train_config.seed)
    model = VAE(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    x = torch.from_numpy(data.train)
    n = x.shape[0]
    bs = min(train_config.batch_size, n)
    steps = math.ceil(n / bs)
    gen = torch.Generator().manual_seed(train_config.seed)
    history: list[float] = []
    start = time.perf_counter()
    bar = click.progressbar(
        range(train_config.epochs),
        label="training",
        file=sys.stderr,
        item_show_func=lambda _: f"loss {history[-1]:.2f}" if history else "",
        show_pos=True,
    ) if progress else None
    epochs = bar if bar is not None else range(train_config.epochs)
    if bar is not None:
        bar.__enter__()
    try:
        model.train()
        for epoch in epochs:
            warm = train_config.kl_warmup_epochs
            beta = model_config.beta * min(1.0, (epoch + 1) / warm) if warm > 0 else model_config.beta
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(steps):
                idx = perm[i * bs : (i + 1) * bs]
                xb = x[idx]
                eps = torch.randn((xb.shape[0], model_config.latent_dim), generator=gen)
                parts = model.elbo(xb, eps=eps, beta=beta)
                opt.zero_grad(set_to_none=True)
                parts.loss.backward()
                opt.step()
                total += parts.loss.item() * xb.shape[0]
            history.append(total / n)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    seconds = time.perf_counter() - start
    metrics = evaluate(model, data.test, samples=train_config.eval_samples)
    metrics["train_nelbo_last_epoch"] = float(history[-1])
    metrics["train_seconds"] = seconds
    return TrainResult(model.eval(), metrics, history, seconds)


def checkpoint_meta(data: Dataset, train_config: TrainConfig, result: TrainResult) -> dict[str, Any]:
    return {
        "data": data.spec.to_dict(),
        "train": asdict(train_config),
        "metrics": result.metrics,
    }
