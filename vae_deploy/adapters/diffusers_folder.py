"""Load a latent-diffusion VAE from what its users have on disk: a diffusers model folder.

A model folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or ``.bin``);
a pipeline folder holds one per component, the VAE in ``vae/``. The class is the one
``config.json`` names (``_class_name``: ``AutoencoderKL`` and its relatives), loaded with
``from_pretrained(..., local_files_only=True)``: nothing is fetched from a hub, and a folder
that lacks a file says which, instead of diffusers trying the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vae_deploy.errors import ConfigError

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: A small default example: diffusers VAEs export with dynamic height and width, so the size
#: traced at only sets the cost of tracing and of the export-time checks (``sample_size`` is 512
#: for Stable Diffusion, 1024 for SDXL: minutes and gigabytes on a CPU for nothing).
DEFAULT_EXAMPLE_SIZE = 64


def resolve_folder(path: str | Path, subfolder: str | None = None) -> tuple[Path, str | None]:
    """(root, subfolder) of the model: a pipeline folder without ``subfolder`` means its ``vae/``."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"--diffusers {str(root)!r} is not a folder: expected a diffusers model folder "
                          "(config.json + diffusion_pytorch_model.safetensors) or a pipeline folder holding vae/")
    if subfolder is None and not (root / "config.json").is_file() and (root / "vae" / "config.json").is_file():
        subfolder = "vae"
    folder = root / subfolder if subfolder else root
    if not (folder / "config.json").is_file():
        hint = " (a pipeline folder? pass --subfolder vae)" if (root / "model_index.json").is_file() else ""
        raise ConfigError(f"{str(folder)!r} has no config.json{hint}: expected a diffusers model folder "
                          "(config.json + diffusion_pytorch_model.safetensors); vae-deploy reads local folders only "
                          "(no hub access), so download the model first")
    if not any((folder / n).is_file() for n in WEIGHT_NAMES):
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise ConfigError(f"{str(folder)!r} has config.json but no weights: expected one of {list(WEIGHT_NAMES)}, "
                          f"found {present}; vae-deploy reads local folders only (no hub access)")
    return root, subfolder


def read_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{str(folder / 'config.json')!r} is not readable JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{str(folder / 'config.json')!r} holds a {type(cfg).__name__}, not a JSON object")
    return cfg


def model_class(cfg: dict[str, Any], where: Path) -> Any:
    """The diffusers class ``config.json`` names; only autoencoders are accepted."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("--diffusers needs the diffusers package: pip install 'vae-deploy[byo]'") from None
    name = cfg.get("_class_name")
    family = sorted(n for n in dir(diffusers) if n.startswith(("AutoencoderKL", "AsymmetricAutoencoderKL")))
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not isinstance(cls, type) or "Autoencoder" not in name:
        raise ConfigError(f"{str(where / 'config.json')!r} names class {name!r}; expected a diffusers autoencoder "
                          f"such as {', '.join(family[:6])}")
    return cls


def load_diffusers(path: str | Path, subfolder: str | None = None) -> Any:
    """The model in ``path`` (or ``path/subfolder``), in eval mode, loaded without network access."""
    root, sub = resolve_folder(path, subfolder)
    folder = root / sub if sub else root
    cls = model_class(read_config(folder), folder)
    try:
        # low_cpu_mem_usage=False: without accelerate diffusers falls back to it anyway, with a warning
        model = cls.from_pretrained(str(root), subfolder=sub, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError variants
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"diffusers could not load {cls.__name__} from {str(folder)!r} (local files only, no hub "
                          f"access): {type(e).__name__}: {first}") from None
    return model.eval()


def example_for(model: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """A seeded example batch in diffusers' [-1, 1] range: ``input_shape``, or a small square
    of at most ``DEFAULT_EXAMPLE_SIZE`` (``sample_size`` when smaller)."""
    import torch

    if input_shape is None:
        cfg = getattr(model, "config", None)
        side = min(int(getattr(cfg, "sample_size", None) or DEFAULT_EXAMPLE_SIZE), DEFAULT_EXAMPLE_SIZE)
        input_shape = (int(getattr(cfg, "in_channels", 3)), side, side)
    return torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
