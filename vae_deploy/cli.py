"""The ``vae-deploy`` command line: thin click wrappers; all logic lives in the modules."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vae_deploy.errors import VaeDeployError


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one ``Error:`` line and exit status 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VaeDeployError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vae-deploy")
def main() -> None:
    """Train a VAE, export its encoder and decoder, and run, verify and measure them."""


@main.command()
@click.option("--data", default="digits", show_default=True, help="'digits' (bundled) or a .npy/.npz file.")
@click.option("--family", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True)
@click.option("--latent-dim", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--hidden", callback=_ints, default=None, help="Layer widths, e.g. 256 (mlp) or 32,64,256 (conv).")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian"]), default="bernoulli", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--beta", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--kl-warmup", type=click.IntRange(min=0), default=0, show_default=True, help="KL warm-up epochs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("runs/ckpt.pt"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def train(
    data: str, family: str, latent_dim: int, hidden: tuple[int, ...] | None, likelihood: str, epochs: int,
    batch_size: int, lr: float, beta: float, kl_warmup: int, seed: int, test_fraction: float, out: Path,
    quiet: bool,
) -> None:
    """Train a VAE and write a safe, self-describing checkpoint."""
    from vae_deploy.checkpoint import save_checkpoint
    from vae_deploy.data import load_dataset
    from vae_deploy.model import VAEConfig
    from vae_deploy.train import TrainConfig, checkpoint_meta
    from vae_deploy.train import train as run_training

    ds = load_dataset(data, seed=seed, test_fraction=test_fraction, bernoulli=likelihood == "bernoulli")
    cfg = VAEConfig(
        family=family, input_shape=ds.input_shape, latent_dim=latent_dim,
        hidden=hidden or VAEConfig.default_hidden(family), likelihood=likelihood, beta=beta,
    )
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, kl_warmup_epochs=kl_warmup)
    click.echo(
        f"training {family} VAE (latent {latent_dim}, hidden {list(cfg.hidden)}) on {data}: "
        f"{len(ds.train)} train / {len(ds.test)} test examples of shape {list(ds.input_shape)}",
        err=True,
    )
    result = run_training(cfg, ds, tcfg, progress=not quiet)
    path = save_checkpoint(out, result.model, checkpoint_meta(ds, tcfg, result))
    m = result.metrics
    click.echo(
        f"test negative ELBO {m['test_nelbo']:.3f} nats/example "
        f"(reconstruction {m['test_recon']:.3f} + KL {m['test_kl']:.3f}), trained in {m['train_seconds']:.1f} s"
    )
    click.echo(f"checkpoint: {path}")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_friendly_errors
def info(path: Path) -> None:
    """Describe a checkpoint (or an export folder)."""
    if path.is_dir():
        from vae_deploy.exporters.manifest import describe_export

        click.echo(describe_export(path))
        return
    from vae_deploy.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    click.echo(json.dumps({"config": ckpt.config.to_dict(), "meta": ckpt.meta, "sha256": ckpt.sha256}, indent=2))


def _formats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from vae_deploy.exporters import FORMATS

    out = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in out if v not in FORMATS]
    if bad or not out:
        raise click.BadParameter(f"expected a comma-separated subset of {','.join(FORMATS)}, got {value!r}")
    return out


def _user_model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--model/--weights/--input-shape: export or verify your own VAE (see export/README.md)."""
    options = [
        click.option("--model", "model_target", default=None, metavar="PACKAGE.MODULE:FACTORY",
                     help="Your own VAE: a factory importable from the current folder that builds the module."),
        click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="With --model: a state dict file (torch.save(model.state_dict(), path))."),
        click.option("--input-shape", callback=_ints, default=None,
                     help="With --model: per-example input shape, e.g. 3,32,32 or 784 (default: inferred)."),
        click.option("--latent-dim", type=click.IntRange(min=1), default=None,
                     help="With --model: passed to the factory as latent_dim= when it takes one; checked "
                          "against the latent's first axis."),
        click.option("--likelihood", type=click.Choice(["unknown", "gaussian", "bernoulli"]), default=None,
                     help="With --model: what decode's output means (default: unknown)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _source(checkpoint: Path | None, model_target: str | None, weights: Path | None,
            input_shape: tuple[int, ...] | None, latent_dim: int | None, likelihood: str | None,
            *, checkpoint_flag: str = "CHECKPOINT") -> Any:
    """The thing to export or verify: a checkpoint path, or the user's module as an Exportable."""
    if model_target is None:
        extra = [n for n, v in (("--weights", weights), ("--input-shape", input_shape), ("--latent-dim", latent_dim),
                                ("--likelihood", likelihood)) if v is not None]
        if extra:
            raise click.UsageError(f"{', '.join(extra)} only apply with --model")
        return checkpoint
    if checkpoint is not None:
        raise click.UsageError(f"give either {checkpoint_flag} or --model/--weights, not both")
    if weights is None:
        raise click.UsageError("--model needs --weights (a state dict file)")
    from vae_deploy.adapters.user_code import user_exportable

    return user_exportable(model_target, weights, input_shape=input_shape, latent_dim=latent_dim,
                           likelihood=likelihood)


