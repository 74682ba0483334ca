"""Every pipeline's latents go into ``decode`` as they come out of the pipeline.

The reference is diffusers' own code: tiny seeded SDXL, FLUX.1 and FLUX.2 pipelines (prompt
embeddings given directly, so no text encoder or tokenizer is needed) are run twice with one
seed, once with ``output_type="latent"`` and once decoding, with the VAE's ``decode`` wrapped
to record what the pipeline feeds it. ``Backend.decode(latents, latents="scaled",
latent_layout=...)`` must feed the VAE the same tensor. The layout functions are compared with
the pipelines' own static methods.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from vae_deploy.adapters import to_exportable
from vae_deploy.artifacts import ExportSpec
from vae_deploy.errors import ConfigError, InputError
from vae_deploy.runtime import latents as lat
from vae_deploy.runtime.backends import TorchBackend

diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")


def need_transformers() -> None:
    pytest.importorskip("transformers", reason="diffusers' pipelines need transformers (the dev extra)")

H, W = 16, 24  # image pixels; the tiny VAEs downsample by 2: latents 8x12, packed 4x6 = 24 tokens
VAE_KW = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
              latent_channels=4, norm_num_groups=4, sample_size=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_twice(pipe, vae, **kw):
    """(what output_type="latent" returns, what the pipeline passes to vae.decode) for one seed."""
    latents = pipe(output_type="latent", generator=torch.Generator().manual_seed(3), **kw).images
    seen = {}
    orig = vae.decode

    def record(z, *a, **k):
        seen["z"] = z.detach().clone()
        return orig(z, *a, **k)

    vae.decode = record
    try:
        pipe(output_type="np", generator=torch.Generator().manual_seed(3), **kw)
    finally:
        vae.decode = orig
    return latents.detach().numpy(), seen["z"].numpy()


def sdxl_case():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**VAE_KW, scaling_factor=0.13025, latents_mean=[0.3, -0.2, 0.5, 0.1],
                                  latents_std=[1.7, 0.6, 2.2, 0.9]).eval()
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=32 + 48,
        cross_attention_dim=16, norm_num_groups=2)
    pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                               tokenizer_2=None, unet=unet, scheduler=diffusers.EulerDiscreteScheduler())
    g = torch.Generator().manual_seed(1)
    return vae, run_twice(pipe, vae, prompt_embeds=torch.randn(1, 5, 16, generator=g),
                          pooled_prompt_embeds=torch.randn(1, 32, generator=g), guidance_scale=1.0,
                          num_inference_steps=1, height=H, width=W)


def flux_case():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**VAE_KW, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                  use_post_quant_conv=False).eval()
    tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                          pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    pipe = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=tr)
    g = torch.Generator().manual_seed(1)
    return vae, run_twice(pipe, vae, prompt_embeds=torch.randn(1, 5, 16, generator=g),
                          pooled_prompt_embeds=torch.randn(1, 16, generator=g), num_inference_steps=1,
                          height=H, width=W, guidance_scale=1.0)


def flux2_vae():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLFlux2(**VAE_KW).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # trained-looking statistics: a fresh BatchNorm's (0, 1) would hide mistakes
        vae.bn.running_mean.copy_(torch.randn(16, generator=g))
        vae.bn.running_var.copy_(torch.rand(16, generator=g) * 3 + 0.1)
    return vae


def flux2_case():
    vae = flux2_vae()
    tr = diffusers.Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                           timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2))
    pipe = diffusers.Flux2Pipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                   tokenizer=None, transformer=tr)
    g = torch.Generator().manual_seed(1)
    return vae, run_twice(pipe, vae, prompt_embeds=torch.randn(1, 5, 16, generator=g), num_inference_steps=1,
                          height=H, width=W, guidance_scale=1.0)


CASES = {"sdxl": (sdxl_case, "spatial"), "flux1": (flux_case, "flux-packed"), "flux2": (flux2_case, "flux2-packed")}


@functools.cache
def built_case(name):
    """The tiny pipeline's VAE, spec, layout, its latents and what it fed ``vae.decode`` (once)."""
    need_transformers()
    build, layout = CASES[name]
    vae, (pipe_latents, fed_to_vae) = build()
    example = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    spec = to_exportable(vae, example).spec
    return name, vae, spec, layout, pipe_latents, fed_to_vae


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return built_case(request.param)


@pytest.fixture(scope="module", params=[k for k, (_, layout) in CASES.items() if layout != "spatial"])
def packed_case(request):
    return built_case(request.param)


