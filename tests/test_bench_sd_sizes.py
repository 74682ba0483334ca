"""SD rows at several sizes from one dynamic export: every backend really decodes (and the
512-class row encodes) at the row's size, and the FLOP count follows the size.

The tiny AutoencoderKL here has two blocks (upsampling x2, not SD's x8), so a row "of side s"
decodes an s/8 latent to an s/4 image. Its dynamic ONNX export takes minutes on a loaded 2-core
machine: slow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vae_deploy.benchmarking.sd as sd
from vae_deploy.benchmarking.backends import build_backends, make_call
from vae_deploy.benchmarking.config import BenchConfig
from vae_deploy.benchmarking.models import BenchModel, example_shapes, input_batch
from vae_deploy.checks.flops import onnx_flops

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")
    from vae_deploy.adapters import from_module
    from vae_deploy.exporters import export
    from vae_deploy.exporters.manifest import load_manifest

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32).eval()
    ex = from_module(vae, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), dynamic_spatial=True)
    folder = tmp_path_factory.mktemp("sd") / "exp"
    export(ex, folder, formats=("onnx",), verify=False)
    return BenchModel(name=sd.SD_NAME, folder=folder, description="tiny: decode 4x32x32 -> 3x256x256", kind="reference",
                      manifest=load_manifest(folder), eager=(ex.encoder, ex.decoder), ops=sd.SD_OPS,
                      batch_sizes=sd.SD_BATCH_SIZES)


def test_each_size_is_its_own_row_and_backends_decode_at_it(tiny_sd, monkeypatch):
    monkeypatch.setattr(sd, "prepare_sd", lambda cache, log=None: tiny_sd)
    monkeypatch.setattr(sd, "SD_ENCODE_SIZE", 128)
    before = dict(tiny_sd.manifest["model"])
    models = sd.sd_models(tiny_sd.folder.parent, (256, 128))
    assert [m.name for m in models] == ["ref-sd-vae", "ref-sd-vae-128"]
    assert [m.ops for m in models] == [("sample",), ("sample", "encode")]
    cfg = BenchConfig.make(quick=True, backends=("eager", "ort-cpu", "ort-cpu-bare"), batch_sizes=(1,))
    flops = {}
    for m, side in zip(models, (256, 128)):
        assert example_shapes(m.manifest) == ((3, side, side), (4, side // 8, side // 8))
        flops[side] = onnx_flops(m.folder / "decoder.onnx", example_shapes(m.manifest)[1])
        backends, skipped = build_backends(m, cfg)
        assert set(backends) == {"eager", "ort-cpu", "ort-cpu-bare"}, skipped
        outs = {n: make_call(b, "sample", 1, None, m.latent_shape)() for n, b in backends.items()}
        assert all(o.shape == (1, 3, side // 4, side // 4) for o in outs.values())
        if "encode" in m.ops:
            mu = make_call(backends["ort-cpu"], "encode", 1, input_batch(m, 1))()[0]
            assert mu.shape == (1, 4, side // 2, side // 2)
        for b in backends.values():
            b.close()
    # convolutions scale with the pixels (4x), the mid-block attention faster (16x)
    assert 4 * flops[128] < flops[256] < 16 * flops[128]
    assert tiny_sd.latent_shape is None and tiny_sd.manifest["model"] == before  # the base model is not mutated


def test_sd_sizes_are_validated():
    from vae_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="multiples of 64"):
        BenchConfig.make(sd_sizes=(100,))
    assert BenchConfig.make().sd_sizes == (256, 512)


def test_bare_session_samples_at_the_given_latent(tiny_sd):
    from vae_deploy.benchmarking.backends import BareSession
    from vae_deploy.runtime.core import Runtime

    bare = BareSession(Runtime.load(tiny_sd.folder, provider="cpu"))
    assert bare.sample(2, latent_shape=(4, 8, 8)).shape == (2, 3, 16, 16)
    assert np.isfinite(bare.sample(1)).all()
