"""`vae-deploy export`: checkpoint or user module to an export folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vae_deploy.cli.options import (
    formats_option,
    friendly_errors,
    json_option,
    model_source,
    out_folder,
    precisions_option,
    to_stdout,
    user_model_options,
    write_json,
)


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@user_model_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("export"), show_default=True,
              callback=out_folder)
@click.option("--format", "formats", default=None, callback=lambda c, p, v: None if v is None else formats_option(c, p, v),
              help="Comma-separated: onnx, torchscript. Default: onnx,torchscript for a checkpoint or --model; "
                   "onnx for --diffusers (every consumer reads ONNX; TorchScript doubled the size and time).")
@click.option("--opset", type=click.IntRange(14, 99), default=18, show_default=True)
@click.option("--precision", "precisions", default="fp32", show_default=True, callback=precisions_option,
              help="Comma-separated ONNX variants to write: fp32 (always), fp32-fast (exact CPU rewrite), "
                   "int8, fp16 (for GPUs). E.g. fp32,fp32-fast,int8.")
@click.option("--int8-method", type=click.Choice(["auto", "dynamic", "static"]), default="auto", show_default=True,
              help="auto: static (calibrated) for convolutional graphs, dynamic otherwise.")
@click.option("--strict", is_flag=True,
              help="Fail (writing nothing) if a requested variant fails its parity check, instead of dropping it.")
@click.option("--no-verify", is_flag=True, help="Skip the post-export parity check against the eager model.")
@json_option
@friendly_errors
def export(checkpoint: Path | None, model_target: str | None, weights: Path | None, input_shape: tuple[int, ...] | None,
           latent_dim: int | None, likelihood: str | None, diffusers_path: Path | None, subfolder: str | None,
           encode_fn: str | None, decode_fn: str | None, out: Path, formats: tuple[str, ...] | None, opset: int,
           precisions: tuple[str, ...], int8_method: str, strict: bool, no_verify: bool,
           json_path: Path | None) -> None:
    """Export a checkpoint's (or your own VAE's) encoder and decoder (ONNX, TorchScript) with a manifest.

    \b
    vae-deploy export runs/ckpt.pt --out export/
    vae-deploy export runs/ckpt.pt --precision fp32,fp32-fast,int8
    vae-deploy export --model my_vae:build --weights vae.pt --input-shape 784 --out export/
    vae-deploy export --diffusers ./stable-diffusion-v1-5 --subfolder vae --out export/
    """
    from vae_deploy.exporters import export as run_export
    from vae_deploy.exporters.fp16 import CPU_NOTE
    from vae_deploy.progress import Progress, format_bytes

    if checkpoint is None and model_target is None and diffusers_path is None:
        raise click.UsageError("give a CHECKPOINT, or --model package.module:factory --weights state_dict.pt, "
                               "or --diffusers FOLDER")
    if formats is None:
        formats = ("onnx",) if diffusers_path is not None else ("onnx", "torchscript")
    prog = Progress("export", enabled=True)
    with prog.stage("loading the model"):
        source = model_source(checkpoint, model_target, weights, input_shape, latent_dim, likelihood,
                              diffusers_path=diffusers_path, subfolder=subfolder, encode_fn=encode_fn,
                              decode_fn=decode_fn)
    result = run_export(source, out, formats=formats, opset=opset, verify=not no_verify,
                        precisions=precisions, int8_method=int8_method, strict=strict, progress=prog)
    click.echo(export_table(result.manifest), err=to_stdout(json_path))
    for v in result.variants:
        if v.status == "dropped":
            click.echo(f"dropped {v.precision}: {v.reason}", err=True)
        elif v.status == "not applicable":
            click.echo(f"skipped {v.precision}: {v.reason}", err=True)
        for note in v.notes:
            click.echo(f"note ({v.precision}): {note}", err=True)
    if any(v.precision == "fp16" and v.status == "written" for v in result.variants):
        click.echo(f"note: {CPU_NOTE}", err=True)
    peak = format_bytes(result.manifest.get("export", {}).get("peak_rss_bytes"))
    click.echo(f"wrote {result.out_dir}/ in {prog.seconds:.1f} s (peak RSS {peak})", err=to_stdout(json_path))
    write_json(json_path, {"out_dir": str(result.out_dir), "seconds": prog.seconds,
                           "variants": {v.precision: {"status": v.status, "reason": v.reason} for v in result.variants},
                           "manifest": result.manifest})


def export_table(manifest: dict[str, Any]) -> str:
    """file, size, and the parity measured at export (per backend that reads the file)."""
    parity = manifest.get("parity") or {}
    backends = parity.get("backends", {})
    rows = [f"{'file':<24} {'size':>10}  {'precision':<9} parity vs eager (max abs error; test -ELBO rel diff)"]
    for name, e in manifest["files"].items():
        key = "torchscript" if e["format"] == "torchscript" else "ort-cpu"
        if e.get("precision", "fp32") != "fp32":
            key = f"{key}-{e['precision']}"
        # exports written before the one naming scheme called ort-cpu "onnxruntime-cpu"
        b = backends.get(key) or backends.get(key.replace("ort-", "onnxruntime-", 1))
        verdict = "not verified" if b is None else f"{'PASS' if b['passed'] else 'FAIL'} ({b['max_abs_error']:.1e}"
        if b is not None:
            elbo = b.get("elbo_rel_diff")
            verdict += f"; {elbo:.1e})" if elbo is not None else ")"
        rows.append(f"{name:<24} {e['size']:>10,d}  {e.get('precision', 'fp32'):<9} {verdict}")
    return "\n".join(rows)
