"""`vae-deploy verify`: integrity and parity of an export; exit 1 on any failure."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vae_deploy.cli.options import (
    check_writable,
    finite_nonneg,
    friendly_errors,
    ints,
    model_source,
    user_model_options,
)


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference checkpoint (default: the one recorded in the manifest).")
@click.option("--batch-sizes", callback=ints, default="1,7,64,257", show_default=True)
@click.option("--atol", type=float, default=None, callback=finite_nonneg,
              help="Override the precision's absolute tolerance.")
@click.option("--rtol", type=float, default=None, callback=finite_nonneg,
              help="Override the precision's relative tolerance.")
@click.option("--backends", default=None, help="Comma-separated subset, e.g. onnx-cpu,torchscript.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("-v", "--verbose", is_flag=True, help="Show every case, not only the extremes and failures.")
@user_model_options
@friendly_errors
def verify(export_dir: Path, checkpoint: Path | None, batch_sizes: tuple[int, ...], atol: float | None,
           rtol: float | None, backends: str | None, json_path: Path | None, verbose: bool,
           model_target: str | None, weights: Path | None, input_shape: tuple[int, ...] | None,
           latent_dim: int | None, likelihood: str | None) -> None:
    """Check integrity and parity (eager vs TorchScript vs ONNX); exit 1 on any failure."""
    from vae_deploy.verify import format_verification, verify_export

    check_writable(json_path, "--json")  # before the run, not after it
    source = model_source(checkpoint, model_target, weights, input_shape, latent_dim, likelihood,
                          checkpoint_flag="--checkpoint")
    reference = None if model_target is None else source
    result = verify_export(export_dir, checkpoint=checkpoint, reference=reference, batch_sizes=batch_sizes,
                           atol=atol, rtol=rtol, backends=backends.split(",") if backends else None)
    click.echo(format_verification(result, verbose=verbose))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"report: {json_path}")
    if not result["passed"]:
        raise SystemExit(1)
