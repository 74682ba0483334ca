"""Build the user's own model from the command line: ``package.module:factory`` + a state dict.

The factory is imported from the current working directory (put on ``sys.path``), so a
``my_vae.py`` next to the user's weights just works. Weights are read with
``torch.load(weights_only=True)``: a plain ``{name: tensor}`` state dict, nothing pickled that
could run code. Every failure (module not importable, no such factory, not a module, not a
state dict, weights that do not fit) raises a typed error that says which and why.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vae_deploy.errors import CheckpointError, ConfigError
from vae_deploy.training.checkpoint import check_weights_file


def load_factory(target: str) -> Callable[..., Any]:
    """``"package.module:factory"`` (the factory may be dotted: ``module:Class.build``)."""
    mod_name, sep, attr_path = target.partition(":")
    if not sep or not mod_name or not attr_path:
        raise ConfigError(f"--model must look like 'package.module:factory', got {target!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {mod_name!r} (searched the current folder {cwd!r} and sys.path): {e}") from None
    except Exception as e:  # the user's module raised while importing: show what
        raise ConfigError(f"importing {mod_name!r} failed: {type(e).__name__}: {e}") from e
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            raise ConfigError(f"{mod_name!r} has no {attr_path!r}; callables there: {', '.join(public[:20]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{target!r} is a {type(obj).__name__}, not a callable that builds the model")
    return obj


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path`` (``torch.save`` file or ``.safetensors``); names what the
    file holds when it is something else."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weights file {str(p)!r} does not exist")
    check_weights_file(p)
    if p.suffix == ".safetensors":
        return _load_safetensors(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{str(p)!r} is not a weights file torch.load(weights_only=True) can read ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); save the weights with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    hint = ""
    if isinstance(obj, Mapping):
        nested = [k for k, v in obj.items() if isinstance(v, Mapping) and v
                  and all(isinstance(t, torch.Tensor) for t in v.values())]
        if nested:
            hint = f" (it holds a state dict under {nested[0]!r}: save that entry on its own)"
        what = f"a {type(obj).__name__} with keys {list(obj)[:8]}"
    else:
        what = f"a {type(obj).__name__}"
    raise CheckpointError(f"{str(p)!r} holds {what}, not a state dict {{name: tensor}}{hint}; "
                          "save it with torch.save(model.state_dict(), path)")


def _load_safetensors(p: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file: tensors only by construction, nothing that could run code."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{str(p)!r} is a safetensors file: pip install safetensors (or vae-deploy[byo])") from None
    try:
        tensors = load_file(str(p), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{str(p)!r} is not a readable safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not tensors:
        raise CheckpointError(f"{str(p)!r} holds no tensors")
    return dict(tensors)


def load_weights(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights") -> None:
    """``load_state_dict(strict=True)`` after :func:`vae_deploy.adapters.weights.check_fit` (the
    rule ``--diffusers`` folders follow too), with a readable account of what does not fit."""
    from vae_deploy.adapters.weights import check_fit, info_of

    check_fit({k: info_of(v) for k, v in module.state_dict().items()},
              {k: info_of(v) for k, v in state_dict.items()},
              source=source, target=f"{type(module).__name__} the factory built")
    module.load_state_dict(state_dict, strict=True)


def build_user_model(target: str, weights: str | Path, *, latent_dim: int | None = None) -> nn.Module:
    """Import the factory, build the module (passing ``latent_dim`` when the factory takes
    it), load the weights, and return it in eval mode."""
    factory = load_factory(target)
    kwargs: dict[str, Any] = {}
    if latent_dim is not None and _accepts(factory, "latent_dim"):
        kwargs["latent_dim"] = latent_dim
    try:
        module = factory(**kwargs)
    except Exception as e:
        raise ConfigError(f"{target}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
                          f"{type(e).__name__}: {e}") from e
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{target}() returned a {type(module).__name__}; expected a torch.nn.Module")
    load_weights(module, load_state_dict(weights), source=f"weights in {str(weights)!r}")
    return module.eval()


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def user_exportable(
    target: str,
    weights: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    latent_dim: int | None = None,
    likelihood: str | None = None,
    encode_fn: str | None = None,
    decode_fn: str | None = None,
) -> Any:
    """What ``vae-deploy export --model ... --weights ...`` exports: the user's module, probed
    on a seeded uniform [0, 1) example of ``input_shape`` (inferred from the module when None).

    ``latent_dim`` is checked against the probed latent's first per-example axis (its size
    for a flat latent, its channels for a spatial one)."""
    from vae_deploy.adapters import to_exportable

    module = build_user_model(target, weights, latent_dim=latent_dim)
    example = None
    if input_shape is not None:
        example = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    exp = to_exportable(module, example, likelihood=likelihood, source_path=str(Path(weights).resolve()),
                        encode_fn=encode_fn, decode_fn=decode_fn)
    # recorded in the manifest, so `vae-deploy verify DIR` can rebuild the module without --model
    exp.spec.config.update(factory=target, factory_dir=os.getcwd(), factory_latent_dim=latent_dim)
    got = exp.spec.latent_shape[0]
    if latent_dim is not None and got != latent_dim:
        raise ConfigError(f"--latent-dim {latent_dim}, but the module's latent is {list(exp.spec.latent_shape)} "
                          f"(first axis {got})")
    return exp

