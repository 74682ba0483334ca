"""`vae-deploy bench`: the measuring harness from the shell."""

from __future__ import annotations

from pathlib import Path

import click

from vae_deploy.cli.options import ROUNDS, THREADS, check_writable, friendly_errors, ints, out_folder


@click.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@click.option("--backends", default=None,
              help="Comma-separated backends or patterns: eager, eager-bf16, torch-compile, ort-plain, torchscript, ort-cpu, "
                   "ort-cpu-bare, ort-cpu-<precision>, ort-cuda, ort-tensorrt, openvino-cpu, openvino-cpu-<precision> "
                   "(default: every one that runs here).")
@click.option("--batch-sizes", callback=ints, default=None, help="e.g. 1,8,64,512 (quick: 1,8).")
@click.option("--ops", default="sample,encode", show_default=True, help="sample, encode or both.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"), show_default=True,
              callback=out_folder)
@click.option("--quick", is_flag=True, help="Seconds-long smoke run (few rounds, small batches).")
@click.option("--reference-models/--no-reference-models", default=None,
              help="Also measure the seeded reference architectures [default: on; off with --quick].")
@click.option("--threads", type=THREADS, default=None, help="torch and onnxruntime intra-op threads.")
@click.option("--rounds", type=ROUNDS, default=None, help="Interleaved timing rounds per cell.")
@click.option("--batcher/--no-batcher", default=True, show_default=True, help="Measure the micro-batcher.")
@click.option("--engine", type=click.Choice(["all", "onnxruntime", "openvino"]), default="all", show_default=True,
              help="Which engines' rows to measure (eager and the torch peers are always measured).")
@click.option("--compile/--no-compile", "torch_compile", default=None,
              help="Time torch.compile as a peer [default: on; off with --quick].")
@click.option("--sd/--no-sd", "sd_model", default=True, show_default=True,
              help="With the reference models: the SD-architecture AutoencoderKL (needs diffusers).")
@click.option("--sd-sizes", callback=ints, default=None,
              help="Image sides of the SD rows, multiples of 64 [default: 256,512; 512 also encodes]. Larger sizes "
                   "take minutes per row (1024: ~16x the 256 px cost).")
@click.option("--sd-rounds", type=ROUNDS, default=None,
              help="Rounds for the SD model (seconds per call) [default: 3].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the reference models' exports are kept, keyed by a hash of their config "
                   "[default: $XDG_CACHE_HOME/vae-deploy/bench-models].")
@click.option("--compile-all", is_flag=True,
              help="torch.compile every reference model (default: ref-mlp28 and ref-conv28; minutes each on 2 cores).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An earlier report.json (same CPU class): exit 1 when a backend's speed-up vs eager falls below "
                   "it by more than noise (the CI perf guard: make bench-guard).")
@friendly_errors
def bench(
    export_dir: Path | None, backends: str | None, batch_sizes: tuple[int, ...] | None, ops: str, out: Path,
    quick: bool, reference_models: bool | None, threads: int | None, rounds: int | None, batcher: bool,
    engine: str, torch_compile: bool | None, sd_model: bool, sd_rounds: int | None, sd_sizes: tuple[int, ...] | None, cache_dir: Path | None,
    compile_all: bool, baseline: Path | None,
) -> None:
    """Measure an export folder's backends (and reference models); write report.{md,json} and plots."""
    from vae_deploy.benchmarking import BenchConfig, print_summary, run_benchmark
    from vae_deploy.benchmarking.report import write_report

    check_writable(out, "--out", folder=True)
    base_report = _load_baseline(baseline) if baseline else None  # before minutes of measuring
    if backends:
        _check_backend_patterns([b.strip() for b in backends.split(",") if b.strip()], export_dir)
    cfg = BenchConfig.make(
        quick=quick, batch_sizes=batch_sizes, reference_models=reference_models, threads=threads, rounds=rounds,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
        ops=tuple(o.strip() for o in ops.split(",") if o.strip()), batcher=batcher,
        engines=None if engine == "all" else (engine,), torch_compile=torch_compile, sd_model=sd_model,
        sd_rounds=sd_rounds, sd_sizes=sd_sizes, cache_dir=str(cache_dir) if cache_dir else None,
    )
    if compile_all:
        cfg.compile_models = None
    report = run_benchmark([export_dir] if export_dir else [], cfg, log=lambda s: click.echo(s, err=True))
    paths = write_report(report, out)
    if "throughput" not in paths:
        from vae_deploy.benchmarking.report import PLOTS_SKIPPED

        click.echo(PLOTS_SKIPPED, err=True)
    print_summary(report)
    click.echo(f"report: {paths['markdown']} ({report['duration_s']:.0f} s)")
    if base_report is not None:
        from vae_deploy.benchmarking.guard import compare, describe

        result = compare(report, base_report)
        for line in describe(result):
            click.echo(line, err=True)
        click.echo(f"perf guard: {result['compared']} cells compared with {baseline}, "
                   f"{len(result['regressions'])} regression(s)", err=True)
        if result["regressions"]:
            raise SystemExit(1)


def _load_baseline(path: Path) -> dict:
    """An earlier report.json, checked to be one before the run starts."""
    import json

    from vae_deploy.errors import ConfigError
    from vae_deploy.files import read_user_text

    try:
        data = json.loads(read_user_text(path, "baseline report", max_bytes=256 << 20))
    except FileNotFoundError:
        raise ConfigError(f"--baseline {str(path)!r} does not exist; expected a report.json of an earlier "
                          "vae-deploy bench run on this CPU class (make bench-guard-baseline records one)") from None
    except ValueError as e:
        raise ConfigError(f"--baseline {str(path)!r} is not JSON ({e}); expected a report.json of vae-deploy bench") from None
    if not isinstance(data, dict) or data.get("schema", {}).get("name") != "vae-deploy-bench" or "cells" not in data:
        raise ConfigError(f"--baseline {str(path)!r} is not a vae-deploy bench report (no schema 'vae-deploy-bench' "
                          "with cells); expected the report.json an earlier run wrote")
    return data


def _check_backend_patterns(patterns: list[str], export_dir: Path | None) -> None:
    """Every --backends name or pattern must match a backend this run could have: a typo
    would otherwise measure nothing and fail at the end."""
    import fnmatch

    from vae_deploy.artifacts import load_manifest
    from vae_deploy.benchmarking import BASE_BACKENDS, ORT, precision_variants

    known = list(BASE_BACKENDS)
    if export_dir is not None:
        known += [f"{ORT}-{p}" for p in precision_variants(load_manifest(export_dir, verify=False))]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(k, p) for k in known)]
    if unknown:
        raise click.BadParameter(f"{unknown} match no backend; expected names or patterns among {known}",
                                 param_hint="--backends")
