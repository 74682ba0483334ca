"""Bring your own VAE: export any module that encodes to a diagonal Gaussian and decodes.

Detection is by probing, not by class: each adapter names where the two halves live
(``encode``/``decode`` methods, or ``encoder``/``decoder`` submodules); the module is run
on the example input and its outputs are unpacked by :mod:`vae_deploy.adapters.outputs`.
The first adapter whose probe yields ``mu``/``logvar`` of one shape and an ``x_hat`` of the
input's shape wins; when none does, the error lists what each one found.

Fully convolutional models (4-D input, spatial latent, e.g. diffusers' ``AutoencoderKL``)
are probed again at twice the height and width: if that works, height and width become
dynamic axes of the export and the latent axes that followed them are marked ``-1``.

Likelihood: a foreign module does not say what ``x_hat`` means, so it is recorded as
``"unknown"`` unless the caller states ``"bernoulli"`` or ``"gaussian"``; parity then compares
the outputs element-wise and skips the ELBO check, which would need a likelihood.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vae_deploy.adapters.families import refuse_class, require_video_input
from vae_deploy.adapters.outputs import (
    DETERMINISTIC_FORMS,
    DETERMINISTIC_LOGVAR,
    GAUSSIAN_FORMS,
    TENSOR_FORMS,
    NoFit,
    as_gaussian,
    as_latent,
    as_tensor,
    describe,
    deterministic_pair,
)
from vae_deploy.errors import ConfigError
from vae_deploy.exporters.spec import DecoderGraph, EncoderGraph, Exportable, ExportSpec
from vae_deploy.images import export_output_range

LIKELIHOODS = ("unknown", "gaussian", "bernoulli")
_SPATIAL_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


@dataclass(frozen=True)
class Adapter:
    """Where a module keeps its two halves."""

    name: str
    encode_attr: str
    decode_attr: str
    description: str

    def halves(self, module: nn.Module) -> tuple[Any, Any]:
        return _resolve(module, self.encode_attr), _resolve(module, self.decode_attr)


def _resolve(obj: Any, dotted: str) -> Any:
    """``obj.a.b`` for ``"a.b"``; None when a step is missing."""
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def named_adapter(encode_fn: str | None, decode_fn: str | None) -> Adapter:
    """The adapter for ``--encode-fn``/``--decode-fn``: methods or submodules by name (dotted
    paths reach into submodules, e.g. ``vae.encode``); an unnamed half keeps ``encode``/``decode``."""
    enc, dec = encode_fn or "encode", decode_fn or "decode"
    for name in (enc, dec):
        if not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"--encode-fn/--decode-fn must be attribute names (e.g. encode_image or vae.encode), "
                              f"got {name!r}")
    return Adapter("named", enc, dec, f"named: {enc}(x) and {dec}(z)")


ADAPTERS = (
    Adapter("encode_decode", "encode", "decode", "methods encode(x) and decode(z)"),
    Adapter("encoder_decoder", "encoder", "decoder", "submodules encoder(x) and decoder(z)"),
)


@dataclass
class Probe:
    """What one adapter found on the example input."""

    adapter: Adapter
    mu: torch.Tensor
    x_hat: torch.Tensor
    encode_form: str
    decode_form: str
    posterior: str = "gaussian"  # or "deterministic": the encoder returns a point, logvar is a constant
    notes: list[str] = field(default_factory=list)


def _run_halves(module: nn.Module, adapter: Adapter, x: torch.Tensor, check_determinism: bool = True) -> Probe:
    """Run encode then decode(mu) through ``adapter``; raises NoFit naming what went wrong."""
    enc, dec = adapter.halves(module)
    call_e, call_d = f"module.{adapter.encode_attr}(x)", f"module.{adapter.decode_attr}(mu)"
    if not callable(enc):
        raise NoFit(_missing(adapter.encode_attr, enc))
    try:
        out = enc(x)
    except Exception as e:
        raise NoFit(f"{call_e} with x {describe(x)} raised {type(e).__name__}: {e}") from None
    mu, logvar, e_form, posterior = _posterior(out, call_e)
    if mu.shape[:1] != x.shape[:1]:
        raise NoFit(f"{call_e} returned mu {describe(mu)} for a batch of {x.shape[0]}: the batch axis must come first")
    if not callable(dec):
        raise NoFit(f"{call_e} gave {e_form} {describe(mu)}, but {_missing(adapter.decode_attr, dec)}")
    try:
        y = dec(mu)
    except Exception as e:
        raise NoFit(f"{call_e} gave mu {describe(mu)}, then {call_d} raised {type(e).__name__}: {e}") from None
    try:
        x_hat, d_form = as_tensor(y)
    except NoFit as e:
        raise NoFit(f"{call_d} returned {e}; expected {', or '.join(TENSOR_FORMS)}") from None
    if x_hat.shape != x.shape:
        raise NoFit(f"{call_d} returned x_hat {describe(x_hat)} for x {describe(x)}: the contract needs "
                    "x_hat of the input's shape")
    again = _posterior(enc(x), call_e)[:2] if check_determinism else (mu, logvar)
    if not (torch.equal(again[0], mu) and torch.equal(again[1], logvar)):
        raise NoFit(f"{call_e} is not deterministic (two calls on the same x differ): it must return the "
                    "posterior's parameters, not a sample; noise is the host's job")
    return Probe(adapter, mu, x_hat, e_form, d_form, posterior=posterior)


def _posterior(out: Any, call_e: str) -> tuple[torch.Tensor, torch.Tensor, str, str]:
    """``(mu, logvar, form, posterior)``: a diagonal Gaussian, else a deterministic encoder's
    latent (``.latents``/``.latent``) with the constant ``DETERMINISTIC_LOGVAR``."""
    try:
        mu, logvar, form = as_gaussian(out)
        return mu, logvar, form, "gaussian"
    except NoFit as e:
        gaussian_error = e
    try:
        z, form = as_latent(out)
    except NoFit:
        raise NoFit(f"{call_e} returned {gaussian_error}; expected "
                    f"{', or '.join(GAUSSIAN_FORMS + DETERMINISTIC_FORMS)}") from None
    mu, logvar = deterministic_pair(z)
    return mu, logvar, form, "deterministic"


def _missing(attr: str, found: Any) -> str:
    return f"module has no callable {attr!r}" + ("" if found is None else f" (it is a {type(found).__name__})")


def detect(module: nn.Module, x: torch.Tensor, adapters: tuple[Adapter, ...] = ADAPTERS) -> Probe:
    """The first adapter that fits ``module`` on ``x``; ConfigError listing every attempt otherwise,
    with the smallest wrapper that would make the module fit."""
    reasons = []
    with torch.no_grad():
        for adapter in adapters:
            try:
                return _run_halves(module, adapter, x)
            except NoFit as e:
                reasons.append(f"  {adapter.name} ({adapter.description}): {e}")
    raise ConfigError(
        f"cannot export a {type(module).__name__}: no adapter fits it on the example input {describe(x)}.\n"
        + "\n".join(reasons)
        + "\nAn exportable VAE provides encode(x) (or an encoder submodule) returning "
        + ", or ".join(GAUSSIAN_FORMS) + "; and decode(z) (or a decoder submodule) returning "
        + ", or ".join(TENSOR_FORMS) + ", of the input's shape (other method names: --encode-fn/--decode-fn).\n"
        + suggest_wrapper(module, adapters[0], x)
    )


def _dynamic_spatial(module: nn.Module, probe: Probe, x: torch.Tensor, wanted: bool | None) -> tuple[int, ...]:
    """Latent axes that follow the input's spatial axes, found by probing at another size.

    Returns () when the export stays fixed-size. ``wanted=None`` (auto) tries it for 4-D
    inputs with a spatial latent and stays fixed-size, with a note, if the probe fails;
    ``wanted=True`` makes a failure an error.
    """
    spatial = x.ndim - 2
    if wanted is False or (wanted is None and not (x.ndim == 4 and probe.mu.ndim == 4)):
        return ()
    if spatial < 1 or spatial > 3:
        raise ConfigError(f"dynamic spatial axes need an input [N, C, *spatial] with 1-3 spatial axes, got {describe(x)}")
    second, big = None, x
    for big in _other_sizes(x[:1]):  # one example: only the shapes matter here
        try:
            with torch.no_grad():
                second = _run_halves(module, probe.adapter, big, check_determinism=False)
            break
        except NoFit as e:
            failure = e
    try:
        if second is None:
            raise failure
        changed = tuple(i for i, (a, b) in enumerate(zip(probe.mu.shape[1:], second.mu.shape[1:])) if a != b)
        if len(changed) != spatial or probe.mu.ndim != second.mu.ndim:
            raise NoFit(f"mu went from {describe(probe.mu)} to {describe(second.mu)}: its axes do not follow the "
                        f"input's {spatial} spatial axes")
    except NoFit as e:
        if wanted:
            raise ConfigError(f"dynamic height/width requested, but the probe at input {describe(big)} failed: {e}") from None
        probe.notes.append(f"fixed spatial size: the probe at input {describe(big)} failed ({e})")
        return ()
    return changed


def _other_sizes(x: torch.Tensor) -> list[torch.Tensor]:
    """``x`` at half its spatial size (when every spatial axis is even and at least 16: the
    cheapest probe, 1/16 of the compute of twice the size for a 2-D image), then at twice it."""
    sizes = []
    if all(d % 2 == 0 and d >= 16 for d in x.shape[2:]):
        sizes.append(x[(slice(None), slice(None), *(slice(0, d // 2) for d in x.shape[2:]))].contiguous())
    big = x
    for axis in range(2, x.ndim):
        big = big.repeat_interleave(2, dim=axis)
    return [*sizes, big]


def _scaling(module: nn.Module) -> tuple[float, float, dict[str, float]]:
    """diffusers-style latent scaling (``config.scaling_factor``, ``config.shift_factor``)."""
    cfg = getattr(module, "config", None)
    found: dict[str, float] = {}
    for key in ("scaling_factor", "shift_factor"):
        value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = float(value)
    return found.get("scaling_factor", 1.0), found.get("shift_factor", 0.0), found


def state_dict_sha256(module: nn.Module) -> str:
    """Digest of the weights (names, dtypes, shapes, bytes in order): identifies the model
    exported whether it came from a file or from memory."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def guess_example_input(module: nn.Module) -> torch.Tensor | None:
    """An example input inferred from the module when the caller gives none: diffusers'
    ``config.in_channels``/``sample_size``, else the first layer's input size."""
    cfg = getattr(module, "config", None)
    get = (cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)) if cfg is not None else None
    if get is not None and isinstance(get("in_channels"), int) and isinstance(get("sample_size"), int):
        # diffusers' autoencoders are fully convolutional and export with dynamic height and
        # width: a small example (at most 64x64) keeps tracing and the export-time checks cheap
        # (sample_size is 512 for Stable Diffusion: probing at 512 and 1024 took minutes and GBs).
        gen = torch.Generator().manual_seed(0)
        if type(module).__module__.startswith("diffusers"):
            side = min(get("sample_size"), 64)
            return torch.rand(2, get("in_channels"), side, side, generator=gen) * 2 - 1  # diffusers' [-1, 1]
        return torch.rand(2, get("in_channels"), get("sample_size"), get("sample_size"), generator=gen)
    first = next((m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if isinstance(first, nn.Linear):
        return torch.rand(2, first.in_features, generator=torch.Generator().manual_seed(0))
    return None


def from_module(
    module: nn.Module,
    example_input: Any = None,
    *,
    likelihood: str | None = None,
    dynamic_spatial: bool | None = None,
    source_path: str = "",
    encode_fn: str | None = None,
    decode_fn: str | None = None,
) -> Exportable:
    """Probe ``module`` and wrap its halves as the contract's two deterministic graphs.

    ``encode_fn``/``decode_fn`` name the halves (methods or submodules) instead of probing the
    usual names."""
    if not isinstance(module, nn.Module):
        raise ConfigError(f"cannot export a {type(module).__name__}: expected a torch.nn.Module")
    lik = likelihood or "unknown"
    if lik not in LIKELIHOODS:
        raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    refuse_class(type(module).__name__)
    module = module.eval()
    if example_input is None:
        require_video_input(module, None)
    x = _example(module, example_input)
    require_video_input(module, x.ndim)
    adapters = (named_adapter(encode_fn, decode_fn),) if encode_fn or decode_fn else ADAPTERS
    probe = detect(module, x, adapters)
    dyn_latent = _dynamic_spatial(module, probe, x, dynamic_spatial)
    spatial_names = _SPATIAL_NAMES.get(x.ndim - 2, ()) if dyn_latent else ()
    input_shape = tuple(x.shape[1:2]) + (-1,) * len(spatial_names) if dyn_latent else tuple(x.shape[1:])
    latent_shape = tuple(-1 if i in dyn_latent else d for i, d in enumerate(probe.mu.shape[1:]))
    scaling_factor, shift_factor, scaling = _scaling(module)
    enc_attr, dec_attr = probe.adapter.encode_attr, probe.adapter.decode_attr
    spec = ExportSpec(
        input_shape=input_shape,
        latent_shape=latent_shape,
        likelihood=lik,
        family=_family(module, probe.adapter),
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        dynamic_axes=("batch", *spatial_names),
        source_sha256=state_dict_sha256(module),
        source_path=source_path,
        config={
            "adapter": probe.adapter.name,
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "encode": f"module.{enc_attr}(x){probe.encode_form}"
                      + (f" (deterministic; logvar = {DETERMINISTIC_LOGVAR:g})" if probe.posterior == "deterministic" else ""),
            "decode": f"module.{dec_attr}(z){probe.decode_form}",
            "likelihood_stated": likelihood is not None,
            **{f"{k}_fn": v for k, v in (("encode", encode_fn), ("decode", decode_fn)) if v},
            **scaling,
            "notes": probe.notes,
        },
        example_input_shape=tuple(x.shape[1:]),
        example_latent_shape=tuple(probe.mu.shape[1:]),
        output_range=export_output_range(lik, _family(module, probe.adapter)),
        posterior=probe.posterior,
    )
    from vae_deploy.adapters.diffusers_folder import with_latent_statistics

    spec = with_latent_statistics(spec, module)  # latents_mean/std, FLUX.2's bn, accepted layouts
    enc, dec = probe.adapter.halves(module)
    if probe.posterior == "deterministic":
        def encode(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return deterministic_pair(as_latent(enc(t))[0])
    else:
        def encode(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return as_gaussian(_unvalidated(enc, t))[:2]
    return Exportable(
        encoder=EncoderGraph(encode, module),
        decoder=DecoderGraph(lambda z: as_tensor(_unvalidated(dec, z))[0], module),
        spec=spec,
        example_x=x,
        example_z=probe.mu.detach().clone(),
        fp32_tolerance=_fp32_tolerance(spec),
    )


def _unvalidated(fn: Any, t: torch.Tensor) -> Any:
    """``fn(t)`` with torch.distributions' argument validation off: a ``Normal`` returned by
    ``encode`` checks its scale with data-dependent branches, which tracers cannot export
    (the values are the same; only the check is skipped)."""
    from torch.distributions import Distribution

    before = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        return fn(t)
    finally:
        Distribution.set_default_validate_args(before)


def _fp32_tolerance(spec: ExportSpec) -> Any:
    """Deep diffusers VAEs get the shared policy's fp32 bound (``tolerance.tolerance_for``);
    every other model keeps the default (None)."""
    from vae_deploy.tolerance import is_deep_family, tolerance_for

    return tolerance_for("fp32", spec.family) if is_deep_family(spec.family) else None


def _example(module: nn.Module, example_input: Any) -> torch.Tensor:
    """The example as float32 with a batch of at least 2 (a batch of 1 would let the tracer
    specialise the batch axis to 1)."""
    if example_input is None:
        x = guess_example_input(module)
        if x is None:
            raise ConfigError(f"cannot infer an input shape for a {type(module).__name__}: pass example_input "
                              "(a batch [N, ...] of typical inputs), or --input-shape on the command line")
        return x
    try:
        x = torch.as_tensor(example_input).detach().to("cpu", torch.float32)
    except Exception as e:
        raise ConfigError(f"example_input must be an array or tensor [N, ...], got {type(example_input).__name__} ({e})") from None
    if x.ndim < 2 or x.shape[0] < 1 or x.numel() == 0:
        raise ConfigError(f"example_input must be a non-empty batch [N, ...] with N >= 1, got shape {list(x.shape)}")
    if x.shape[0] == 1:
        x = torch.cat([x, x])
    return x.contiguous()


def _family(module: nn.Module, adapter: Adapter) -> str:
    """The family recorded in the metadata: the library for known ones, else the adapter."""
    if type(module).__module__.split(".")[0] == "diffusers":
        return f"diffusers.{type(module).__name__}"
    return adapter.name


def suggest_wrapper(module: nn.Module, adapter: Adapter, x: torch.Tensor) -> str:
    """The smallest wrapper that would fit, written against what the module's encode returned."""
    enc, _ = adapter.halves(module)
    unpack = "mu, logvar = out  # adapt: pick the posterior's mean and log-variance from what encode returns"
    if callable(enc):
        try:
            with torch.no_grad():
                out = enc(x)
            unpack = f"mu, logvar = ...  # encode returned {describe(out)}: pick the mean and the log-variance"
            if isinstance(out, (tuple, list)) and len(out) == 3 and all(isinstance(t, torch.Tensor) for t in out):
                unpack = "z, mu, logvar = out  # adapt the order to yours; drop the sample z"
        except Exception:
            pass
    name = type(module).__name__
    return (
        "The smallest wrapper that would work:\n"
        "    class WrappedVAE(torch.nn.Module):\n"
        "        def __init__(self, vae):\n"
        "            super().__init__()\n"
        "            self.vae = vae\n"
        "        def encode(self, x):\n"
        f"            out = self.vae.{adapter.encode_attr}(x)\n"
        f"            {unpack}\n"
        "            return mu, logvar\n"
        "        def decode(self, z):\n"
        f"            return self.vae.{adapter.decode_attr}(z)  # must return a tensor of the input's shape\n"
        f"    vae_deploy.export(WrappedVAE({name.lower()}), ...)"
    )
