"""Training: Adam on the negative ELBO, seeded, resumable, with optional KL warm-up.

Kept as one plain loop over in-memory tensors (no DataLoader): the bundled datasets fit in
memory many times over, and per-step overhead dominates at these sizes. ``uint8`` data stays
``uint8`` on the device and is scaled per batch.

Resuming is exact: the checkpoint's ``train_state`` holds the epoch, the last weights, Adam's
state and the shuffling/noise generator's state, so training 2 epochs and resuming to 4 gives
the same weights, bit for bit, as training 4 epochs at once. A loss that stops being finite
raises ``TrainingError`` at once: nothing is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from vae_deploy.errors import TrainingError
from vae_deploy.training.data import Dataset
from vae_deploy.training.logs import ConsoleLog, Sink
from vae_deploy.training.model import VAE, VAEConfig

KEEP = ("last", "best")
EVAL_BATCH = 1024
EVAL_SEED = 1234


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    # Linearly ramp the KL weight from 0 to beta over this many epochs (0: no warm-up).
    kl_warmup_epochs: int = 0
    eval_samples: int = 10
    # Which weights the checkpoint holds: the last epoch's, or the epoch with the lowest test -ELBO.
    keep: str = "last"
    # Stop when the test -ELBO has not improved for this many epochs (None: never).
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self}")
        if self.keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {self.keep!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> TrainConfig:
        """From checkpoint meta; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in known}, **overrides})


@dataclass
class TrainResult:
    model: VAE  # the kept weights (last or best), in eval mode, on the CPU
    metrics: dict[str, float]
    history: list[float]  # train loss per epoch
    seconds: float
    log: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (train_logs.COLUMNS)
    state: dict[str, Any] = field(default_factory=dict)  # what --resume needs (tensors and plain data)


