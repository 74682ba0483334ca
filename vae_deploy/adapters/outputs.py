"""Read what a foreign ``encode``/``decode`` returns as the contract's tensors.

VAEs in the wild return their posterior in several shapes: a ``(mu, logvar)`` tuple (the
classic PyTorch example), a diagonal Gaussian object with ``.mean``/``.logvar`` (diffusers'
``DiagonalGaussianDistribution``), or a wrapper holding one in ``.latent_dist`` (diffusers'
``AutoencoderKLOutput``). Decoders return a tensor or a wrapper with ``.sample``. These
functions unpack every such form at trace time, so the exported graphs hold only tensor
maths, and say precisely what they found when the form is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Mapping keys read as the posterior's mean, and as its spread (with how to get a log-variance).
MEAN_KEYS = ("mu", "mean", "loc", "z_mean")
LOGVAR_KEYS = ("logvar", "log_var", "z_log_var", "log_variance")
STD_KEYS = ("std", "stddev", "sigma", "scale")
VAR_KEYS = ("var", "variance")
WRAPPER_KEYS = ("latent_dist", "posterior", "dist")
#: Attributes/keys holding a deterministic encoder's latent (diffusers' ``AutoencoderTinyOutput.latents``,
#: ``EncoderOutput.latent`` of ``AutoencoderDC``): no spread, the posterior is a point.
LATENT_KEYS = ("latents", "latent")
#: The log-variance a deterministic encoder's graph returns: ``exp(0.5 * logvar)`` is exactly 0 in
#: float32 and float16 (and 7e-218 in float64), so ``mu + exp(0.5 * logvar) * eps == mu`` in every
#: consumer that reparameterises, and ``exp(logvar)`` is 0 even in float64 (KL stays finite).
DETERMINISTIC_LOGVAR = -1000.0
#: Mapping keys read as the decoder's output.
OUTPUT_KEYS = ("sample", "x_hat", "recon", "x_recon", "reconstruction", "mean")

#: What the encoder side accepts, for error messages.
GAUSSIAN_FORMS = ("a (mu, logvar) tuple", "an object with tensor attributes .mean and .logvar",
                  "a Normal-like object with .mean and .stddev, .variance or .scale (torch.distributions.Normal)",
                  f"a mapping with keys {'/'.join(MEAN_KEYS)} and {'/'.join(LOGVAR_KEYS + STD_KEYS + VAR_KEYS)}",
                  "an object or mapping with .latent_dist holding one of these", "a 1-tuple holding one of these")
#: What a deterministic encoder may return (exported with posterior "deterministic").
DETERMINISTIC_FORMS = (f"an object with a tensor attribute {' or '.join('.' + k for k in LATENT_KEYS)} "
                       "(a deterministic encoder: AutoencoderTiny, AutoencoderDC)",
                       f"a mapping with key {'/'.join(LATENT_KEYS)}")
#: What the decoder side accepts.
TENSOR_FORMS = ("a tensor", "an object with a tensor attribute .sample or .mean (a distribution)",
                f"a mapping with one of the keys {'/'.join(OUTPUT_KEYS)}", "a 1-tuple holding a tensor")


class NoFit(Exception):
    """The value has none of the accepted forms; the message says what it was."""


def describe(obj: Any, depth: int = 0) -> str:
    """A short, type-and-shape description of a returned value (for error messages)."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor{list(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    if depth > 2:
        return type(obj).__name__
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(describe(o, depth + 1) for o in obj[:4]) + (", ..." if len(obj) > 4 else "")
        return f"{type(obj).__name__}({inner})"
    if isinstance(obj, Mapping):
        inner = ", ".join(f"{k}={describe(v, depth + 1)}" for k, v in list(obj.items())[:4])
        return f"{type(obj).__name__}({inner})"
    attrs = [a for a in ("latent_dist", "mean", "logvar", "stddev", "variance", "mu", "sample", *LATENT_KEYS) if _has_value(obj, a)]
    if attrs:
        inner = ", ".join(f".{a}={describe(getattr(obj, a), depth + 1)}" for a in attrs)
        return f"{type(obj).__name__}({inner})"
    return type(obj).__name__


def _has_value(obj: Any, name: str) -> bool:
    try:
        value = getattr(obj, name, None)
    except Exception:
        return False
    return value is not None and not callable(value)


