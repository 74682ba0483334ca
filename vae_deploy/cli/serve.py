"""`vae-deploy triton-repo` and `vae-deploy serve`: Triton."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vae_deploy.cli.options import (
    BATCH_SIZE,
    DELAY_US,
    INSTANCES,
    PORT,
    budget_options,
    friendly_errors,
    out_folder,
    runtime_kwargs,
)


@click.command("triton-repo")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("triton_repo"), callback=out_folder,
              show_default=True)
@click.option("--max-batch", type=BATCH_SIZE, default=256, show_default=True)
@click.option("--instances", type=INSTANCES, default=1, show_default=True,
              help="Model instances per device (instance_group count).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="gpu", show_default=True)
@click.option("--max-delay-us", type=DELAY_US, default=100, show_default=True,
              help="Dynamic batching: longest a request waits for others to join its batch.")
@click.option("--no-dynamic-batching", is_flag=True, help="Run each request alone.")
@friendly_errors
def triton_repo(export_dir: Path, out: Path, max_batch: int, instances: int, kind: str, max_delay_us: int,
                no_dynamic_batching: bool) -> None:
    """Write a Triton model repository (ONNX Runtime encoder/decoder, Python sampler)."""
    from vae_deploy.serving.triton import write_triton_repo

    repo = write_triton_repo(export_dir, out, max_batch=max_batch, instances=instances, kind=kind,
                             max_delay_us=max_delay_us, dynamic_batching=not no_dynamic_batching)
    for config in sorted(repo.glob("*/config.pbtxt")):
        click.echo(f"  {config.parent.name:<12} {config}")
    click.echo(f"model repository: {repo}\nrun it: tritonserver --model-repository {repo.resolve()}")


@click.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--http-port", type=PORT, default=8000, show_default=True)
@click.option("--grpc-port", type=PORT, default=8001, show_default=True)
@click.option("--metrics-port", type=PORT, default=8002, show_default=True)
@click.option("--max-batch", type=BATCH_SIZE, default=256, show_default=True)
@click.option("--max-delay-us", type=DELAY_US, default=100, show_default=True)
@click.option("--no-dynamic-batching", is_flag=True, help="Run each request alone (for comparison).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--engine", type=click.Choice(["onnxruntime", "openvino", "auto"]), default="onnxruntime",
              show_default=True, help="What runs the graphs (auto: the tuned winner, see `vae-deploy tune`).")
@budget_options
@friendly_errors
def serve(export_dir: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int,
          max_delay_us: int, no_dynamic_batching: bool, provider: str, engine: str, max_error: float | None,
          fp32_only: bool) -> None:
    """Serve encode, decode and sample on Triton (PyTriton) until Ctrl-C."""
    from vae_deploy.serving.serve import ServeOptions
    from vae_deploy.serving.serve import serve as run_server

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           max_batch=max_batch, max_delay_us=max_delay_us, dynamic_batching=not no_dynamic_batching)

    def ready(server: Any) -> None:
        batching = "off" if no_dynamic_batching else f"on, max delay {max_delay_us} us"
        click.echo(f"serving vae_encoder, vae_decoder, vae_sampler on {server.runtime.engine.label}: http {server.http_url}, "
                   f"grpc {server.grpc_url} (dynamic batching {batching}, max batch {max_batch})\n"
                   f"Triton log: {server.log_file} (removed on stop)\nCtrl-C to stop", err=True)

    budget = runtime_kwargs(engine, "fp32", False, None)
    run_server(export_dir, options, provider=provider, engine=engine, on_ready=ready,
               **{k: v for k, v in budget.items() if k in ("max_error", "fp32_only")})
    click.echo("stopped", err=True)
