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
from vae_deploy.limits import max_threads


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
        except OSError as e:  # the disk filled, a file vanished, permission lost mid-run: one line
            where = f" ({e.filename!r})" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None
        except MemoryError as e:
            raise click.ClickException(f"out of memory ({e or 'allocation failed'}): ask for fewer examples "
                                       "(-n, --batch-sizes) or a smaller model") from None

    return wrapper


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--json PATH``: the machine-readable result; ``--json -`` writes it to standard output."""
    return click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
                        default=None, metavar="PATH", callback=out_file,
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


# --- numeric option types: one per kind of number, shared by every command ---------------------
# Each range is enforced by click's parser (a usage error, exit 2) and shown in --help.


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinities (its comparisons let NaN pass)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


MAX_SEED = 2**63 - 1
THREADS = click.IntRange(1, max_threads())  # 4 per core, at most 256
SEED = click.IntRange(0, MAX_SEED)
BATCH_SIZE = click.IntRange(1, MAX_BATCH_SIZE)
PORT = click.IntRange(1, 65535)
ROUNDS = click.IntRange(1, 10_000)
SAMPLES = click.IntRange(1, 1 << 40)  # batch sample -n: shards are written as they come
SHARD_ROWS = click.IntRange(1, 1 << 24)
TILE = click.IntRange(1, 1 << 16)
WORKERS = click.IntRange(1, 4096)
LATENT_DIM = click.IntRange(1, 1 << 16)
EPOCHS = click.IntRange(1, 1_000_000)
INSTANCES = click.IntRange(1, 256)
DELAY_US = click.IntRange(0, 10_000_000)  # micro-batcher queue delay: at most 10 s
SECONDS = FiniteFloatRange(0, 86_400, min_open=True)  # a time budget: at most a day


def check_writable(path: Path | None, flag: str, *, folder: bool = False) -> None:
    """Fail now, not after a long run, when ``path`` cannot be written: a parent that is a
    file, a folder where a file is expected (or the reverse), a name too long, or a place where
    nothing can be created (probed by creating and removing a file in the nearest existing
    folder: ``os.access`` says yes to root on read-only places such as /proc)."""
    if path is None or str(path) == "-":
        return
    import errno

    def bad(why: str) -> click.BadParameter:
        return click.BadParameter(why, param_hint=flag)

    long_part = next((part for part in path.parts if len(os.fsencode(part)) > 255), None)
    if long_part is not None:
        raise bad(f"cannot create {str(path)!r}: {os.strerror(errno.ENAMETOOLONG)} ({len(long_part)} characters "
                  "in one name; at most 255)")
    try:
        exists = path.exists()
    except OSError as e:  # ENAMETOOLONG, ELOOP, ...
        raise bad(f"cannot use {str(path)!r}: {e.strerror}") from None
    if exists:
        if folder != path.is_dir():
            raise bad(f"{str(path)!r} is {'a file' if folder else 'a folder'}; expected a "
                      f"{'folder' if folder else 'file'} path")
        if not os.access(path, os.W_OK):
            raise bad(f"{str(path)!r} is not writable")
        if folder:
            _probe(path, path, bad)
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise bad(f"cannot create {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise bad(f"cannot create {str(path)!r}: {str(parent)!r} is not writable")
    _probe(parent, path, bad)


def _probe(where: Path, target: Path, bad: Callable[[str], click.BadParameter]) -> None:
    """Create and remove a hidden file in ``where``: the one test of writability that root's
    ``os.access`` cannot fool."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".vae-deploy-probe-", dir=where)
    except OSError as e:
        raise bad(f"cannot create {str(target)!r}: nothing can be created in {str(where)!r} "
                  f"({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def out_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Callback for an output file option (``--out``, ``--grid``, ``--json``; '-' passes): checked
    while the command line is parsed, before any work."""
    check_writable(value, _flag(param))
    return value


def out_folder(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Callback for an output folder option: checked while the command line is parsed."""
    check_writable(value, _flag(param), folder=True)
    return value


def _flag(param: click.Parameter) -> str:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return opts[0] if opts else (param.name or "?")


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
    if max(out) > 1 << 20:  # a width, size or batch past this is a typo: refused before any allocation
        raise click.BadParameter(f"expected integers of at most {1 << 20}, got {max(out)}")
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
        click.option("--latent-dim", type=LATENT_DIM, default=None,
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
        click.option("--precision", type=click.Choice(["fp32", "fp32-fast", "int8", "bf16", "fp16", "fp32-winograd", "auto"]),
                     default="fp32", show_default=True,
                     help="Variant to run (bf16: OpenVINO on a CPU with native bf16)."),
        click.option("--force-bf16", is_flag=True, help="Run bf16 even on a CPU without native bf16 (emulated: slow)."),
        click.option("--tuning-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Tuning file for auto (default: $XDG_CACHE_HOME/vae-deploy/tuning.json)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return _budget_for_runtime(fn)


def _budget_for_runtime(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``budget_options`` to a command that opens a Runtime; its values reach
    ``runtime_kwargs`` through ``ctx.meta``, so the command's signature does not change."""

    @functools.wraps(fn)
    def wrapper(*args: Any, max_error: float | None = None, fp32_only: bool = False, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return budget_options(wrapper)


def runtime_kwargs(engine: str, precision: str, force_bf16: bool, tuning_file: Path | None,
                   latent_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Runtime.load's engine arguments; with ``auto``, the budget options (``budget_options``) and
    the latent shape about to be decoded, so auto picks the record for that budget and size."""
    out: dict[str, Any] = {"engine": engine, "precision": precision, "force_bf16": force_bf16}
    if tuning_file is not None:
        out["tuning_file"] = tuning_file
    ctx = click.get_current_context(silent=True)
    budget = (ctx.meta.get(BUDGET_META) if ctx is not None else None) or {}
    if "auto" in (engine, precision):
        out.update(budget)
        if latent_shape is not None:
            out["latent_shape"] = latent_shape
    elif budget:
        raise click.UsageError("--max-error/--fp32-only are the accuracy budget of --engine/--precision auto")
    return out


def latent_layout_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--latent-layout`` and ``--image-size``: how a pipeline's latents are arranged (see
    :mod:`vae_deploy.runtime.latents`)."""
    from vae_deploy.runtime.latents import LAYOUTS

    def size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
        from vae_deploy.errors import InputError
        from vae_deploy.runtime.latents import parse_image_size

        try:
            return parse_image_size(value)
        except InputError as e:
            raise click.BadParameter(str(e)) from None

    for option in reversed([
        click.option("--latent-layout", type=click.Choice(list(LAYOUTS)), default="spatial", show_default=True,
                     help="How the latents are arranged: spatial [N, C, h, w], flux-packed (FLUX.1), "
                          "flux2-packed / flux2-patchified (FLUX.2)."),
        click.option("--image-size", callback=size, default=None, metavar="HxW",
                     help="Packed latents: the image size in pixels given to the pipeline (default: square)."),
    ]):
        fn = option(fn)
    return fn


def latent_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--latents`` plus :func:`latent_layout_options`: a diffusion pipeline's latents as it hands
    them out, for every command that decodes stored latents."""
    from vae_deploy.runtime.latents import SCALES

    fn = latent_layout_options(fn)
    return click.option(
        "--latents", "latents", type=click.Choice(list(SCALES)), default="raw", show_default=True,
        help="raw: the VAE's own latents; scaled: a pipeline's (output_type='latent'), normalised as the matching "
             "diffusers pipeline does (scaling/shift factor, latents_mean/std, FLUX.2 bn).")(fn)


BUDGET_META = "vae_deploy.auto_budget"


def _stash_budget(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Validate a budget option and keep it in ``ctx.meta`` for :func:`runtime_kwargs`."""
    if param.name == "max_error":
        value = finite_nonneg(ctx, param, value)
    if value not in (None, False):
        budget = ctx.meta.setdefault(BUDGET_META, {})
        budget[param.name] = value
        if len(budget) > 1:
            raise click.UsageError("give --max-error or --fp32-only, not both")
    return value


def budget_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--max-error/--fp32-only: the accuracy budget of ``tune`` and of ``--engine auto`` (the same
    rule, ``tolerance.budget_accepts``; the tuning file keeps one record per budget)."""
    options = [
        click.option("--max-error", type=FiniteFloatRange(min=0), default=None, callback=_stash_budget,
                     help="Accuracy budget: any variant (int8 included) whose max abs decoder error vs fp32 is "
                          "at most this. Default budget: exact variants, and bf16/fp16 within 2% of the output "
                          "range and 1 level of 8 bits (see docs/tune.md)."),
        click.option("--fp32-only", is_flag=True, callback=_stash_budget,
                     help="Accuracy budget: exact variants only (fp32, fp32-fast, or within the fp32 tolerance)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
