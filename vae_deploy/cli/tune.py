"""`vae-deploy tune`: measure every engine x precision that passes its gate; record the winner."""

from __future__ import annotations

from pathlib import Path

import click

from vae_deploy.cli.options import ROUNDS, THREADS, FiniteFloatRange, friendly_errors, ints


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--batch-sizes", callback=ints, default=None, help="e.g. 1,64 (default: 1,64; 1 for large outputs).")
@click.option("--max-error", type=FiniteFloatRange(min=0), default=None,
              help="Accuracy budget: leave out variants whose max abs error vs fp32 exceeds this.")
@click.option("--fp32-only", is_flag=True, help="Leave out every lossy variant (int8, bf16, fp16).")
@click.option("--threads", type=THREADS, default=None, help="Intra-op threads (part of the key).")
@click.option("--rounds", type=ROUNDS, default=5, show_default=True)
@click.option("--tuning-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to record (default: $XDG_CACHE_HOME/vae-deploy/tuning.json).")
@friendly_errors
def tune(export_dir: Path, batch_sizes: tuple[int, ...] | None, max_error: float | None, fp32_only: bool,
         threads: int | None, rounds: int, tuning_file: Path | None) -> None:
    """Pick the fastest engine x precision that passes its accuracy gate on this machine."""
    if max_error is not None and fp32_only:
        raise click.UsageError("give --max-error or --fp32-only, not both")
    from vae_deploy.engines.tune import tune as run_tune

    rec = run_tune(export_dir, batch_sizes=batch_sizes, fp32_only=fp32_only, max_error=max_error, threads=threads,
                   rounds=rounds, tuning_file=tuning_file, log=lambda s: click.echo(s, err=True))
    for label, why in rec["excluded"].items():
        click.echo(f"left out {label}: {why}")
    for bs, cell in rec["batch_sizes"].items():
        w = cell["winner"]
        click.echo(f"batch {bs}: {w['backend']} ({w['engine']} {w['precision']}), {cell['vs_ort_cpu']:.2f}x ort-cpu")
    flags = [f for f, v in rec["key"]["cpu_flags"].items() if v]
    click.echo(f"CPU: {rec['key']['cpu_model']} ({', '.join(flags) or 'no key flags'})")
    click.echo(f"tuning file: {rec['tuning_file']}; load it with Runtime.load(path, engine='auto', precision='auto')")
