"""Load a latent-diffusion VAE from what its users have on disk: a diffusers model folder.

A model folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or ``.bin``);
a pipeline folder holds one per component, the VAE in ``vae/``. The class is the one
``config.json`` names (``_class_name``: ``AutoencoderKL`` and its relatives). Nothing is fetched
from a hub, and a folder that lacks a file says which.

Loading cannot lie: diffusers' ``from_pretrained`` warns about missing tensors and goes on with
uninitialised memory, ignores extra ones and casts integer tensors. Here, in this order and before
anything large is allocated:

1. ``config.json`` and the weights file must be regular files that resolve inside the folder (a
   Hugging Face cache snapshot's links into its own ``blobs/`` are inside), within size limits;
2. the weights' names, shapes and dtypes are read without their data (a safetensors header; a
   ``.bin`` only through ``torch.load(weights_only=True, mmap=True)``);
3. the model is built from the config on the meta device, stopped as soon as it defines clearly
   more than the file holds (a ``layers_per_block: 100000`` is refused in milliseconds), and must
   match the file exactly (:func:`vae_deploy.adapters.weights.check_fit`, the ``--model`` rule);
4. its size is compared with the memory available; only then is it built and loaded, strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vae_deploy.adapters.weights import TensorInfo, check_fit, info_from_safetensors, info_of
from vae_deploy.errors import CheckpointError, ConfigError, VaeDeployError

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
    if not any((folder / n).exists() for n in WEIGHT_NAMES):
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise ConfigError(f"{str(folder)!r} has config.json but no weights: expected one of {list(WEIGHT_NAMES)}, "
                          f"found {present}; vae-deploy reads local folders only (no hub access)")
    return root, subfolder


def _inside(folder: Path, name: str, kind: str) -> Path:
    """``folder / name`` resolved, if it stays inside ``folder`` (or, for a Hugging Face cache
    snapshot ``.../snapshots/<rev>/...``, inside that cache entry's ``blobs/``), as a regular file
    within the size limit for ``kind``; else one line saying where it points."""
    from vae_deploy.files import check_user_file

    path = folder / name
    root, target = folder.resolve(), path.resolve()
    allowed = [root]
    parts = root.parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        allowed.append(Path(*parts[:i]) / "blobs")
    if not any(a in target.parents for a in allowed):
        raise ConfigError(f"{kind} {str(path)!r} resolves to {str(target)!r}, outside the model folder "
                          f"{str(root)!r} (a symlink out?): expected the folder's own files")
    try:
        return check_user_file(target, kind)
    except FileNotFoundError:
        raise ConfigError(f"{kind} {str(path)!r} does not exist (a dangling symlink?)") from None
    except VaeDeployError as e:
        raise ConfigError(str(e)) from None


def read_config(folder: Path) -> dict[str, Any]:
    from vae_deploy.files import read_user_text

    path = _inside(folder, "config.json", "config")
    try:
        cfg = json.loads(read_user_text(path, "config"))
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


def weights_file(folder: Path) -> Path:
    """The folder's weights file (safetensors first), checked by :func:`_inside`."""
    name = next(n for n in WEIGHT_NAMES if (folder / n).exists() or (folder / n).is_symlink())
    _inside(folder, name, "weights")
    return folder / name  # its name says the format (a cache blob's target has no suffix)


def read_weights_index(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Any] | None]:
    """Names, shapes and dtypes in a weights file without loading a safetensors file's data;
    a ``.bin`` is memory-mapped through ``torch.load(weights_only=True)`` (no code runs), and its
    tensors are returned for reuse."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                index = {}
                for k in f.keys():
                    sl = f.get_slice(k)
                    index[k] = info_from_safetensors(sl.get_dtype(), sl.get_shape())
        except Exception as e:
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({type(e).__name__}: "
                                  f"{_first_line(e)})") from None
        return index, None
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{str(path)!r} is not a weights file torch.load(weights_only=True) can read "
                              f"({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict {{name: tensor}}")
    return {k: info_of(v) for k, v in obj.items()}, obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


class _TooBig(Exception):
    """Raised inside the meta build once the model defines clearly more than the file holds."""


def _budget_mode(max_tensors: int, max_elements: int) -> Any:
    """A torch function mode that puts every new tensor on the meta device and stops the build
    (``_TooBig``) past ``max_tensors`` tensors or ``max_elements`` elements: a config that asks for
    a million layers would otherwise spend minutes and gigabytes on module objects alone."""
    import torch
    from torch.overrides import TorchFunctionMode

    try:
        from torch.utils._device import _device_constructors  # the factory functions torch.device() redirects
    except ImportError:  # a torch without it: the meta build still allocates nothing, only unbudgeted
        return torch.device("meta")
    constructors = _device_constructors()

    class Budget(TorchFunctionMode):
        tensors = 0
        elements = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = dict(kwargs or {})
            if func not in constructors:
                return func(*args, **kwargs)
            kwargs["device"] = torch.device("meta")
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                self.tensors += 1
                self.elements += out.numel()
                if self.tensors > max_tensors or self.elements > max_elements:
                    raise _TooBig(f"{self.tensors} tensors, {self.elements:,} elements")
            return out

    return Budget()


def build_on_meta(cls: Any, cfg: dict[str, Any], index: dict[str, TensorInfo], where: Path) -> Any:
    """The model ``cfg`` describes, on the meta device (no memory for weights), refused as soon
    as it outgrows the weights file by far."""
    n_file = len(index)
    e_file = sum(i.numel for i in index.values())
    mode = _budget_mode(max_tensors=2 * n_file + 256, max_elements=2 * e_file + (1 << 20))
    try:
        with mode:
            return cls.from_config(cfg)
    except _TooBig as e:
        raise ConfigError(f"{str(where / 'config.json')!r} describes a far larger {cls.__name__} than the weights "
                          f"file holds ({n_file} tensors, {e_file:,} elements): building it was stopped at {e}; "
                          "the config and the weights do not belong together") from None
    except VaeDeployError:
        raise
    except Exception as e:
        raise ConfigError(f"{cls.__name__}.from_config could not build {str(where / 'config.json')!r}: "
                          f"{type(e).__name__}: {_first_line(e)}") from None


def available_memory() -> int:
    """Bytes this process can still allocate without swapping (MemAvailable; 0 if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(model_bytes: int, file_bytes: int, where: Path) -> None:
    """Loading holds the float32 model and the file's tensors at once: refuse before allocating
    when that exceeds the memory available."""
    need, have = model_bytes + file_bytes, available_memory()
    if have and need > have:
        raise ConfigError(f"loading {str(where)!r} needs about {need / 2**30:.1f} GiB (model {model_bytes / 2**30:.1f} "
                          f"GiB in float32 + weights file {file_bytes / 2**30:.1f} GiB); this machine has "
                          f"{have / 2**30:.1f} GiB available")


def load_diffusers(path: str | Path, subfolder: str | None = None) -> Any:
    """The model in ``path`` (or ``path/subfolder``), in eval mode, its weights exactly the file's
    (see the module docstring for the checks, all made before the model is allocated)."""
    import torch

    root, sub = resolve_folder(path, subfolder)
    folder = root / sub if sub else root
    cfg = read_config(folder)
    cls = model_class(cfg, folder)
    wfile = weights_file(folder)
    index, tensors = read_weights_index(wfile)
    meta = build_on_meta(cls, cfg, index, folder)
    expected = {k: info_of(v) for k, v in meta.state_dict().items()}
    check_fit(expected, _fix_keys(meta, index), source=f"weights in {str(wfile)!r}",
              target=f"{cls.__name__} that {str(folder / 'config.json')!r} describes")
    check_memory(sum(i.numel for i in expected.values()) * 4, wfile.stat().st_size, folder)
    if tensors is None:
        from safetensors.torch import load_file

        tensors = load_file(str(wfile), device="cpu")
    tensors = _fix_keys(meta, tensors)
    del meta
    try:
        model = cls.from_config(cfg)
        model.load_state_dict(tensors, strict=True)
    except Exception as e:
        raise ConfigError(f"loading {cls.__name__} from {str(folder)!r} failed after its weights were checked: "
                          f"{type(e).__name__}: {_first_line(e)}") from None
    return model.to(torch.float32).eval()


def _fix_keys(meta: Any, entries: dict[str, Any]) -> dict[str, Any]:
    """diffusers' renaming of old attention-block names (``query`` -> ``to_q``, ...), which its own
    loader applies too, so that old checkpoints load exactly as they do in diffusers."""
    fix = getattr(meta, "_fix_state_dict_keys_on_load", None)
    return fix(dict(entries)) if callable(fix) else dict(entries)


def example_for(model: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """A seeded example batch in diffusers' [-1, 1] range: ``input_shape``, or a small square
    of at most ``DEFAULT_EXAMPLE_SIZE`` (``sample_size`` when smaller)."""
    import torch

    if input_shape is None:
        cfg = getattr(model, "config", None)
        side = min(int(getattr(cfg, "sample_size", None) or DEFAULT_EXAMPLE_SIZE), DEFAULT_EXAMPLE_SIZE)
        input_shape = (int(getattr(cfg, "in_channels", 3)), side, side)
    return torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1


def latent_statistics(module: Any) -> dict[str, tuple[float, ...]]:
    """The per-channel statistics a diffusers pipeline applies to this VAE's latents:
    FLUX.2's BatchNorm ``bn`` (``running_mean``, ``sqrt(running_var + config.batch_norm_eps)``,
    computed in float32 as ``Flux2Pipeline`` does), else ``config.latents_mean/latents_std`` when
    both are declared (SDXL's and Wan's pipelines use them only then). Empty when none."""
    import torch

    cfg = getattr(module, "config", None)
    get = (cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)) if cfg is not None else None
    bn = getattr(module, "bn", None)
    if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
        eps = get("batch_norm_eps") if get else None
        eps = float(eps) if isinstance(eps, (int, float)) else float(bn.eps)
        with torch.no_grad():
            std = torch.sqrt(bn.running_var.float().view(-1) + eps)
        return {"latents_mean": tuple(float(v) for v in bn.running_mean.float().view(-1)),
                "latents_std": tuple(float(v) for v in std)}
    mean, std = (get("latents_mean"), get("latents_std")) if get else (None, None)
    if mean is None or std is None:
        return {}
    try:
        return {"latents_mean": tuple(float(v) for v in mean), "latents_std": tuple(float(v) for v in std)}
    except (TypeError, ValueError):
        raise ConfigError(f"config latents_mean/latents_std must be lists of numbers, got {mean!r} and {std!r}") from None


def with_latent_statistics(spec: Any, module: Any) -> Any:
    """``spec`` with the VAE's latent statistics and the latent layouts it accepts recorded
    (:mod:`vae_deploy.runtime.latents`); statistics that do not fit the latent are refused here, at export."""
    from dataclasses import replace

    from vae_deploy.errors import ArtifactError
    from vae_deploy.runtime.latents import accepted_layouts

    spec = replace(spec, **latent_statistics(module), latent_layouts=())
    try:
        return replace(spec, latent_layouts=accepted_layouts(spec))
    except ArtifactError as e:
        raise ConfigError(f"{type(module).__name__}: {e}") from None
