"""`vae-deploy batch encode|decode|sample`: data-set-sized jobs, sharded and resumable, in this
process (--workers 1) or on a Ray cluster (see vae_deploy/serving/batch)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vae_deploy.cli.options import (
    BATCH_SIZE,
    SAMPLES,
    SEED,
    SHARD_ROWS,
    THREADS,
    WORKERS,
    FiniteFloatRange,
    friendly_errors,
    latent_options,
    out_folder,
)


def _runtime_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs for Runtime.load; values read as JSON when they parse (8, true, 1.5)."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"expected KEY=VALUE with KEY a Runtime option name, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What every batch command shares: output, sharding, workers, Runtime options."""
    options = [
        click.option("--out", type=click.Path(path_type=Path), required=True, callback=out_folder,
                     help="Output folder: shards + _manifest.json (one job at a time: OUT/.lock). Rerunning into it resumes the job."),
        click.option("--format", "fmt", type=click.Choice(["npy", "parquet", "png"]), default="npy", show_default=True,
                     help="png (decode/sample): one image per row, as diffusers' VaeImageProcessor makes it."),
        click.option("--shard-rows", type=SHARD_ROWS, default=4096, show_default=True,
                     help="Rows per output shard (the unit of work, retry and resume)."),
        click.option("--batch-size", type=BATCH_SIZE, default=256, show_default=True,
                     help="Rows per Runtime call inside a shard."),
        click.option("--workers", type=WORKERS, default=1, show_default=True,
                     help="Ray workers (actors, one Runtime each); 1 without --ray-address runs in this process."),
        click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
                     help="Join this Ray cluster (default with --workers > 1: start a local one)."),
        click.option("--cpus-per-worker", type=FiniteFloatRange(0.01, 4096), default=1.0, show_default=True,
                     help="Ray CPUs reserved per worker; also its onnxruntime threads unless --threads."),
        click.option("--gpus-per-worker", type=FiniteFloatRange(0, 1024), default=0.0, show_default=True,
                     help="Ray GPUs reserved per worker (e.g. 1 with --provider cuda; 0.5 shares a GPU)."),
        click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default=None,
                     help="onnxruntime execution provider (default: the Runtime's, auto)."),
        click.option("--precision", default=None, help="Export precision variant (default fp32)."),
        click.option("--engine", default=None, help="Runtime engine, passed to Runtime.load(engine=...)."),
        click.option("--threads", type=THREADS, default=None, help="onnxruntime intra-op threads."),
        click.option("--runtime-option", "runtime_extra", multiple=True, callback=_runtime_option,
                     metavar="KEY=VALUE", help="Any other Runtime.load option (repeatable)."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
        click.option("--shard-delay", type=FiniteFloatRange(0, 60), default=0.0, hidden=True,
                     help="Test hook: seconds each worker sleeps per shard."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run(task: str, export_dir: Path, *, provider: str | None, precision: str | None, engine: str | None,
         threads: int | None, runtime_extra: dict[str, Any], as_json: bool, shard_delay: float, **kw: Any) -> None:
    """Runtime options are gathered into one dict for Runtime.load; the rest go to run_batch as named."""
    from vae_deploy.serving.batch import run_batch

    named = {"provider": provider, "precision": precision, "engine": engine, "threads": threads}
    opts = {**runtime_extra, **{k: v for k, v in named.items() if v is not None}}  # a named flag wins when given
    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices (a worker died, ...) stay off stdout
        summary = run_batch(task, export_dir, runtime_options=opts, progress=_progress_printer(),
                            shard_delay_s=shard_delay, **kw)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=1))
        return
    resumed = f", {summary.shards_resumed} resumed" if summary.shards_resumed else ""
    click.echo(f"{task}: {summary.rows} rows in {summary.shards} shards{resumed} -> {summary.out}")
    click.echo(f"  computed {summary.rows_computed} rows in {summary.seconds:.2f} s ({summary.rows_per_s:,.0f} rows/s) "
               f"on {summary.workers} worker(s); failures retried: {summary.failures_retried}, "
               f"workers replaced: {summary.workers_replaced}")


def _progress_printer() -> Callable[[Any], None]:
    """One line per second at most (and the last shard), on stderr; redrawn in place on a tty."""
    last = [0.0]
    tty = sys.stderr.isatty()

    def show(p: Any) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0 and p.shards_done < p.shards_total:
            return
        last[0] = now
        line = (f"[{p.shards_done}/{p.shards_total} shards] {p.rows_done:,}/{p.rows_total:,} rows  "
                f"{p.rows_per_s:,.0f} rows/s")
        click.echo(("\r" + line) if tty else line, err=True, nl=not tty or p.shards_done == p.shards_total)

    return show


@click.group()
def batch() -> None:
    """Batch jobs over whole data sets, sharded and resumable, optionally on a Ray cluster."""


@batch.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@job_options
@friendly_errors
def encode(export_dir: Path, input_path: Path, **kw: Any) -> None:
    """Encode INPUT (.npy/.npz, a folder of .npy shards or of images) to mu and logvar shards."""
    _run("encode", export_dir, input_path=input_path, **kw)


@batch.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="LATENTS", type=click.Path(path_type=Path))
@job_options
@latent_options
@friendly_errors
def decode(export_dir: Path, input_path: Path, **kw: Any) -> None:
    """Decode LATENTS (.npy/.npz or a folder of .npy shards) to x shards; a diffusion pipeline's
    latents as it hands them out with --latents scaled and --latent-layout."""
    _run("decode", export_dir, input_path=input_path, **kw)


@batch.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("-n", "--n", "n", type=SAMPLES, required=True, help="Number of samples.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Global seed (>= 0); shard k draws from SeedSequence(seed).spawn()[k], whatever the workers.")
@job_options
@friendly_errors
def sample(export_dir: Path, n: int, seed: int, **kw: Any) -> None:
    """Draw N samples (z ~ N(0, I), seeded per shard) and decode them to x shards."""
    _run("sample", export_dir, n=n, seed=seed, **kw)
