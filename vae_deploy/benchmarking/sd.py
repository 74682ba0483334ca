"""The workload that matters: a Stable-Diffusion-1.x-architecture ``AutoencoderKL``.

diffusers' SD 1.x VAE layout (block_out_channels 128/256/512/512, 2 layers per block, 4 latent
channels, 83.7 M parameters) with seeded random weights (no download: the cost is the
architecture's, not the weights'), decoding a 4x32x32 latent to a 256x256 image at batch 1. Its
ONNX export takes minutes, so it is cached under a folder keyed by a hash of the config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vae_deploy.benchmarking.models import BenchModel, cached_export

SD_NAME = "ref-sd-vae"
SD_SEED = 0
SD_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "sample_size": 256,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD_DESCRIPTION = ("SD 1.x-architecture AutoencoderKL (diffusers; 128/256/512/512, 2 layers/block, 83.7 M params, "
                  "seeded random weights): decode 4x32x32 -> 3x256x256")
SD_OPS = ("sample",)
# fp32-winograd: the lever for CPUs without native bf16 (bench/README.md, "Past the fp32 limit");
# written without the export's parity pass, the bench's own parity gate decides whether auto may pick it.
SD_PRECISIONS = ("fp32", "fp32-winograd")
SD_BATCH_SIZES = (1,)
SD_ENCODE_SIZE = 512  # the size whose row also times the encoder (issue #27: encode at 512 px)


def sd_unavailable_reason() -> str | None:
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        return f"diffusers is not installed ({e}); pip install 'vae-deploy[byo]'"
    return None


def sd_model() -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SD_SEED)
    return AutoencoderKL(**SD_CONFIG).eval()


def sd_folder(cache_dir: Path) -> Path:
    import onnxruntime as ort
    import torch

    from vae_deploy import __version__

    key = json.dumps([SD_CONFIG, SD_SEED, "dynamic-spatial", SD_PRECISIONS, torch.__version__, ort.__version__, __version__],
                     sort_keys=True)
    return cache_dir / f"{SD_NAME}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare_sd(cache_dir: Path, log: Callable[[str], None] | None = None) -> BenchModel:
    """Export once (ONNX only, dynamic height/width so one file serves 256, 512 and tiled 1024 px;
    no parity pass: the bench checks parity itself)."""
    import torch

    from vae_deploy.adapters import from_module
    from vae_deploy.exporters import export

    model = sd_model()
    example = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    ex = from_module(model, example, dynamic_spatial=True)
    folder = sd_folder(cache_dir)
    manifest = cached_export(folder, lambda: export(ex, folder, formats=("onnx",), verify=False, precisions=SD_PRECISIONS), log,
                             f"exporting {SD_NAME} into {folder} (once; a few minutes)")
    return BenchModel(name=SD_NAME, folder=folder, description=SD_DESCRIPTION, kind="reference", manifest=manifest,
                      eager=(ex.encoder, ex.decoder), eager_note="diffusers eager, the same seeded random weights",
                      ops=SD_OPS, batch_sizes=SD_BATCH_SIZES)


def sd_models(cache_dir: Path, sizes: tuple[int, ...] = (256, 512),
              log: Callable[[str], None] | None = None) -> list[BenchModel]:
    """One bench model per image side over the same dynamic export: ``ref-sd-vae`` (256 px, the
    name earlier reports used) and ``ref-sd-vae-<size>`` for the others; the 512 px one also
    encodes."""
    import copy
    import dataclasses

    base = prepare_sd(cache_dir, log)
    out = []
    for size in sizes:
        lat = (SD_CONFIG["latent_channels"], size // 8, size // 8)
        manifest = copy.deepcopy(base.manifest)
        manifest["model"]["example_latent_shape"] = list(lat)
        manifest["model"]["example_input_shape"] = [3, size, size]
        desc = base.description.replace("4x32x32 -> 3x256x256", f"{lat[0]}x{lat[1]}x{lat[2]} -> 3x{size}x{size}")
        ops = ("sample", "encode") if size == SD_ENCODE_SIZE else SD_OPS
        out.append(dataclasses.replace(base, name=SD_NAME if size == 256 else f"{SD_NAME}-{size}", manifest=manifest,
                                       description=desc + (" (+ encode)" if "encode" in ops else ""), ops=ops,
                                       latent_shape=lat, flops={}))
    return out