def _precisions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from vae_deploy.errors import ExportError
    from vae_deploy.exporters.variants import parse_precisions

    try:
        return parse_precisions(value)
    except ExportError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_user_model_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("export"), show_default=True)
@click.option("--format", "formats", default="onnx,torchscript", show_default=True, callback=_formats,
              help="Comma-separated: onnx, torchscript.")
@click.option("--opset", type=click.IntRange(min=14), default=18, show_default=True)
@click.option("--precision", "precisions", default="fp32", show_default=True, callback=_precisions,
              help="Comma-separated ONNX variants to write: fp32 (always), fp32-fast (exact CPU rewrite), "
                   "int8, fp16 (for GPUs). E.g. fp32,fp32-fast,int8.")
@click.option("--int8-method", type=click.Choice(["auto", "dynamic", "static"]), default="auto", show_default=True,
              help="auto: static (calibrated) for convolutional graphs, dynamic otherwise.")
@click.option("--strict", is_flag=True,
              help="Fail (writing nothing) if a requested variant fails its parity check, instead of dropping it.")
@click.option("--no-verify", is_flag=True, help="Skip the post-export parity check against the eager model.")
@_friendly_errors
def export(checkpoint: Path | None, model_target: str | None, weights: Path | None, input_shape: tuple[int, ...] | None,
           latent_dim: int | None, likelihood: str | None, out: Path, formats: tuple[str, ...], opset: int,
           precisions: tuple[str, ...], int8_method: str, strict: bool, no_verify: bool) -> None:
    """Export a checkpoint's (or your own VAE's) encoder and decoder (ONNX, TorchScript) with a manifest.

    \b
    vae-deploy export runs/ckpt.pt --out export/
    vae-deploy export runs/ckpt.pt --precision fp32,fp32-fast,int8
    vae-deploy export --model my_vae:build --weights vae.pt --input-shape 784 --out export/
    """
    from vae_deploy.exporters import export as run_export
    from vae_deploy.exporters.fp16 import CPU_NOTE

    if checkpoint is None and model_target is None:
        raise click.UsageError("give a CHECKPOINT, or --model package.module:factory --weights state_dict.pt")
    source = _source(checkpoint, model_target, weights, input_shape, latent_dim, likelihood)
    result = run_export(source, out, formats=formats, opset=opset, verify=not no_verify,
                        precisions=precisions, int8_method=int8_method, strict=strict)
    click.echo(export_table(result.manifest))
    for v in result.variants:
        if v.status == "dropped":
            click.echo(f"dropped {v.precision}: {v.reason}", err=True)
        elif v.status == "not applicable":
            click.echo(f"skipped {v.precision}: {v.reason}", err=True)
        for note in v.notes:
            click.echo(f"note ({v.precision}): {note}", err=True)
    if any(v.precision == "fp16" and v.status == "written" for v in result.variants):
        click.echo(f"note: {CPU_NOTE}", err=True)
    click.echo(f"wrote {result.out_dir}/ in {result.seconds:.1f} s")


