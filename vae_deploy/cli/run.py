"""`vae-deploy sample` and `vae-deploy reconstruct`: the Runtime from the shell."""

from __future__ import annotations

from pathlib import Path

import click

from vae_deploy.cli.options import check_memory, check_writable, friendly_errors


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Non-negative integer (default: fresh entropy).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write samples as .npy.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG grid.")
@friendly_errors
def sample(export_dir: Path, n: int, seed: int | None, provider: str, precision: str, out: Path | None,
           grid: Path | None) -> None:
    """Draw samples from an exported decoder (z ~ N(0, I) in the host)."""
    import math

    from vae_deploy.images import save_grid, save_npy
    from vae_deploy.runtime import Runtime

    check_writable(out, "--out")
    check_writable(grid, "--grid")
    rt = Runtime.load(export_dir, provider=provider, precision=precision)
    check_memory(n * 4 * (math.prod(rt.spec.concrete_input_shape) + math.prod(rt.spec.concrete_latent_shape)),
                 f"{n} samples", "-n")
    x = rt.sample(n, seed=seed)
    click.echo(f"{n} samples of shape {list(x.shape[1:])} on {rt.provider} ({rt.precision}), "
               f"range [{x.min():.3f}, {x.max():.3f}]")
    if out:
        click.echo(f"samples: {save_npy(out, x)}")
    if grid:
        click.echo(f"grid: {save_grid(grid, x)}")


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--sample/--mean", "stochastic", default=False, help="Decode a posterior sample instead of the mean.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Non-negative integer (default: fresh entropy).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write .npy.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG: inputs (top rows) over reconstructions.")
@friendly_errors
def reconstruct(export_dir: Path, inputs: Path, provider: str, stochastic: bool, seed: int | None,
                out: Path | None, grid: Path | None) -> None:
    """Encode and decode the examples in a .npy/.npz file."""
    import numpy as np

    from vae_deploy.data import load_array_file
    from vae_deploy.images import save_grid, save_npy
    from vae_deploy.runtime import Runtime

    check_writable(out, "--out")
    check_writable(grid, "--grid")
    rt = Runtime.load(export_dir, provider=provider)
    x = load_array_file(inputs, bernoulli=rt.spec.likelihood == "bernoulli", min_examples=1)
    if x.shape[1:] != rt.input_shape and x.ndim == 2 and x.shape[1] == int(np.prod(rt.input_shape)):
        x = x.reshape(-1, *rt.input_shape)
    x_hat = rt.reconstruct(x, sample=stochastic, seed=seed)
    err = float(np.abs(x_hat - x).mean())
    click.echo(f"reconstructed {len(x)} examples on {rt.provider}: mean abs error {err:.4f}")
    if out:
        click.echo(f"reconstructions: {save_npy(out, x_hat)}")
    if grid:
        k = min(len(x), 16)
        click.echo(f"grid: {save_grid(grid, np.concatenate([x[:k], x_hat[:k]]), cols=k)}")
