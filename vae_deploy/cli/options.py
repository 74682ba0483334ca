"""Shared click options and callbacks: one parser per kind of argument, one error style."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vae_deploy.errors import VaeDeployError


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one ``Error:`` line and exit status 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VaeDeployError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def ints(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


def formats_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from vae_deploy.exporters import FORMATS

    out = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in out if v not in FORMATS]
    if bad or not out:
        raise click.BadParameter(f"expected a comma-separated subset of {','.join(FORMATS)}, got {value!r}")
    return out


def user_model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--model/--weights/--input-shape: export or verify your own VAE (see export/README.md)."""
    options = [
        click.option("--model", "model_target", default=None, metavar="PACKAGE.MODULE:FACTORY",
                     help="Your own VAE: a factory importable from the current folder that builds the module."),
        click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="With --model: a state dict file (torch.save(model.state_dict(), path), or .safetensors)."),
        click.option("--input-shape", callback=ints, default=None,
                     help="With --model: per-example input shape, e.g. 3,32,32 or 784 (default: inferred)."),
        click.option("--latent-dim", type=click.IntRange(min=1), default=None,
                     help="With --model: passed to the factory as latent_dim= when it takes one; checked "
                          "against the latent's first axis."),
        click.option("--likelihood", type=click.Choice(["unknown", "gaussian", "bernoulli"]), default=None,
                     help="With --model: what decode's output means (default: unknown)."),
        click.option("--diffusers", "diffusers_path", type=click.Path(path_type=Path), default=None,
                     help="A local diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors), or a "
                          "pipeline folder (its vae/ is used). No hub access."),
        click.option("--subfolder", default=None, help="With --diffusers: the VAE's subfolder (e.g. vae)."),
        click.option("--encode-fn", default=None, metavar="NAME",
                     help="With --model/--diffusers: the method (or submodule) that encodes, if not encode/encoder."),
        click.option("--decode-fn", default=None, metavar="NAME",
                     help="With --model/--diffusers: the method (or submodule) that decodes, if not decode/decoder."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def model_source(checkpoint: Path | None, model_target: str | None, weights: Path | None,
                 input_shape: tuple[int, ...] | None, latent_dim: int | None, likelihood: str | None,
                 *, checkpoint_flag: str = "CHECKPOINT", diffusers_path: Path | None = None,
                 subfolder: str | None = None, encode_fn: str | None = None, decode_fn: str | None = None) -> Any:
    """The thing to export or verify: a checkpoint path, or the user's module (``--model`` or
    ``--diffusers``) as an Exportable."""
    if diffusers_path is not None:
        clash = [n for n, v in ((checkpoint_flag, checkpoint), ("--model", model_target), ("--weights", weights),
                                ("--latent-dim", latent_dim)) if v is not None]
        if clash:
            raise click.UsageError(f"--diffusers loads the model and its weights from the folder; drop {', '.join(clash)}")
        from vae_deploy.adapters import from_diffusers

        return from_diffusers(diffusers_path, subfolder, input_shape=input_shape, likelihood=likelihood,
                              encode_fn=encode_fn, decode_fn=decode_fn)
    if subfolder is not None:
        raise click.UsageError("--subfolder only applies with --diffusers")
    if model_target is None:
        extra = [n for n, v in (("--weights", weights), ("--input-shape", input_shape), ("--latent-dim", latent_dim),
                                ("--likelihood", likelihood), ("--encode-fn", encode_fn), ("--decode-fn", decode_fn))
                 if v is not None]
        if extra:
            raise click.UsageError(f"{', '.join(extra)} only apply with --model or --diffusers")
        return checkpoint
    if checkpoint is not None:
        raise click.UsageError(f"give either {checkpoint_flag} or --model/--weights, not both")
    if weights is None:
        raise click.UsageError("--model needs --weights (a state dict file: torch.save or .safetensors)")
    from vae_deploy.adapters.user_code import user_exportable

    return user_exportable(model_target, weights, input_shape=input_shape, latent_dim=latent_dim,
                           likelihood=likelihood, encode_fn=encode_fn, decode_fn=decode_fn)


def precisions_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from vae_deploy.errors import ExportError
    from vae_deploy.exporters.variants import parse_precisions

    try:
        return parse_precisions(value)
    except ExportError as e:
        raise click.BadParameter(str(e)) from None