def recording_backend(vae, spec):
    seen = {}

    def decoder(z):
        seen["z"] = z.clone()
        return vae.decode(z).sample

    def encoder(x):
        d = vae.encode(x).latent_dist
        return d.mean, d.logvar

    return TorchBackend(encoder, decoder, spec), seen


def test_decode_feeds_the_vae_what_the_pipeline_feeds_it(case):
    name, vae, spec, layout, pipe_latents, fed_to_vae = case
    assert layout in spec.latent_layouts
    backend, seen = recording_backend(vae, spec)
    out = backend.decode(pipe_latents, latents="scaled", latent_layout=layout, image_size=(H, W))
    np.testing.assert_allclose(seen["z"].numpy(), fed_to_vae, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ref = vae.decode(torch.from_numpy(fed_to_vae)).sample.numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    if name == "sdxl":  # what the issue saw: ignoring latents_mean/std decodes another image
        wrong = pipe_latents / spec.scaling_factor
        assert np.abs(wrong - fed_to_vae).max() > 0.1


def test_encode_scaled_is_decode_scaled_inverse(case):
    name, vae, spec, layout, _, _ = case
    backend, seen = recording_backend(vae, spec)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, H, W)).astype(np.float32)
    mu_raw, logvar_raw = backend.encode(x)
    mu, logvar = backend.encode(x, latents="scaled", latent_layout=layout)
    backend.decode(mu, latents="scaled", latent_layout=layout, image_size=(H, W))
    np.testing.assert_allclose(seen["z"].numpy(), mu_raw, rtol=1e-5, atol=1e-5)
    assert not np.allclose(backend.encode(x, latents="scaled")[0], mu_raw)  # scaling did something
    assert logvar.shape == mu.shape and np.isfinite(logvar).all()


def test_flux2_encode_scaled_matches_the_pipelines_image_latents():
    """``Flux2Pipeline._encode_vae_image`` (argmax, patchify, bn-normalise) is the reference."""
    need_transformers()
    vae = flux2_vae()
    pipe = diffusers.Flux2Pipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae,
                                   text_encoder=None, tokenizer=None, transformer=None)
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ref = pipe._encode_vae_image(x, generator=None).numpy()
    spec = to_exportable(vae, x).spec
    backend, _ = recording_backend(vae, spec)
    mu, logvar = backend.encode(x.numpy(), latents="scaled", latent_layout="flux2-patchified")
    np.testing.assert_allclose(mu, ref, rtol=1e-5, atol=1e-5)
    std = np.asarray(spec.latents_std, np.float32).reshape(1, -1, 1, 1)
    _, raw_logvar = backend.encode(x.numpy())
    np.testing.assert_allclose(logvar, lat.patchify(raw_logvar) - 2 * np.log(std), rtol=1e-5, atol=1e-5)


def test_wan_latents_decode_as_the_wan_pipeline_feeds_its_vae():
    """Wan's pipeline applies ``latents_mean``/``latents_std`` without a scaling factor; the
    statistics are read from the VAE by the export's own code (``with_latent_statistics``)."""
    need_transformers()
    from vae_deploy.adapters.diffusers_folder import with_latent_statistics

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.3, -0.2, 0.5, 0.1],
                                     latents_std=[1.7, 0.6, 2.2, 0.9]).eval()
    tr = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                         in_channels=4, out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32,
                                         num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                         rope_max_seq_len=32)
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, transformer=tr, vae=vae,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(1, 5, 16, generator=g), num_inference_steps=1, height=16, width=16,
              num_frames=5, guidance_scale=1.0)
    latents = pipe(output_type="latent", generator=torch.Generator().manual_seed(3), **kw).frames.numpy()
    seen = {}
    orig = vae.decode
    vae.decode = lambda z, *a, **k: (seen.__setitem__("z", z.clone()), orig(z, *a, **k))[1]
    pipe(output_type="np", generator=torch.Generator().manual_seed(3), **kw)
    vae.decode = orig
    spec = with_latent_statistics(ExportSpec(input_shape=(3, -1, -1, -1), latent_shape=(4, -1, -1, -1)), vae)
    assert spec.latents_std == (1.7, 0.6, 2.2, 0.9) and spec.latent_layouts == ("spatial",)
    backend = TorchBackend(lambda x: (x, x), lambda z: seen.__setitem__("ours", z.clone()) or z[:, :3], spec)
    backend.decode(latents, latents="scaled")
    np.testing.assert_allclose(seen["ours"].numpy(), seen["z"].numpy(), rtol=1e-5, atol=1e-6)


