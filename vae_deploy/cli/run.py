"""`vae-deploy sample` and `vae-deploy reconstruct`: the Runtime from the shell."""

from __future__ import annotations

from pathlib import Path

import click

from vae_deploy.cli.options import (
    SAMPLES,
    SEED,
    TILE,
    check_memory,
    engine_options,
    friendly_errors,
    ints,
    out_file,
    runtime_kwargs,
)

TILE_HELP = ("Decode (and encode) in overlapping latent tiles of this size, diffusers' tiling rule: memory follows "
             "the tile, not the image. A multiple of 4, e.g. 64 for Stable Diffusion (512 px tiles).")


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("-n", "--n", "n", type=SAMPLES, default=64, show_default=True)
@click.option("--seed", type=SEED, default=None, help="Non-negative integer (default: fresh entropy).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@engine_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=out_file,
              help="Write samples as .npy.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=out_file,
              help="Write a PNG grid.")
@click.option("--latent-shape", callback=ints, default=None,
              help="Per-example latent shape for a dynamic-size export, e.g. 4,128,128 (default: the export's example).")
@click.option("--tile", type=TILE, default=None, help=TILE_HELP)
@friendly_errors
def sample(export_dir: Path, n: int, seed: int | None, provider: str, engine: str, precision: str, force_bf16: bool,
           tuning_file: Path | None, out: Path | None, grid: Path | None, latent_shape: tuple[int, ...] | None,
           tile: int | None) -> None:
    """Draw samples from an exported decoder (z ~ N(0, I) in the host)."""
    import math

    from vae_deploy.images import save_grid, save_npy
    from vae_deploy.runtime import Runtime

    rt = Runtime.load(export_dir, provider=provider, **runtime_kwargs(engine, precision, force_bf16, tuning_file))
    shape = rt.sample_latent_shape(latent_shape)
    ratio = max(1, math.prod(rt.spec.concrete_input_shape) // max(1, math.prod(rt.spec.concrete_latent_shape)))
    check_memory(n * 4 * math.prod(shape) * (1 + ratio), f"{n} samples", "-n")
    x = rt.sample(n, seed=seed, latent_shape=latent_shape, tile=tile)
    click.echo(f"{n} samples of shape {list(x.shape[1:])} on {rt.engine.label} ({rt.precision}), "
               f"range [{x.min():.3f}, {x.max():.3f}]")
    if out:
        click.echo(f"samples: {save_npy(out, x)}")
    if grid:
        click.echo(f"grid: {save_grid(grid, x)}")


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@engine_options
@click.option("--sample/--mean", "stochastic", default=False, help="Decode a posterior sample instead of the mean.")
@click.option("--seed", type=SEED, default=None, help="Non-negative integer (default: fresh entropy).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=out_file,
              help="Write .npy.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=out_file,
              help="PNG: the inputs (captioned 'input') above their reconstructions.")
@click.option("--tile", type=TILE, default=None, help=TILE_HELP)
@friendly_errors
def reconstruct(export_dir: Path, inputs: Path, provider: str, engine: str, precision: str, force_bf16: bool,
                tuning_file: Path | None, stochastic: bool, seed: int | None,
                out: Path | None, grid: Path | None, tile: int | None) -> None:
    """Encode and decode the examples in a .npy/.npz file."""
    import numpy as np

    from vae_deploy.data import load_array_file
    from vae_deploy.images import save_labelled_grid, save_npy
    from vae_deploy.runtime import Runtime

    rt = Runtime.load(export_dir, provider=provider, **runtime_kwargs(engine, precision, force_bf16, tuning_file))
    x = load_array_file(inputs, bernoulli=rt.spec.likelihood == "bernoulli", min_examples=1)
    if x.shape[1:] != rt.input_shape and x.ndim == 2 and x.shape[1] == int(np.prod(rt.input_shape)):
        x = x.reshape(-1, *rt.input_shape)
    x_hat = rt.reconstruct(x, sample=stochastic, seed=seed, tile=tile)
    err = float(np.abs(x_hat - x).mean())
    click.echo(f"reconstructed {len(x)} examples on {rt.engine.label}: mean abs error {err:.4f}")
    if out:
        click.echo(f"reconstructions: {save_npy(out, x_hat)}")
    if grid:
        k = min(len(x), 16)
        sections = [(f"input (first {k})", x[:k]), ("reconstruction", x_hat[:k])]
        click.echo(f"grid: {save_labelled_grid(grid, sections, cols=k)}")
