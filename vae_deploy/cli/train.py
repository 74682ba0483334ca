"""`vae-deploy train` and `vae-deploy info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vae_deploy.cli.options import (
    BATCH_SIZE,
    EPOCHS,
    LATENT_DIM,
    SEED,
    THREADS,
    FiniteFloatRange,
    check_writable,
    friendly_errors,
    ints,
    json_option,
    out_file,
    out_folder,
    to_stdout,
    write_json,
)

# Options that define the model, the data or the optimisation: a resumed run takes them from
# the checkpoint, so giving one with --resume is a mistake worth a clear error.
FROM_CHECKPOINT = ("data", "image_size", "channels", "layout", "family", "latent_dim", "hidden", "likelihood",
                   "batch_size", "lr", "beta", "kl_warmup", "seed", "test_fraction", "keep")


def _image_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    size = ints(ctx, param, value)
    if size is not None and len(size) != 2:
        raise click.BadParameter(f"expected H,W (two positive integers), got {value!r}")
    return size  # type: ignore[return-value]


@click.command()
@click.option("--data", default="digits", show_default=True,
              help="'digits' (8x8, bundled), 'mnist' (28x28, the mnist extra), a .npy/.npz file or a folder of images.")
@click.option("--image-size", callback=_image_size, default=None, metavar="H,W",
              help="Image folders: resize every image to H x W (needed when sizes differ).")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="Image folders: 1 = grayscale, 3 = RGB (default: 1 if every image is grayscale).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default=None,
              help="4-D arrays: channels-first or channels-last (default: detected; ambiguous shapes ask for it).")
@click.option("--family", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True)
@click.option("--latent-dim", type=LATENT_DIM, default=8, show_default=True)
@click.option("--hidden", callback=ints, default=None, help="Layer widths, e.g. 256 (mlp) or 32,64,256 (conv).")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian"]), default="bernoulli", show_default=True)
@click.option("--epochs", type=EPOCHS, default=300, show_default=True,
              help="Total epochs (with --resume: including the checkpoint's).")
@click.option("--batch-size", type=BATCH_SIZE, default=128, show_default=True)
@click.option("--lr", type=FiniteFloatRange(0, 10, min_open=True), default=1e-3, show_default=True)
@click.option("--beta", type=FiniteFloatRange(0, 1e6), default=1.0, show_default=True)
@click.option("--kl-warmup", type=click.IntRange(0, 1_000_000), default=0, show_default=True, help="KL warm-up epochs.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--test-fraction", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--keep", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="Checkpoint the last epoch's weights, or the epoch with the lowest test -ELBO.")
@click.option("--patience", type=EPOCHS, default=None,
              help="Stop when the test -ELBO has not improved for this many epochs.")
@click.option("--threads", type=THREADS, default=None,
              help="CPU threads for torch (default: torch's choice; fewer is steadier on a busy machine).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Continue a checkpoint's training up to --epochs (same result as one uninterrupted run).")
@click.option("--tensorboard", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              callback=out_folder,
              help="Write TensorBoard scalars and image grids here (the tensorboard extra).")
@click.option("--image-every", type=EPOCHS, default=10, show_default=True,
              help="With --tensorboard: sample and reconstruction grids every this many epochs (and at the end).")
@click.option("--log-csv", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Write one CSV row of metrics per epoch.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("runs/ckpt.pt"), show_default=True,
              callback=out_file)
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@json_option
@click.pass_context
@friendly_errors
def train(
    ctx: click.Context, data: str, image_size: tuple[int, int] | None, channels: str | None, layout: str | None,
    family: str, latent_dim: int, hidden: tuple[int, ...] | None, likelihood: str, epochs: int,
    batch_size: int, lr: float, beta: float, kl_warmup: int, seed: int, test_fraction: float, keep: str,
    patience: int | None, threads: int | None, device: str, resume: Path | None, tensorboard: Path | None,
    image_every: int, log_csv: Path | None, out: Path, quiet: bool, json_path: Path | None,
) -> None:
    """Train a VAE and write a safe, self-describing checkpoint.

    Per-epoch train loss and test negative ELBO go to stderr: a progress bar on a terminal,
    one line per epoch otherwise. A diverged run (non-finite loss) exits 1 and writes nothing.
    """
    import torch

    from vae_deploy.training.checkpoint import load_checkpoint, save_checkpoint
    from vae_deploy.training.data import dataset_from_spec, load_dataset
    from vae_deploy.training.logs import CsvLog, Sink, TensorBoardLog, require_tensorboard
    from vae_deploy.training.model import VAEConfig
    from vae_deploy.training.train import (
        TrainConfig,
        checkpoint_meta,
        resolve_device,
        resume_state,
        train_state,
    )
    from vae_deploy.training.train import train as run_training

    resolve_device(device)  # fail before loading anything
    check_writable(out, "--out")  # before training, not after it
    if tensorboard is not None:
        require_tensorboard()
    if log_csv is not None and log_csv.is_dir():
        raise click.BadParameter(f"expected a file path, got the folder {str(log_csv)!r}", param_hint="--log-csv")
    if threads is not None:
        torch.set_num_threads(threads)
    resume_from: dict[str, Any] | None = None
    if resume is not None:
        given = [f"--{n.replace('_', '-')}" for n in FROM_CHECKPOINT
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)}: taken from the checkpoint when resuming; leave them out")
        ckpt = load_checkpoint(resume)
        resume_from = resume_state(ckpt)
        cfg = ckpt.config
        ds = dataset_from_spec(ckpt.meta["data"], bernoulli=cfg.likelihood == "bernoulli")
        stored = ckpt.meta.get("train", {})
        tcfg = TrainConfig.from_dict(stored, epochs=epochs,
                                     patience=patience if patience is not None else stored.get("patience"))
        click.echo(f"resuming {resume} at epoch {len(resume_from['history'])} of {epochs}", err=True)
    else:
        ds = load_dataset(data, seed=seed, test_fraction=test_fraction, bernoulli=likelihood == "bernoulli",
                          layout=layout, image_size=image_size, channels=int(channels) if channels else None)
        cfg = VAEConfig(
            family=family, input_shape=ds.input_shape, latent_dim=latent_dim,
            hidden=hidden or VAEConfig.default_hidden(family), likelihood=likelihood, beta=beta,
        )
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, kl_warmup_epochs=kl_warmup,
                           keep=keep, patience=patience)
    for note in ds.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(
        f"training {cfg.family} VAE (latent {cfg.latent_dim}, hidden {list(cfg.hidden)}) on {ds.spec.name}: "
        f"{len(ds.train_raw)} train / {len(ds.test_raw)} test examples of shape {list(ds.input_shape)}"
        f" ({ds.train_raw.dtype}), device {device}, {torch.get_num_threads()} threads",
        err=True,
    )
    sinks: list[Sink] = []
    if log_csv is not None:
        sinks.append(CsvLog(log_csv))
    if tensorboard is not None:
        sinks.append(TensorBoardLog(tensorboard, ds.test_raw, image_every=image_every, seed=tcfg.seed))
    result = run_training(cfg, ds, tcfg, progress=not quiet, sinks=sinks, device=device, resume=resume_from)
    path = save_checkpoint(out, result.model, checkpoint_meta(ds, tcfg, result), train_state=train_state(result))
    m = result.metrics
    err = to_stdout(json_path)
    if m["stopped_early"]:
        click.echo(f"stopped early after epoch {m['epochs_run']}: no better test -ELBO for {tcfg.patience} epochs",
                   err=True)
    kept = "best" if tcfg.keep == "best" else "last"
    click.echo(
        f"test negative ELBO {m['test_nelbo']:.3f} nats/example "
        f"(reconstruction {m['test_recon']:.3f} + KL {m['test_kl']:.3f}), {kept} epoch {m['kept_epoch']} "
        f"of {m['epochs_run']}, trained in {m['train_seconds']:.1f} s",
        err=err,
    )
    click.echo(f"checkpoint: {path}", err=err)
    write_json(json_path, {"checkpoint": str(path), "config": cfg.to_dict(), "metrics": m})


def history_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """First, best and last epochs of a history (the whole table is `info --history`)."""
    best = min(history, key=lambda r: r["test_nelbo"])
    return {"epochs": len(history), "first": history[0], "best": best, "last": history[-1]}


def history_table(history: list[dict[str, Any]]) -> str:
    from vae_deploy.training.logs import COLUMNS

    lines = ["\t".join(COLUMNS)]
    for row in history:
        lines.append("\t".join(str(row["epoch"]) if c == "epoch" else f"{row[c]:.4f}" for c in COLUMNS))
    return "\n".join(lines)


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--history", "show_history", is_flag=True,
              help="Checkpoints: print the per-epoch metrics table (tab-separated) instead of the summary.")
@json_option
@friendly_errors
def info(path: Path, show_history: bool, json_path: Path | None) -> None:
    """Describe a checkpoint (or an export folder)."""
    if path.is_dir() and json_path is not None:
        from vae_deploy.artifacts import load_manifest

        write_json(json_path, load_manifest(path, verify=True))  # checksums checked, as in the text
        return
    if path.is_dir():
        from vae_deploy.checks.describe import describe_export

        click.echo(describe_export(path))
        return
    if path.suffix == ".onnx":
        from vae_deploy.checks.describe import describe_onnx

        click.echo(describe_onnx(path))
        return
    from vae_deploy.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    history = ckpt.meta.get("history")
    if show_history:
        if not history:
            raise click.ClickException(f"checkpoint {str(path)!r} has no training history (written before it was kept)")
        click.echo(history_table(history))
        return
    meta = dict(ckpt.meta)
    if history:
        meta["history"] = history_summary(history)
    described = {"config": ckpt.config.to_dict(), "meta": meta, "sha256": ckpt.sha256,
                 "resumable": ckpt.train_state is not None}
    if json_path is not None:
        write_json(json_path, described)
        return
    click.echo(json.dumps(described, indent=2))