# --- the layouts against the pipelines' own helpers ----------------------------------------------
@pytest.mark.parametrize("c, h, w", [(4, 8, 12), (16, 6, 4), (2, 2, 2)])
def test_layout_functions_are_the_pipelines(c, h, w):
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    z = torch.randn(3, c, h, w, generator=torch.Generator().manual_seed(c))
    packed = FluxPipeline._pack_latents(z, 3, c, h, w)
    np.testing.assert_array_equal(lat.flux_pack(z.numpy()), packed.numpy())
    ratio = 8
    unpacked = FluxPipeline._unpack_latents(packed, h * ratio, w * ratio, ratio)
    np.testing.assert_array_equal(lat.flux_unpack(packed.numpy(), h, w), unpacked.numpy())
    zp = Flux2Pipeline._patchify_latents(z)
    np.testing.assert_array_equal(lat.patchify(z.numpy()), zp.numpy())
    np.testing.assert_array_equal(lat.unpatchify(zp.numpy()), Flux2Pipeline._unpatchify_latents(zp).numpy())
    seq = Flux2Pipeline._pack_latents(zp)
    np.testing.assert_array_equal(lat.flux2_pack(zp.numpy()), seq.numpy())
    ids = Flux2Pipeline._prepare_latent_ids(zp)
    back = Flux2Pipeline._unpack_latents_with_ids(seq, ids)  # one tensor [N, 4C, h, w]
    spec = ExportSpec(input_shape=(3, -1, -1), latent_shape=(c, -1, -1), example_input_shape=(3, 8 * h, 8 * w),
                      example_latent_shape=(c, h, w))
    got, single = lat.to_spatial(seq.numpy(), spec, "flux2-packed", image_size=(h * ratio, w * ratio), ratio=ratio)
    assert not single
    np.testing.assert_array_equal(got, back.numpy())


# --- refusals ------------------------------------------------------------------------------------
def test_a_layout_that_does_not_fit_is_refused_naming_the_ones_that_do(case):
    name, vae, spec, _, pipe_latents, _ = case
    backend, _ = recording_backend(vae, spec)
    wrong = "flux-packed" if name == "flux2" else "flux2-packed"
    with pytest.raises(InputError, match=f"latent_layout '{wrong}' does not fit .* it accepts spatial"):
        backend.decode(pipe_latents, latents="scaled", latent_layout=wrong)
    with pytest.raises(InputError, match="layouts that exist: spatial, flux-packed, flux2-packed"):
        backend.decode(pipe_latents, latent_layout="packed")
    with pytest.raises(InputError, match="latents must be one of"):
        backend.decode(pipe_latents, latents="normalised", latent_layout="spatial")


def test_packed_latents_that_are_not_square_need_the_image_size(packed_case):
    name, vae, spec, layout, pipe_latents, _ = packed_case
    backend, _ = recording_backend(vae, spec)
    with pytest.raises(InputError, match="not square: pass image_size"):
        backend.decode(pipe_latents, latents="scaled", latent_layout=layout)
    with pytest.raises(InputError, match="image_size 16x16 means 4x4 packed tokens, but the latents hold 24"):
        backend.decode(pipe_latents, latents="scaled", latent_layout=layout, image_size=(16, 16))


def test_a_flat_latent_accepts_only_spatial():
    spec = ExportSpec(input_shape=(1, 8, 8), latent_shape=(8,))
    assert lat.accepted_layouts(spec) == ("spatial",)
    with pytest.raises(InputError, match="it accepts spatial"):
        lat.check_choice(spec, "scaled", "flux-packed")


def test_statistics_that_do_not_fit_the_latent_are_refused_at_export():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**VAE_KW, latents_mean=[0.0] * 3, latents_std=[1.0] * 3).eval()
    with pytest.raises(ConfigError, match="latents_mean/latents_std have 3 values"):
        to_exportable(vae, torch.rand(2, 3, 16, 16) * 2 - 1)


