"""`vae-deploy train` and `vae-deploy info`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vae_deploy.cli.options import check_writable, friendly_errors, ints


@click.command()
@click.option("--data", default="digits", show_default=True, help="'digits' (bundled) or a .npy/.npz file.")
@click.option("--family", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True)
@click.option("--latent-dim", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--hidden", callback=ints, default=None, help="Layer widths, e.g. 256 (mlp) or 32,64,256 (conv).")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian"]), default="bernoulli", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--beta", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--kl-warmup", type=click.IntRange(min=0), default=0, show_default=True, help="KL warm-up epochs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("runs/ckpt.pt"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def train(
    data: str, family: str, latent_dim: int, hidden: tuple[int, ...] | None, likelihood: str, epochs: int,
    batch_size: int, lr: float, beta: float, kl_warmup: int, seed: int, test_fraction: float, out: Path,
    quiet: bool,
) -> None:
    """Train a VAE and write a safe, self-describing checkpoint."""
    from vae_deploy.checkpoint import save_checkpoint
    from vae_deploy.data import load_dataset
    from vae_deploy.model import VAEConfig
    from vae_deploy.train import TrainConfig, checkpoint_meta
    from vae_deploy.train import train as run_training

    check_writable(out, "--out")  # before training, not after it
    ds = load_dataset(data, seed=seed, test_fraction=test_fraction, bernoulli=likelihood == "bernoulli")
    cfg = VAEConfig(
        family=family, input_shape=ds.input_shape, latent_dim=latent_dim,
        hidden=hidden or VAEConfig.default_hidden(family), likelihood=likelihood, beta=beta,
    )
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, kl_warmup_epochs=kl_warmup)
    click.echo(
        f"training {family} VAE (latent {latent_dim}, hidden {list(cfg.hidden)}) on {data}: "
        f"{len(ds.train)} train / {len(ds.test)} test examples of shape {list(ds.input_shape)}",
        err=True,
    )
    result = run_training(cfg, ds, tcfg, progress=not quiet)
    path = save_checkpoint(out, result.model, checkpoint_meta(ds, tcfg, result))
    m = result.metrics
    click.echo(
        f"test negative ELBO {m['test_nelbo']:.3f} nats/example "
        f"(reconstruction {m['test_recon']:.3f} + KL {m['test_kl']:.3f}), trained in {m['train_seconds']:.1f} s"
    )
    click.echo(f"checkpoint: {path}")


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@friendly_errors
def info(path: Path) -> None:
    """Describe a checkpoint (or an export folder)."""
    if path.is_dir():
        from vae_deploy.exporters.manifest import describe_export

        click.echo(describe_export(path))
        return
    if path.suffix == ".onnx":
        from vae_deploy.exporters.manifest import describe_onnx

        click.echo(describe_onnx(path))
        return
    from vae_deploy.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    click.echo(json.dumps({"config": ckpt.config.to_dict(), "meta": ckpt.meta, "sha256": ckpt.sha256}, indent=2))

