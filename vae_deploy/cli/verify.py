"""`vae-deploy verify`: integrity and parity of an export; exit 1 on any failure."""

from __future__ import annotations

from pathlib import Path

import click

from vae_deploy.cli.options import (
    SECONDS,
    check_writable,
    finite_nonneg,
    friendly_errors,
    ints,
    json_option,
    model_source,
    to_stdout,
    user_model_options,
    write_json,
)


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference checkpoint (default: the one recorded in the manifest).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .npy/.npz of real examples for the encoder (default: the training data the checkpoint "
                   "records, when it is found).")
@click.option("--batch-sizes", callback=ints, default=None,
              help="Comma-separated batch sizes (default: those of 1,7,64,257 that the model's cost affords within "
                   "--time-budget).")
@click.option("--time-budget", type=SECONDS, default=None,
              help="Seconds of parity work per backend the default batch sizes are sized to (default 20).")
@click.option("--strict-edges", is_flag=True,
              help="Fail on constant-input edge cases too (by default, on GroupNorm models whose real-data cases "
                   "pass, they are warnings).")
@click.option("--atol", type=float, default=None, callback=finite_nonneg,
              help="Override the precision's absolute tolerance.")
@click.option("--rtol", type=float, default=None, callback=finite_nonneg,
              help="Override the precision's relative tolerance.")
@click.option("--backends", default=None,
              help="Comma-separated subset, e.g. ort-cpu,torchscript,ort-cpu-int8 (names as in the report).")
@click.option("--engine", "engines", type=click.Choice(["all", "onnxruntime", "openvino"]), default="all",
              show_default=True, help="Which engines' backends to verify (all: every installed one).")
@json_option
@click.option("-v", "--verbose", is_flag=True, help="Show every case, not only the extremes, failures and worst case.")
@user_model_options
@friendly_errors
def verify(export_dir: Path, checkpoint: Path | None, data: Path | None, batch_sizes: tuple[int, ...] | None,
           time_budget: float | None, strict_edges: bool,
           atol: float | None, rtol: float | None, backends: str | None, engines: str, json_path: Path | None, verbose: bool,
           model_target: str | None, weights: Path | None, input_shape: tuple[int, ...] | None,
           latent_dim: int | None, likelihood: str | None, diffusers_path: Path | None, subfolder: str | None,
           encode_fn: str | None, decode_fn: str | None) -> None:
    """Check integrity and parity (eager vs TorchScript vs ONNX Runtime); exit 1 on any failure.

    Without torch (the lean install) the reference is ort-cpu on the fp32 graphs, and the
    report says so.
    """
    from vae_deploy.checks.verify import verify_export

    if not to_stdout(json_path):
        check_writable(json_path, "--json")  # before the run, not after it
    if data is not None and not data.is_file():
        raise click.BadParameter(f"expected a .npy/.npz file, got {str(data)!r} (not a file)", param_hint="--data")
    if input_shape is None and (model_target or diffusers_path):
        input_shape = _example_shape(export_dir)
    source = model_source(checkpoint, model_target, weights, input_shape, latent_dim, likelihood,
                          checkpoint_flag="--checkpoint", diffusers_path=diffusers_path, subfolder=subfolder,
                          encode_fn=encode_fn, decode_fn=decode_fn)
    reference = None if model_target is None and diffusers_path is None else source
    wanted = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    result = verify_export(export_dir, checkpoint=checkpoint, reference=reference, batch_sizes=batch_sizes,
                           atol=atol, rtol=rtol, backends=wanted, data=data,
                           engines=None if engines == "all" else [engines], strict_edges=strict_edges,
                           time_budget_s=time_budget, progress=True)
    click.echo(result.format(verbose=verbose), err=to_stdout(json_path))
    write_json(json_path, result.to_dict())
    if not result.passed:
        raise SystemExit(1)


def _example_shape(export_dir: Path) -> tuple[int, ...] | None:
    """The per-example input shape the export was traced and checked at: verify's default size
    (not the model's ``sample_size``, 512 for Stable Diffusion: hours of CPU)."""
    from vae_deploy.artifacts import load_manifest

    shape = load_manifest(export_dir, verify=False).get("model", {}).get("example_input_shape")
    return tuple(int(d) for d in shape) if shape and all(int(d) > 0 for d in shape) else None
