"""`vae-deploy sample`, `reconstruct` and `decode`: the Runtime from the shell.

Every PNG written here goes through :func:`vae_deploy.images.to_uint8` with the export's
output range (diffusers' ``VaeImageProcessor.postprocess``), so a grid or a decoded PNG shows the
pixels a diffusion pipeline would."""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np

from vae_deploy.cli.options import (
    SAMPLES,
    SEED,
    TILE,
    check_memory,
    engine_options,
    friendly_errors,
    ints,
    latent_layout_options,
    out_file,
    out_folder,
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
    from vae_deploy.runtime.core import Runtime

    rt = Runtime.load(export_dir, provider=provider,
                      **runtime_kwargs(engine, precision, force_bf16, tuning_file, latent_shape))
    shape = rt.sample_latent_shape(latent_shape)
    ratio = max(1, math.prod(rt.spec.concrete_input_shape) // max(1, math.prod(rt.spec.concrete_latent_shape)))
    check_memory(n * 4 * math.prod(shape) * (1 + ratio), f"{n} samples", "-n")
    x = rt.sample(n, seed=seed, latent_shape=latent_shape, tile=tile)
    click.echo(f"{n} samples of shape {list(x.shape[1:])} on {rt.engine.label} ({rt.precision}), "
               f"range [{x.min():.3f}, {x.max():.3f}]")
    if out:
        click.echo(f"samples: {save_npy(out, x)}")
    if grid:
        click.echo(f"grid: {save_grid(grid, x, output_range=_grid_range(rt.spec))}")


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

    from vae_deploy.images import save_labelled_grid, save_npy
    from vae_deploy.runtime.core import Runtime
    from vae_deploy.training.data import load_array_file

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
        click.echo(f"grid: {save_labelled_grid(grid, sections, cols=k, output_range=_grid_range(rt.spec))}")


def _grid_range(spec: object) -> tuple[float, float] | None:
    """The range grids map to 0..255; a fallback (older export) or its absence is said in one line."""
    from vae_deploy.images import resolve_output_range

    rng, how = resolve_output_range(spec)
    if rng is None:
        click.echo(f"note: {how}; the grid stretches each image set's min..max to 0..255", err=True)
    elif how != "declared by the export":
        click.echo(f"note: {how}", err=True)
    return rng


def _output_range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH (e.g. -1,1), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise click.BadParameter(f"expected finite LOW < HIGH, got {value!r}")
    return lo, hi


def load_latents(path: Path) -> np.ndarray:
    """A user's .npy (or one-array .npz) of latents as float32, checked before any engine opens."""
    from vae_deploy.errors import InputError
    from vae_deploy.files import check_user_file
    from vae_deploy.training.data.arrays import npz_key

    check_user_file(path, "array")
    if path.suffix not in (".npy", ".npz"):
        raise InputError(f"latents {str(path)!r}: expected a .npy or .npz file, got suffix {path.suffix!r}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            loaded = loaded[npz_key(list(loaded.keys()), f"latents {str(path)!r}")]
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"latents {str(path)!r} could not be read as a numpy array without pickle: {e}") from None
    if not (np.issubdtype(loaded.dtype, np.floating) or np.issubdtype(loaded.dtype, np.integer)):
        raise InputError(f"latents {str(path)!r}: expected a float array, got dtype {loaded.dtype}")
    return np.asarray(loaded, dtype=np.float32)


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("latents_file", metavar="LATENTS", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, callback=out_folder,
              help="A new or empty folder: one PNG per latent, 00000.png, 00001.png, ...")
@click.option("--latents", "scale", type=click.Choice(["raw", "scaled"]), default="raw", show_default=True,
              help="raw: the VAE's own latents; scaled: a pipeline's output_type='latent', normalised as the "
                   "matching diffusers pipeline does (scaling/shift factor, latents_mean/std, FLUX.2 bn).")
@latent_layout_options
@click.option("--output-range", callback=_output_range, default=None, metavar="LOW,HIGH",
              help="The decoder output's range mapped to 0..255 (default: the one the export declares).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@engine_options
@click.option("--tile", type=TILE, default=None, help=TILE_HELP)
@friendly_errors
def decode(export_dir: Path, latents_file: Path, out: Path, scale: str, output_range: tuple[float, float] | None,
           provider: str, engine: str, precision: str, force_bf16: bool, tuning_file: Path | None,
           tile: int | None, latent_layout: str, image_size: tuple[int, int] | None) -> None:
    """Decode LATENTS (.npy [N, *latent_shape] or one latent) to PNGs, as a pipeline's images."""
    from vae_deploy.errors import InputError
    from vae_deploy.images import resolve_output_range, save_pngs, to_uint8
    from vae_deploy.runtime.core import Runtime

    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {str(out)!r} is not empty: expected a new or empty folder (nothing was written)")
    z = load_latents(latents_file)
    rt = Runtime.load(export_dir, provider=provider, **runtime_kwargs(engine, precision, force_bf16, tuning_file))
    if output_range is None:
        output_range, how = resolve_output_range(rt.spec)
        if output_range is None:
            raise InputError(f"{how}: pass --output-range LOW,HIGH (the range the decoder was trained to output)")
        if how != "declared by the export":
            click.echo(f"note: {how}", err=True)
    from vae_deploy.runtime.latents import layout_item_shape

    single = z.ndim == len(layout_item_shape(rt.spec, latent_layout))
    n = 1 if single else len(z)
    check_memory(4 * z.size * (1 + max(1, math.prod(rt.spec.concrete_input_shape) //
                                     max(1, math.prod(rt.spec.concrete_latent_shape)))), f"{n} latents")
    x = rt.decode(z, latents=scale, tile=tile, latent_layout=latent_layout, image_size=image_size)
    images = to_uint8(x[None] if single else x, output_range)
    out.mkdir(parents=True, exist_ok=True)
    paths = save_pngs(out, images)
    h, w, c = images.shape[1:]
    click.echo(f"decoded {len(paths)} latents on {rt.engine.label} ({rt.precision}) to {w}x{h} "
               f"{'RGB' if c == 3 else 'RGBA' if c == 4 else 'grayscale'} PNGs in {out} "
               f"(range ({output_range[0]:g}, {output_range[1]:g}) -> 0..255)")