def export_table(manifest: dict[str, Any]) -> str:
    """file, size, and the parity measured at export (per backend that reads the file)."""
    parity = manifest.get("parity") or {}
    backends = parity.get("backends", {})
    rows = [f"{'file':<24} {'size':>10}  {'precision':<9} parity vs eager (max abs error; test -ELBO rel diff)"]
    for name, e in manifest["files"].items():
        key = "torchscript" if e["format"] == "torchscript" else "onnxruntime-cpu"
        if e.get("precision", "fp32") != "fp32":
            key = f"{key}-{e['precision']}"
        b = backends.get(key)
        verdict = "not verified" if b is None else f"{'PASS' if b['passed'] else 'FAIL'} ({b['max_abs_error']:.1e}"
        if b is not None:
            elbo = b.get("elbo_rel_diff")
            verdict += f"; {elbo:.1e})" if elbo is not None else ")"
        rows.append(f"{name:<24} {e['size']:>10,d}  {e.get('precision', 'fp32'):<9} {verdict}")
    return "\n".join(rows)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write samples as .npy.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG grid.")
@_friendly_errors
def sample(export_dir: Path, n: int, seed: int | None, provider: str, precision: str, out: Path | None,
           grid: Path | None) -> None:
    """Draw samples from an exported decoder (z ~ N(0, I) in the host)."""
    from vae_deploy.images import save_grid, save_npy
    from vae_deploy.runtime import Runtime

    rt = Runtime.load(export_dir, provider=provider, precision=precision)
    x = rt.sample(n, seed=seed)
    click.echo(f"{n} samples of shape {list(x.shape[1:])} on {rt.provider} ({rt.precision}), "
               f"range [{x.min():.3f}, {x.max():.3f}]")
    if out:
        click.echo(f"samples: {save_npy(out, x)}")
    if grid:
        click.echo(f"grid: {save_grid(grid, x)}")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--sample/--mean", "stochastic", default=False, help="Decode a posterior sample instead of the mean.")
@click.option("--seed", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write .npy.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG: inputs (top rows) over reconstructions.")
@_friendly_errors
def reconstruct(export_dir: Path, inputs: Path, provider: str, stochastic: bool, seed: int | None,
                out: Path | None, grid: Path | None) -> None:
    """Encode and decode the examples in a .npy/.npz file."""
    import numpy as np

    from vae_deploy.data import load_array_file
    from vae_deploy.images import save_grid, save_npy
    from vae_deploy.runtime import Runtime

    rt = Runtime.load(export_dir, provider=provider)
    x = load_array_file(inputs, bernoulli=rt.spec.likelihood == "bernoulli")
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


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference checkpoint (default: the one recorded in the manifest).")
@click.option("--batch-sizes", callback=_ints, default="1,7,64,257", show_default=True)
@click.option("--atol", type=float, default=None, help="Override the precision's absolute tolerance.")
@click.option("--rtol", type=float, default=None, help="Override the precision's relative tolerance.")
@click.option("--backends", default=None, help="Comma-separated subset, e.g. onnx-cpu,torchscript.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("-v", "--verbose", is_flag=True, help="Show every case, not only the extremes and failures.")
@_user_model_options
def verify(export_dir: Path, checkpoint: Path | None, batch_sizes: tuple[int, ...], atol: float | None,
           rtol: float | None, backends: str | None, json_path: Path | None, verbose: bool,
           model_target: str | None, weights: Path | None, input_shape: tuple[int, ...] | None,
           latent_dim: int | None, likelihood: str | None) -> None:
    """Check integrity and parity (eager vs TorchScript vs ONNX); exit 1 on any failure."""
    from vae_deploy.verify import format_verification, verify_export

    try:
        source = _source(checkpoint, model_target, weights, input_shape, latent_dim, likelihood,
                         checkpoint_flag="--checkpoint")
        reference = None if model_target is None else source
        result = verify_export(export_dir, checkpoint=checkpoint, reference=reference, batch_sizes=batch_sizes,
                               atol=atol, rtol=rtol, backends=backends.split(",") if backends else None)
    except VaeDeployError as e:
        raise click.ClickException(str(e)) from None
    click.echo(format_verification(result, verbose=verbose))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"report: {json_path}")
    if not result["passed"]:
        raise SystemExit(1)


def run() -> None:  # pragma: no cover - console entry for `python -m vae_deploy`
    sys.exit(main())


# --- Triton ----------------------------------------------------------------------------------
@main.command("triton-repo")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("triton_repo"),
              show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances per device (instance_group count).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="gpu", show_default=True)
