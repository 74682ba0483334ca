"""The models a run measures: existing export folders and the seeded reference architectures
(exported once into a cache keyed by their config)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError

# Reference architectures: random (seeded) weights, so any machine can rebuild them. Names are
# stable: they appear in report.json, pytest ids and the targets.
REFERENCE_MODELS: dict[str, dict[str, Any]] = {
    # decoder 16 -> 256 -> 512 -> 784 (the MLP decoder mirrors the encoder widths 784 -> 512 -> 256)
    "ref-mlp28": {
        "config": {"family": "mlp", "input_shape": [1, 28, 28], "latent_dim": 16, "hidden": [512, 256]},
        "description": "MLP 28x28x1, latent 16; decoder 16->256->512->784 (ReLU), sigmoid",
    },
    # decoder 16 -> Linear 3136 (64x7x7) -> ConvT 64->32 (14x14) -> ConvT 32->1 (28x28), 4x4 kernels stride 2
    "ref-conv28": {
        "config": {"family": "conv", "input_shape": [1, 28, 28], "latent_dim": 16, "hidden": [32, 64]},
        "description": "conv 28x28x1, latent 16; decoder 16->Linear 64x7x7->ConvT 32@14x14->ConvT 1@28x28",
    },
    # decoder 128 -> Linear 16384 (64x16x16) -> ConvT 64->32 (32x32) -> ConvT 32->3 (64x64)
    "ref-conv64": {
        "config": {"family": "conv", "input_shape": [3, 64, 64], "latent_dim": 128, "hidden": [32, 64]},
        "description": "conv 64x64x3, latent 128; decoder 128->Linear 64x16x16->ConvT 32@32x32->ConvT 3@64x64",
    },
}


REFERENCE_SEED = 0
# Every CPU precision variant, each behind its own parity gate at export, so that the bench's
# `auto` row (and `vae-deploy tune`) choose among all of them, as on a user's export.
REFERENCE_PRECISIONS = ("fp32", "fp32-fast", "int8")


@dataclass
class BenchModel:
    name: str
    folder: Path
    description: str
    kind: str  # "export" | "reference"
    manifest: dict[str, Any]
    eager: Any = None  # (encoder module, decoder module) for the eager baseline, or None
    eager_note: str = ""
    flops: dict[str, float | None] = field(default_factory=dict)
    ops: tuple[str, ...] | None = None  # None: the run's ops (the SD model only decodes)
    batch_sizes: tuple[int, ...] | None = None  # None: the run's batch sizes
    latent_shape: tuple[int, ...] | None = None  # sampling's latent (dynamic exports at another size)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vae-deploy" / "bench-models"


def reference_model(name: str) -> Any:
    """The seeded reference VAE ``name`` (see ``REFERENCE_MODELS``)."""
    import torch

    from vae_deploy.training.model import VAE, VAEConfig

    if name not in REFERENCE_MODELS:
        raise ConfigError(f"unknown reference model {name!r}; expected one of {sorted(REFERENCE_MODELS)}")
    torch.manual_seed(REFERENCE_SEED)
    return VAE(VAEConfig.from_dict(dict(REFERENCE_MODELS[name]["config"]))).eval()


def _reference_folder(name: str, cache_dir: Path) -> Path:
    import onnxruntime as ort
    import torch

    from vae_deploy import __version__

    key = json.dumps([REFERENCE_MODELS[name]["config"], REFERENCE_SEED, REFERENCE_PRECISIONS, torch.__version__,
                      ort.__version__, __version__], sort_keys=True)
    return cache_dir / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cached_export(folder: Path, do_export: Callable[[], Any], log: Callable[[str], None] | None,
                  message: str) -> dict[str, Any]:
    """The manifest of ``folder`` when it holds an intact export, else export into it first
    (``export`` is atomic, so a killed run leaves no half-written cache entry)."""
    from vae_deploy.exporters.manifest import load_manifest

    if (folder / "manifest.json").is_file():
        try:
            return load_manifest(folder, verify=True)
        except Exception:
            pass
    if log:
        log(message)
    do_export()
    return load_manifest(folder, verify=True)


def prepare_reference(name: str, cache_dir: Path, log: Callable[[str], None] | None = None) -> BenchModel:
    """Export the reference model once into the cache (atomic; reused when present)."""
    from vae_deploy.adapters import from_vae
    from vae_deploy.exporters import export

    model = reference_model(name)
    folder = _reference_folder(name, cache_dir)
    manifest = cached_export(folder, lambda: export(model, folder, verify=False, precisions=REFERENCE_PRECISIONS),
                             log, f"exporting reference model {name} into {folder}")
    ex = from_vae(model)
    return BenchModel(name=name, folder=folder, description=REFERENCE_MODELS[name]["description"],
                      kind="reference", manifest=manifest, eager=(ex.encoder, ex.decoder),
                      eager_note="the same seeded random weights as the export")


def prepare_export(folder: str | Path, name: str | None = None) -> BenchModel:
    """An existing export folder. The eager baseline is rebuilt from the source checkpoint when
    it is still there (and its sha256 matches), else from the manifest's config with random
    weights (same architecture, same cost), else it is skipped."""
    from vae_deploy.exporters.manifest import load_manifest

    folder = Path(folder)
    manifest = load_manifest(folder, verify=True)
    m = manifest["model"]
    name = name or folder.resolve().name
    dims = "x".join(str(d) if d > 0 else "?" for d in m["input_shape"])
    latent = "x".join(str(d) if d > 0 else "?" for d in m["latent_shape"])
    desc = f"{m.get('family', '?')} {dims}, latent {latent}"
    eager, note = None, ""
    src = manifest.get("source") or {}
    try:
        from vae_deploy.adapters import from_checkpoint, from_vae
        from vae_deploy.training.checkpoint import load_checkpoint

        path = src.get("path")
        candidates = [Path(path)] if path else []
        if path and not Path(path).is_absolute():
            candidates.append(folder.parent / path)
        ckpt_path = next((p for p in candidates if p.is_file()), None)
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path)
            if src.get("sha256") and ckpt.sha256 != src["sha256"]:
                raise ValueError("checkpoint changed since export")
            ex = from_checkpoint(ckpt)
            eager, note = (ex.encoder, ex.decoder), f"checkpoint {ckpt_path}"
        elif m.get("config") and m.get("family") in ("mlp", "conv") and "adapter" not in m["config"]:
            import torch

            from vae_deploy.training.model import VAE, VAEConfig

            torch.manual_seed(0)
            ex = from_vae(VAE(VAEConfig.from_dict(dict(m["config"]))))
            eager = (ex.encoder, ex.decoder)
            note = "checkpoint not found: same architecture with random weights (same cost)"
        elif m.get("config"):
            note = (f"no eager baseline: a {m.get('family')} model's source module is not part of the export "
                    "(speed-ups are left out)")
        else:
            note = "no checkpoint and no config in the manifest: no eager baseline"
    except Exception as e:
        note = f"eager baseline unavailable: {type(e).__name__}: {e}"
        eager = None
    return BenchModel(name=name, folder=folder, description=desc, kind="export", manifest=manifest,
                      eager=eager, eager_note=note)


def example_shapes(manifest: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input, latent) per-example shapes the harness feeds: the export's recorded example
    shapes where axes are dynamic (16 when none is recorded)."""
    m = manifest["model"]
    x = tuple(m.get("example_input_shape") or m["input_shape"])
    z = tuple(m.get("example_latent_shape") or m["latent_shape"])
    return tuple(d if d > 0 else 16 for d in x), tuple(d if d > 0 else 16 for d in z)


def precision_variants(manifest: dict[str, Any]) -> list[str]:
    """Every non-fp32 decoder precision listed in the manifest, in file order."""
    seen: list[str] = []
    for e in manifest.get("files", {}).values():
        p = e.get("precision", "fp32")
        if e.get("format") == "onnx" and e.get("role") == "decoder" and p != "fp32" and p not in seen:
            seen.append(p)
    return seen


def encoder_precisions(manifest: dict[str, Any]) -> set[str]:
    return {e.get("precision", "fp32") for e in manifest.get("files", {}).values()
            if e.get("format") == "onnx" and e.get("role") == "encoder"}


def input_batch(model: BenchModel, batch_size: int, seed: int = 0) -> np.ndarray:
    shape = example_shapes(model.manifest)[0]
    return np.random.default_rng(seed).random((batch_size, *shape), dtype=np.float32)
