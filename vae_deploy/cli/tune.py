"""`vae-deploy tune`: measure every engine x precision that passes its gate; record the winner."""

from __future__ import annotations

from pathlib import Path

import click

from vae_deploy.cli.options import ROUNDS, THREADS, budget_options, friendly_errors, ints


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--batch-sizes", callback=ints, default=None, help="e.g. 1,64 (default: 1,64; 1 for large outputs).")
@budget_options
@click.option("--latent-shape", callback=ints, default=None,
              help="Tune at the size you decode, e.g. 4,64,64 for 512 px Stable Diffusion images (default: the "
                   "export's example latent shape). Records are kept per shape.")
@click.option("--threads", type=THREADS, default=None, help="Intra-op threads (part of the key).")
@click.option("--rounds", type=ROUNDS, default=5, show_default=True)
@click.option("--tuning-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to record (default: $XDG_CACHE_HOME/vae-deploy/tuning.json).")
@friendly_errors
def tune(export_dir: Path, batch_sizes: tuple[int, ...] | None, max_error: float | None, fp32_only: bool,
         latent_shape: tuple[int, ...] | None, threads: int | None, rounds: int, tuning_file: Path | None) -> None:
    """Pick the fastest engine x precision that passes its accuracy gate on this machine."""
    from vae_deploy.runtime import Runtime
    from vae_deploy.runtime.engines.tune import tune as run_tune

    rec = run_tune(export_dir, open_runtime=Runtime.load, batch_sizes=batch_sizes, fp32_only=fp32_only, max_error=max_error, threads=threads,
                   latent_shape=latent_shape, rounds=rounds, tuning_file=tuning_file,
                   log=lambda s: click.echo(s, err=True))
    for label, why in rec["excluded"].items():
        click.echo(f"left out {label}: {why}")
    shape = rec["key"]["latent_shape"]
    for bs, cell in rec["batch_sizes"].items():
        w = cell["winner"]
        click.echo(f"batch {bs} at latent {shape}: {w['backend']} ({w['engine']} {w['precision']}), "
                   f"{cell['vs_ort_cpu']:.2f}x ort-cpu")
    flags = [f for f, v in rec["key"]["cpu_flags"].items() if v]
    click.echo(f"budget: {rec['budget']}; CPU: {rec['key']['cpu_model']} ({', '.join(flags) or 'no key flags'})")
    budget = (f", max_error={max_error!r}" if max_error is not None else "") + (", fp32_only=True" if fp32_only else "")
    click.echo(f"tuning file: {rec['tuning_file']}; load it with Runtime.load(path, engine='auto', precision='auto'"
               f"{budget}, latent_shape={tuple(shape)!r}) or --engine auto with the same budget options")
