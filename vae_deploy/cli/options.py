"""Shared click options and callbacks: one parser per kind of argument, one error style."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vae_deploy.errors import VaeDeployError


def extra_error(e: ModuleNotFoundError, command: str | None) -> click.ClickException | None:
    """The one-line error for a package missing from the lean install (None: not an optional one)."""
    from vae_deploy.extras import missing_extra

    err = missing_extra(e.name or "", command)
    return None if err is None else click.ClickException(str(err))


class FriendlyGroup(click.Group):
    """The ``vae-deploy`` group: a missing optional package anywhere in a command (its option
    callbacks included) becomes one line naming the extra to install, exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            err = extra_error(e, ctx.invoked_subcommand)
            if err is None:
                raise
            raise err from None


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one ``Error:`` line and exit status 1, not a traceback; a
    package missing from the lean install names the extra that provides it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VaeDeployError as e:
            raise click.ClickException(str(e)) from None
        except ModuleNotFoundError as e:
            ctx = click.get_current_context(silent=True)
            err = extra_error(e, ctx.info_name if ctx else None)
            if err is None:
                raise
            raise err from None
        except MemoryError as e:
            raise click.ClickException(f"out of memory ({e or 'allocation failed'}): ask for fewer examples "
                                       "(-n, --batch-sizes) or a smaller model") from None

    return wrapper


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--json PATH``: the machine-readable result; ``--json -`` writes it to standard output."""
    return click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
                        default=None, metavar="PATH",
                        help="Write the result as JSON to PATH ('-': standard output).")(fn)


def write_json(path: Path | None, obj: Any) -> None:
    """Write ``obj`` for ``--json``: to stdout for ``-`` (then the text report went to stderr),
    else atomically to the file, and say where."""
    if path is None:
        return
    import json

    text = json.dumps(obj, indent=2, default=str) + "\n"
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    from vae_deploy.files import atomic_write_bytes

    atomic_write_bytes(path, text.encode())
    click.echo(f"report: {path}", err=True)


def to_stdout(path: Path | None) -> bool:
    """True when ``--json -`` claims standard output: human-readable text goes to stderr."""
    return path is not None and str(path) == "-"
# Batch sizes past this are typos, not workloads: refused before anything is allocated.
MAX_BATCH_SIZE = 1 << 20


def check_writable(path: Path | None, flag: str, *, folder: bool = False) -> None:
    """Fail now, not after a long run, when ``path`` cannot be written: a parent that is a
    file, a folder where a file is expected (or the reverse), or no write permission."""
    if path is None:
        return
    if path.exists():
        if folder != path.is_dir():
            raise click.BadParameter(f"{str(path)!r} is {'a file' if folder else 'a folder'}; expected a "
                                     f"{'folder' if folder else 'file'} path", param_hint=flag)
        if not os.access(path, os.W_OK):
            raise click.BadParameter(f"{str(path)!r} is not writable", param_hint=flag)
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise click.BadParameter(f"cannot create {str(path)!r}: {str(parent)!r} is a file, not a folder",
                                 param_hint=flag)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot create {str(path)!r}: {str(parent)!r} is not writable", param_hint=flag)


def check_memory(nbytes: int, what: str, flag: str | None = None) -> None:
    """Refuse a request whose arrays alone would take more than the machine's memory."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if nbytes > total:
        raise click.BadParameter(f"{what} needs {nbytes / 2**30:.1f} GiB, more than this machine's "
                                 f"{total / 2**30:.1f} GiB of memory", param_hint=flag)


def finite_nonneg(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A tolerance: a finite number >= 0 (click's FloatRange lets NaN through)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"expected a finite number >= 0, got {value!r}")
    return value


def ints(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    if param is not None and param.name in ("batch_sizes",) and max(out) > MAX_BATCH_SIZE:
        raise click.BadParameter(f"batch sizes must be at most {MAX_BATCH_SIZE}, got {max(out)}")
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
                     help="With --model or --diffusers: per-example input shape, e.g. 3,32,32 or 784, or C,T,H,W "
                          "for a video VAE such as 3,5,32,32 (default: inferred)."),
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



def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--engine/--precision/--force-bf16/--tuning-file: what runs the graphs (see Runtime.load)."""
    options = [
        click.option("--engine", type=click.Choice(["onnxruntime", "openvino", "auto"]), default="onnxruntime",
                     show_default=True, help="What runs the ONNX graphs; auto: the fastest variant that passed "
                                             "its accuracy gate here (see `vae-deploy tune`)."),
        click.option("--precision", type=click.Choice(["fp32", "fp32-fast", "int8", "bf16", "fp16", "auto"]),
                     default="fp32", show_default=True,
                     help="Variant to run (bf16: OpenVINO on a CPU with native bf16)."),
        click.option("--force-bf16", is_flag=True, help="Run bf16 even on a CPU without native bf16 (emulated: slow)."),
        click.option("--tuning-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Tuning file for auto (default: $XDG_CACHE_HOME/vae-deploy/tuning.json)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def runtime_kwargs(engine: str, precision: str, force_bf16: bool, tuning_file: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": engine, "precision": precision, "force_bf16": force_bf16}
    if tuning_file is not None:
        out["tuning_file"] = tuning_file
    return out