@click.option("--max-delay-us", type=click.IntRange(min=0), default=100, show_default=True,
              help="Dynamic batching: longest a request waits for others to join its batch.")
@click.option("--no-dynamic-batching", is_flag=True, help="Run each request alone.")
@_friendly_errors
def triton_repo(export_dir: Path, out: Path, max_batch: int, instances: int, kind: str, max_delay_us: int,
                no_dynamic_batching: bool) -> None:
    """Write a Triton model repository (ONNX Runtime encoder/decoder, Python sampler)."""
    from vae_deploy.triton import write_triton_repo

    repo = write_triton_repo(export_dir, out, max_batch=max_batch, instances=instances, kind=kind,
                             max_delay_us=max_delay_us, dynamic_batching=not no_dynamic_batching)
    for config in sorted(repo.glob("*/config.pbtxt")):
        click.echo(f"  {config.parent.name:<12} {config}")
    click.echo(f"model repository: {repo}\nrun it: tritonserver --model-repository {repo.resolve()}")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--max-delay-us", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--no-dynamic-batching", is_flag=True, help="Run each request alone (for comparison).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@_friendly_errors
def serve(export_dir: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int,
          max_delay_us: int, no_dynamic_batching: bool, provider: str) -> None:
    """Serve encode, decode and sample on Triton (PyTriton) until Ctrl-C."""
    from vae_deploy.serve import ServeOptions
    from vae_deploy.serve import serve as run_server

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           max_batch=max_batch, max_delay_us=max_delay_us, dynamic_batching=not no_dynamic_batching)

    def ready(server: Any) -> None:
        batching = "off" if no_dynamic_batching else f"on, max delay {max_delay_us} us"
        click.echo(f"serving vae_encoder, vae_decoder, vae_sampler on {server.runtime.provider}: http {server.http_url}, "
                   f"grpc {server.grpc_url} (dynamic batching {batching}, max batch {max_batch})\n"
                   f"Triton log: {server.log_file}\nCtrl-C to stop", err=True)

    run_server(export_dir, options, provider=provider, on_ready=ready)
    click.echo("stopped", err=True)


@main.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@click.option("--backends", default=None,
              help="Comma-separated backends or patterns: eager, torchscript, ort-cpu, ort-cpu-bare, ort-cpu-<precision>, "
                   "ort-cuda, ort-tensorrt (default: every one that runs here).")
@click.option("--batch-sizes", callback=_ints, default=None, help="e.g. 1,8,64,512 (quick: 1,8).")
@click.option("--ops", default="sample,encode", show_default=True, help="sample, encode or both.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"), show_default=True)
@click.option("--quick", is_flag=True, help="Seconds-long smoke run (few rounds, small batches).")
@click.option("--reference-models/--no-reference-models", default=None,
              help="Also measure the seeded reference architectures [default: on; off with --quick].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch and onnxruntime intra-op threads.")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Interleaved timing rounds per cell.")
@click.option("--batcher/--no-batcher", default=True, show_default=True, help="Measure the micro-batcher.")
@_friendly_errors
def bench(
    export_dir: Path | None, backends: str | None, batch_sizes: tuple[int, ...] | None, ops: str, out: Path,
    quick: bool, reference_models: bool | None, threads: int | None, rounds: int | None, batcher: bool,
) -> None:
    """Measure an export folder's backends (and reference models); write report.{md,json} and plots."""
    from vae_deploy.bench import BenchConfig, print_summary, run_benchmark
    from vae_deploy.bench_report import write_report

    cfg = BenchConfig.make(
        quick=quick, batch_sizes=batch_sizes, reference_models=reference_models, threads=threads, rounds=rounds,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
        ops=tuple(o.strip() for o in ops.split(",") if o.strip()), batcher=batcher,
    )
    report = run_benchmark([export_dir] if export_dir else [], cfg, log=lambda s: click.echo(s, err=True))
    paths = write_report(report, out)
    print_summary(report)
    click.echo(f"report: {paths['markdown']} ({report['duration_s']:.0f} s)")