def test_statistics_travel_in_the_metadata_and_the_manifest():
    from vae_deploy.artifacts import META_PREFIX, parse_shape

    spec = ExportSpec(input_shape=(3, -1, -1), latent_shape=(4, -1, -1), latents_mean=(0.5, -0.25, 1.0, 0.0),
                      latents_std=(2.0, 0.5, 1.5, 1.0), latent_layouts=("spatial", "flux-packed"))
    back = ExportSpec.from_model_section(spec.model_section())
    assert back.latents_mean == spec.latents_mean and back.latent_layouts == spec.latent_layouts
    meta = spec.metadata("decoder")
    assert [float(v) for v in meta[f"{META_PREFIX}latents_std"].split(",")] == list(spec.latents_std)
    assert meta[f"{META_PREFIX}latent_layouts"] == "spatial,flux-packed"
    assert f"{META_PREFIX}latents_mean" not in ExportSpec(input_shape=(3,), latent_shape=(2,)).metadata("decoder")
    assert parse_shape("1,2") == (1, 2)


# --- through an export: the ONNX metadata, the manifest, Runtime and `batch decode` ----------------
@pytest.fixture(scope="module")
def stats_export(tmp_path_factory):
    """A seeded spatial toy (images 3x8x8, latents 2x4x4) exported with SDXL-style statistics."""
    from dataclasses import replace

    from tests.conftest import SpatialToyVAE
    from vae_deploy.exporters import export

    torch.manual_seed(0)
    exp = SpatialToyVAE(3).eval().exportable()
    exp.spec = replace(exp.spec, scaling_factor=0.5, latents_mean=(0.5, -0.3), latents_std=(2.0, 0.5),
                       latent_layouts=("spatial", "flux-packed"))
    return export(exp, tmp_path_factory.mktemp("stats") / "export", formats=("onnx",), verify=False).out_dir


def test_runtime_reads_the_statistics_from_manifest_and_metadata(stats_export):
    from vae_deploy.runtime.core import Runtime

    rt = Runtime.load(stats_export)
    bare = Runtime(stats_export / "encoder.onnx", stats_export / "decoder.onnx")  # metadata only
    for spec in (rt.spec, bare.spec):
        assert spec.latents_mean == (0.5, -0.3) and spec.latents_std == (2.0, 0.5)
        assert spec.latent_layouts == ("spatial", "flux-packed")
    x = np.random.default_rng(1).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    mu, _ = rt.encode(x)
    packed, _ = rt.encode(x, latents="scaled", latent_layout="flux-packed")
    assert packed.shape == (3, 4, 8)
    np.testing.assert_allclose(bare.decode(packed, latents="scaled", latent_layout="flux-packed"), rt.decode(mu),
                               rtol=1e-5, atol=1e-5)


def test_batch_decode_takes_packed_scaled_latents(stats_export, tmp_path):
    from click.testing import CliRunner

    from vae_deploy.cli import main
    from vae_deploy.runtime.core import Runtime

    rt = Runtime.load(stats_export)
    x = np.random.default_rng(2).uniform(0, 1, (5, 3, 8, 8)).astype(np.float32)
    packed, _ = rt.encode(x, latents="scaled", latent_layout="flux-packed")
    np.save(tmp_path / "z.npy", packed)
    args = ["batch", "decode", str(stats_export), str(tmp_path / "z.npy"), "--latents", "scaled"]
    r = CliRunner().invoke(main, [*args, "--latent-layout", "flux-packed", "--image-size", "8x8",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    from vae_deploy.serving.batch.output import read_outputs

    got = read_outputs(tmp_path / "out")["x"]
    np.testing.assert_allclose(got, rt.decode(rt.encode(x)[0]), rtol=1e-5, atol=1e-5)
    r = CliRunner().invoke(main, [*args, "--latent-layout", "flux2-packed", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 1 and r.output.count("Error: ") == 1, r.output
    assert "it accepts spatial, flux-packed" in r.output and "Traceback" not in r.output


def test_the_decode_command_takes_packed_scaled_latents(stats_export, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from vae_deploy.cli import main
    from vae_deploy.runtime.core import Runtime

    rt = Runtime.load(stats_export)
    x = np.random.default_rng(3).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    packed, _ = rt.encode(x, latents="scaled", latent_layout="flux-packed")
    np.save(tmp_path / "z.npy", packed)
    r = CliRunner().invoke(main, ["decode", str(stats_export), str(tmp_path / "z.npy"), "--latents", "scaled",
                                  "--latent-layout", "flux-packed", "--output-range", "0,1", "--out",
                                  str(tmp_path / "png")])
    assert r.exit_code == 0, r.output
    got = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "png").glob("*.png"))])
    from vae_deploy.images import to_uint8

    np.testing.assert_array_equal(got, to_uint8(rt.decode(rt.encode(x)[0]), (0.0, 1.0)))
