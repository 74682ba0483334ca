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

#: What the encoder side accepts, for error messages.
GAUSSIAN_FORMS = ("a (mu, logvar) tuple", "an object with tensor attributes .mean and .logvar",
                  "an object with .latent_dist holding one of these", "a 1-tuple holding one of these")
#: What the decoder side accepts.
TENSOR_FORMS = ("a tensor", "an object with a tensor attribute .sample", "a 1-tuple holding a tensor")


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
    attrs = [a for a in ("latent_dist", "mean", "logvar", "mu", "sample") if _has_value(obj, a)]
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
    """``(mu, logvar, how)`` from an encoder's output; ``how`` names the form found."""
    if isinstance(out, (tuple, list)):
        if len(out) == 2 and all(_is_float_tensor(t) for t in out):
            if out[0].shape != out[1].shape:
                raise NoFit(f"a (mu, logvar) pair of different shapes {list(out[0].shape)} and {list(out[1].shape)}")
            return out[0], out[1], "(mu, logvar)"
        if len(out) == 1:
            mu, logvar, how = as_gaussian(out[0])
            return mu, logvar, f"[0]{how}"
        raise NoFit(describe(out))
    if _has_value(out, "latent_dist"):
        mu, logvar, how = as_gaussian(out.latent_dist)
        return mu, logvar, f".latent_dist{how}"
    mean = getattr(out, "mean", None) if not isinstance(out, torch.Tensor) else None
    if _is_float_tensor(mean) and _is_float_tensor(getattr(out, "logvar", None)):
        return mean, out.logvar, "(.mean, .logvar)"
    raise NoFit(describe(out))


def as_tensor(out: Any) -> tuple[torch.Tensor, str]:
    """``(x_hat, how)`` from a decoder's output."""
    if _is_float_tensor(out):
        return out, ""
    if isinstance(out, (tuple, list)) and len(out) == 1 and _is_float_tensor(out[0]):
        return out[0], "[0]"
    if _is_float_tensor(getattr(out, "sample", None)):
        return out.sample, ".sample"
    raise NoFit(describe(out))
