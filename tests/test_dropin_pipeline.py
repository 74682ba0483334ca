"""``RuntimeAutoencoder`` as ``pipe.vae``: a tiny real diffusers pipeline runs once with its torch
VAE and once with the drop-in exported from that same VAE; the images must agree within 1 level.

The references are diffusers' own code: ``DiTPipeline`` (transformer + scheduler + VAE decode +
its own postprocessing), diffusers' img2img ``retrieve_latents`` for ``encode``, and the
real ``AutoencoderKL`` with tiling enabled for ``enable_tiling``.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vae_deploy.cli import main

diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")

# One diffusers export per module (tracing the tiny AutoencoderKL) takes 10 s and more.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

# diffusers' img2img ``retrieve_latents`` ("Copied from" it, in a module that needs no transformers).
from diffusers.pipelines.ltx.pipeline_ltx_latent_upsample import retrieve_latents  # noqa: E402

from vae_deploy.runtime.diffusers_vae import RuntimeAutoencoder  # noqa: E402


def tiny_akl(latent_channels: int = 4, **overrides):
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=latent_channels, norm_num_groups=4, sample_size=32, scaling_factor=0.18215)
    kwargs.update(overrides)
    return diffusers.AutoencoderKL(**kwargs).eval()


def export_akl(model, tmp_path) -> RuntimeAutoencoder:
    folder = tmp_path / "vae"
    model.save_pretrained(folder)
    out = tmp_path / "export"
    r = CliRunner().invoke(main, ["export", "--diffusers", str(folder), "--out", str(out), "--format", "onnx",
                               "--no-verify"])  # the tests here compare with the model themselves
    assert r.exit_code == 0, r.output
    return RuntimeAutoencoder.load(out, provider="cpu")


@pytest.fixture(scope="module")
def akl_and_dropin(tmp_path_factory):
    model = tiny_akl()
    return model, export_akl(model, tmp_path_factory.mktemp("dropin"))


def tiny_dit_pipeline(vae):
    torch.manual_seed(1)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=4,
    ).eval()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=50)
    return diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_dit_pipeline_images_equal_with_the_dropin(akl_and_dropin, guidance_scale):
    model, dropin = akl_and_dropin
    pipe = tiny_dit_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    run = dict(class_labels=[1, 7, 3], guidance_scale=guidance_scale, num_inference_steps=3, output_type="pil")
    ref = pipe(generator=torch.Generator().manual_seed(5), **run).images
    pipe.vae = dropin  # the drop-in, assigned as users do
    got = pipe(generator=torch.Generator().manual_seed(5), **run).images
    assert pipe.vae is dropin and len(got) == len(ref) == 3
    a = np.stack([np.asarray(im, dtype=np.int16) for im in ref])
    b = np.stack([np.asarray(im, dtype=np.int16) for im in got])
    assert a.shape == b.shape == (3, 16, 16, 3)
    assert np.abs(a - b).max() <= 1
    assert a.std() > 5  # real images, not a constant that any VAE would match


def test_pipeline_built_with_the_dropin(akl_and_dropin):
    """Constructed with it (register_modules) as well as assigned; the pipeline's scale factor."""
    model, dropin = akl_and_dropin
    pipe = tiny_dit_pipeline(dropin)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.to("cpu") is pipe and pipe.vae is dropin  # moving the pipeline leaves the drop-in be
    out = pipe(class_labels=[2], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 16, 16, 3)
    assert 2 ** (len(dropin.config.block_out_channels) - 1) == 2 ** (len(model.config.block_out_channels) - 1)
    for key in ("scaling_factor", "latent_channels", "in_channels", "out_channels"):
        assert dropin.config[key] == pytest.approx(model.config[key]), key
    assert dropin.config.force_upcast is False and dropin.config.latents_mean is None
    assert dropin.runtime.spec.output_range == (-1.0, 1.0)  # recorded at export for diffusers VAEs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_follows_the_input(akl_and_dropin, dtype):
    model, dropin = akl_and_dropin
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=dtype)
    out = dropin.decode(z)
    with torch.no_grad():
        ref = model.decode(z.float()).sample
    assert out.sample.dtype == dtype and out.sample.device == z.device
    torch.testing.assert_close(out.sample.float(), ref, atol=1e-4, rtol=1e-4)
    (tup,) = dropin.decode(z, return_dict=False)
    torch.testing.assert_close(tup, out.sample)


@pytest.mark.parametrize("sample_mode", ["sample", "argmax"])
def test_encode_through_retrieve_latents(akl_and_dropin, sample_mode):
    """img2img's own ``retrieve_latents`` with the same generator draws the same latents."""
    model, dropin = akl_and_dropin
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        ref = retrieve_latents(model.encode(x), torch.Generator().manual_seed(9), sample_mode)
    got = retrieve_latents(dropin.encode(x), torch.Generator().manual_seed(9), sample_mode)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    dist = dropin.encode(x).latent_dist
    assert not torch.equal(dist.sample(torch.Generator().manual_seed(1)), dist.mode())


def test_tiling_and_slicing_equal_autoencoderkl(akl_and_dropin):
    """``enable_tiling`` maps to the Runtime's tile= with diffusers' rule: the same pixels as the
    torch AutoencoderKL with tiling on, at the same tile sizes; slicing changes nothing."""
    model, dropin = akl_and_dropin
    z = torch.randn(2, 4, 24, 24, generator=torch.Generator().manual_seed(6))
    model.enable_tiling()
    dropin.enable_tiling()
    dropin.tile_latent_min_size, dropin.tile_sample_min_size = model.tile_latent_min_size, model.tile_sample_min_size
    try:
        with torch.no_grad():
            ref = model.decode(z).sample
        got = dropin.decode(z).sample
        dropin.enable_slicing()
        sliced = dropin.decode(z).sample
    finally:
        model.disable_tiling()
        dropin.disable_tiling()
        dropin.disable_slicing()
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sliced, got, atol=1e-5, rtol=1e-5)
    plain = dropin.decode(z).sample
    assert (plain - got).abs().max() > 1e-3  # tiling really happened: seams differ from one pass


def test_to_and_dtype(akl_and_dropin):
    _, dropin = akl_and_dropin
    assert dropin.to(torch.float16) is dropin and dropin.dtype == torch.float16
    dropin.to("cpu", dtype=torch.float32)
    assert dropin.dtype == torch.float32 and dropin.device == torch.device("cpu")


def test_deterministic_posterior_samples_its_mode(akl_and_dropin):
    """An export whose encoder is deterministic (``ExportSpec.posterior``) gives sample == mode."""
    rt = copy.copy(akl_and_dropin[1].runtime)  # the same engine, another spec
    rt.spec = dataclasses.replace(rt.spec, posterior="deterministic")
    dropin = RuntimeAutoencoder(rt)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    dist = dropin.encode(x).latent_dist
    torch.testing.assert_close(dist.sample(torch.Generator().manual_seed(1)), dist.mode())
    torch.testing.assert_close(dist.mean, dist.mode())