def _is_float_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def as_gaussian(out: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(mu, logvar, how)`` from an encoder's output; ``how`` names the form found.

    A standard deviation or a variance becomes a log-variance in the graph (``2 log std``,
    ``log var``): the contract's encoder always returns ``(mu, logvar)``."""
    if isinstance(out, (tuple, list)):
        if len(out) == 2 and all(_is_float_tensor(t) for t in out):
            if out[0].shape != out[1].shape:
                raise NoFit(f"a (mu, logvar) pair of different shapes {list(out[0].shape)} and {list(out[1].shape)}")
            return out[0], out[1], "(mu, logvar)"
        if len(out) == 1:
            mu, logvar, how = as_gaussian(out[0])
            return mu, logvar, f"[0]{how}"
        raise NoFit(describe(out))
    if _has_value(out, "latent_dist"):  # before mappings: diffusers' outputs are both
        mu, logvar, how = as_gaussian(out.latent_dist)
        return mu, logvar, f".latent_dist{how}"
    if isinstance(out, Mapping):
        return _gaussian_from(lambda k: out.get(k), "[{!r}]", out)
    if isinstance(out, torch.Tensor):
        raise NoFit(describe(out))
    return _gaussian_from(lambda k: _get(out, k), ".{}", out)


def _gaussian_from(get: Any, fmt: str, out: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Mean and spread from an object's attributes or a mapping's keys (``fmt`` shows which)."""
    if isinstance(out, Mapping):
        for key in WRAPPER_KEYS:
            if get(key) is not None:
                mu, logvar, how = as_gaussian(get(key))
                return mu, logvar, fmt.format(key) + how
    mean_key = next((k for k in MEAN_KEYS if _is_float_tensor(get(k))), None)
    if mean_key is None:
        raise NoFit(describe(out))
    mu = get(mean_key)
    for keys, to_logvar in ((LOGVAR_KEYS, lambda t: t), (STD_KEYS, lambda t: 2 * torch.log(t)),
                            (VAR_KEYS, torch.log)):
        key = next((k for k in keys if _is_float_tensor(get(k))), None)
        if key is None:
            continue
        spread = get(key)
        if spread.shape != mu.shape:
            try:
                spread = spread.expand_as(mu)  # torch Normal broadcasts a scalar scale
            except RuntimeError:
                raise NoFit(f"{describe(out)}: {mean_key} {list(mu.shape)} and {key} {list(spread.shape)} "
                            "do not broadcast") from None
        how = f"({fmt.format(mean_key)}, {fmt.format(key)})"
        return mu, to_logvar(spread), how if keys is LOGVAR_KEYS else f"{how} -> logvar"
    raise NoFit(describe(out))


def _get(obj: Any, name: str) -> Any:
    try:
        value = getattr(obj, name, None)
    except Exception:  # e.g. a distribution property that is not implemented
        return None
    return None if callable(value) and not isinstance(value, torch.Tensor) else value


def as_latent(out: Any) -> tuple[torch.Tensor, str]:
    """``(z, how)`` from a deterministic encoder's output (``.latents``, ``.latent``, or such a
    key, possibly in a 1-tuple). A bare tensor is not accepted: an encoder returning one tensor
    may be a Gaussian's packed moments, and guessing would export the wrong thing silently."""
    if isinstance(out, (tuple, list)) and len(out) == 1:
        z, how = as_latent(out[0])
        return z, f"[0]{how}"
    if isinstance(out, Mapping):
        key = next((k for k in LATENT_KEYS if _is_float_tensor(out.get(k))), None)
        if key is not None:
            return out[key], f"[{key!r}]"
    for attr in LATENT_KEYS:
        if _is_float_tensor(_get(out, attr)):
            return _get(out, attr), f".{attr}"
    raise NoFit(describe(out))


def deterministic_pair(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract's ``(mu, logvar)`` for a deterministic encoder: ``mu = z`` and a constant
    ``DETERMINISTIC_LOGVAR`` of its shape (a ``ConstantOfShape`` in the graph, no random op)."""
    return z, torch.full_like(z, DETERMINISTIC_LOGVAR)


def as_tensor(out: Any) -> tuple[torch.Tensor, str]:
    """``(x_hat, how)`` from a decoder's output."""
    if _is_float_tensor(out):
        return out, ""
    if isinstance(out, (tuple, list)) and len(out) == 1 and _is_float_tensor(out[0]):
        return out[0], "[0]"
    for attr in ("sample", "mean"):  # before mappings: diffusers' DecoderOutput is both
        if _is_float_tensor(_get(out, attr)):
            return _get(out, attr), f".{attr}"
    if isinstance(out, Mapping):
        key = next((k for k in OUTPUT_KEYS if _is_float_tensor(out.get(k))), None)
        if key is not None:
            return out[key], f"[{key!r}]"
    raise NoFit(describe(out))
