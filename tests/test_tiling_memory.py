"""Tiled decode's peak memory stays at or below diffusers' ``tiled_decode`` for the same tile.

Each decode runs in its own process (``ru_maxrss`` is a process-lifetime peak), through
``bench/tiled_memory.py``, on a seeded AutoencoderKL with SD's block layout at reduced width.
The figures for the full SD 1.x architecture are in docs/latent-diffusion.md.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")


@pytest.mark.slow
def test_tiled_decode_peak_rss_at_most_diffusers(tmp_path):
    import vae_deploy
    from bench.tiled_memory import measure

    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                                    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 64, 128, 128),
                                    layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)
    folder = tmp_path / "vae"
    model.save_pretrained(folder)
    vae_deploy.export(folder, tmp_path / "export", formats=("onnx",), batch_sizes=(1, 3))
    # a 96x96 latent (768 px) in 32-latent tiles: 16 tiles of four different shapes
    ours = measure("ours", size=96, tile=32, export=tmp_path / "export")
    theirs = measure("diffusers", size=96, tile=32, folder=folder)
    assert ours["shape"] == theirs["shape"] == [1, 3, 768, 768]
    assert ours["peak_bytes"] <= theirs["peak_bytes"], (ours, theirs)