@torch.no_grad()
def evaluate(
    model: VAE, x: np.ndarray | torch.Tensor, *, samples: int = 10, seed: int = EVAL_SEED
) -> dict[str, float]:
    """Test-set negative ELBO (nats per example), averaged over ``samples`` fixed noise draws.

    Uses beta = 1 whatever the training beta was: the bound on -log p(x) is what is reported.
    ``uint8`` input is scaled by 1/255; batches of ``EVAL_BATCH`` keep memory bounded.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    xt = torch.as_tensor(x)
    n = xt.shape[0]
    gen = torch.Generator().manual_seed(seed)
    totals = np.zeros(3)
    for _ in range(samples):
        for i in range(0, n, EVAL_BATCH):
            xb = _scaled(xt[i:i + EVAL_BATCH].to(device))
            eps = torch.randn((xb.shape[0], model.config.latent_dim), generator=gen).to(device)
            parts = model.elbo(xb, eps=eps, beta=1.0)
            totals += np.array([float(parts.loss), float(parts.recon), float(parts.kl)]) * xb.shape[0]
    model.train(was_training)
    loss, recon, kl = totals / (samples * n)
    return {"test_nelbo": float(loss), "test_recon": float(recon), "test_kl": float(kl), "n_test": int(n)}


def _scaled(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda``; a clear error when torch sees no CUDA device."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
            raise TrainingError(f"--device cuda: torch sees no CUDA device ({build}); use --device cpu")
        return torch.device("cuda")
    raise TrainingError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists of tensors on the CPU (for a checkpoint)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def _weights(model: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(
    model_config: VAEConfig,
    data: Dataset,
    train_config: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
    sinks: Sequence[Sink] = (),
    device: str = "cpu",
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a VAE on ``data.train``; same seeds, same weights.

    ``resume`` is a checkpoint's ``train_state`` plus ``history`` (see :func:`resume_state`):
    training goes on from its epoch up to ``train_config.epochs``.
    """
    if tuple(data.input_shape) != tuple(model_config.input_shape):
        raise ValueError(
            f"data examples have shape {data.input_shape}, model expects {model_config.input_shape}"
        )
    dev = resolve_device(device)
    torch.manual_seed(train_config.seed)
    model = VAE(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    gen = torch.Generator().manual_seed(train_config.seed)
    log: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "test_nelbo": math.inf, "weights": None}
    since_best = 0
    if resume is not None:
        st = resume["state"]
        model.load_state_dict(st["model"])
        gen.set_state(st["rng"])
        log = [dict(r) for r in resume["history"]]
        best = {"epoch": int(st["best_epoch"]), "test_nelbo": float(st["best_test_nelbo"]),
                "weights": resume.get("best_weights")}
        since_best = int(st["since_best"])
    model.to(dev)
    if resume is not None:
        opt.load_state_dict(resume["state"]["optimizer"])  # after .to(): Adam's state follows the params
    first_epoch = len(log)
    if first_epoch >= train_config.epochs:
        raise TrainingError(
            f"the checkpoint has already trained {first_epoch} epochs; pass --epochs above {first_epoch} to go on"
        )
    x = torch.from_numpy(data.train_raw).to(dev)
    n = x.shape[0]
    bs = min(train_config.batch_size, n)
    steps = math.ceil(n / bs)
    all_sinks: list[Sink] = ([ConsoleLog(train_config.epochs)] if progress else []) + list(sinks)
    start = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)  # a resumed run's clock goes on
    stopped_early = False
    for s in all_sinks:
        s.start(log)
    try:
        model.train()
        for epoch in range(first_epoch, train_config.epochs):
            warm = train_config.kl_warmup_epochs
            beta = model_config.beta * min(1.0, (epoch + 1) / warm) if warm > 0 else model_config.beta
            perm = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            for i in range(steps):
                xb = _scaled(x[perm[i * bs : (i + 1) * bs]])
                eps = torch.randn((xb.shape[0], model_config.latent_dim), generator=gen).to(dev)
                parts = model.elbo(xb, eps=eps, beta=beta)
                opt.zero_grad(set_to_none=True)
                parts.loss.backward()
                opt.step()
                loss = parts.loss.item()
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"training diverged: the loss became {loss} at epoch {epoch + 1}, step {i + 1} "
                        f"(lr {train_config.lr:g}); no checkpoint was written. Lower --lr (the default is 1e-3)"
                    )
                total += loss * xb.shape[0]
            test = evaluate(model, data.test_raw, samples=1)
            row = {"epoch": epoch + 1, "beta": float(beta), "train_loss": total / n,
                   **{k: test[k] for k in ("test_nelbo", "test_recon", "test_kl")},
                   "seconds": time.perf_counter() - start}
            log.append(row)
            if not math.isfinite(row["test_nelbo"]):
                raise TrainingError(
                    f"training diverged: the test -ELBO became {row['test_nelbo']} at epoch {epoch + 1} "
                    f"(lr {train_config.lr:g}); no checkpoint was written. Lower --lr (the default is 1e-3)"
                )
            if row["test_nelbo"] < best["test_nelbo"]:
                best = {"epoch": epoch + 1, "test_nelbo": row["test_nelbo"],
                        "weights": _weights(model) if train_config.keep == "best" else None}
                since_best = 0
            else:
                since_best += 1
            stopped_early = train_config.patience is not None and since_best >= train_config.patience
            final = stopped_early or epoch + 1 == train_config.epochs
            for s in all_sinks:
                s.epoch(row, model, final=final)
            if stopped_early:
                break
    finally:
        for s in all_sinks:
            s.close()
    seconds = time.perf_counter() - start
    last = _weights(model)
    state = {
        "epoch": len(log), "model": last, "optimizer": _cpu(opt.state_dict()), "rng": gen.get_state(),
        "best_epoch": best["epoch"], "best_test_nelbo": best["test_nelbo"], "since_best": since_best,
    }
    model = model.cpu()
    if train_config.keep == "best" and best["weights"] is not None:
        model.load_state_dict(best["weights"])
    metrics = evaluate(model, data.test_raw, samples=train_config.eval_samples)
    metrics.update(
        train_nelbo_last_epoch=float(log[-1]["train_loss"]), train_seconds=seconds, epochs_run=len(log),
        best_epoch=best["epoch"], kept_epoch=best["epoch"] if train_config.keep == "best" else len(log),
        stopped_early=stopped_early,
    )
    return TrainResult(model.eval(), metrics, [r["train_loss"] for r in log], seconds, log, state)


def checkpoint_meta(data: Dataset, train_config: TrainConfig, result: TrainResult) -> dict[str, Any]:
    return {
        "data": data.spec.to_dict(),
        "train": asdict(train_config),
        "metrics": result.metrics,
        "history": result.log,
    }


def train_state(result: TrainResult) -> dict[str, Any]:
    """What the checkpoint stores for ``--resume`` (tensors and plain data only).

    The last weights are stored only when the checkpoint keeps other (best) weights.
    """
    st = dict(result.state)
    kept = result.model.state_dict()
    if all(torch.equal(kept[k], v) for k, v in st["model"].items()):
        st["model"] = None
    return st


def resume_state(ckpt: Any) -> dict[str, Any]:
    """The ``resume`` argument of :func:`train` from a loaded checkpoint; refuses one without state."""
    st = getattr(ckpt, "train_state", None)
    history = ckpt.meta.get("history")
    if not st or not isinstance(history, list):
        raise TrainingError(
            f"checkpoint {str(ckpt.path)!r} holds no training state to resume from (it was written by an "
            f"older vae-deploy or not by `vae-deploy train`)"
        )
    st = dict(st)
    if st.get("model") is None:  # the checkpoint's weights are the last ones
        st["model"] = ckpt.state_dict
    # With keep=best the checkpoint's weights are the best so far (unused with keep=last).
    return {"state": st, "history": history, "best_weights": ckpt.state_dict}
