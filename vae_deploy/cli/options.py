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


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one ``Error:`` line and exit status 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VaeDeployError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError as e:
            raise click.ClickException(f"out of memory ({e or 'allocation failed'}): ask for fewer examples "
                                       "(-n, --batch-sizes) or a smaller model") from None

    return wrapper


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
                     help="With --model: a state dict file (torch.save(model.state_dict(), path))."),
        click.option("--input-shape", callback=ints, default=None,
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


def model_source(checkpoint: Path | None, model_target: str | None, weights: Path | None,
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


def precisions_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from vae_deploy.errors import ExportError
    from vae_deploy.exporters.variants import parse_precisions

    try:
        return parse_precisions(value)
    except ExportError as e:
        raise click.BadParameter(str(e)) from None

