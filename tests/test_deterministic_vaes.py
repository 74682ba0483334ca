"""Deterministic and video VAEs: AutoencoderTiny (TAESD) and AutoencoderDC (DC-AE) export with
posterior "deterministic", DC-AE's linear attention stays finite in ONNX, classes the contract
cannot express are refused in one line, and a Wan-style video VAE exports with a 5-D shape.

Every reference is diffusers' own model (tiny seeded configs saved with ``save_pretrained``).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import vae_deploy
from vae_deploy.adapters import to_exportable
from vae_deploy.adapters.families import UNSUPPORTED
from vae_deploy.adapters.outputs import DETERMINISTIC_LOGVAR
from vae_deploy.cli import main
from vae_deploy.errors import ConfigError
from vae_deploy.runtime.core import Runtime

diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")

ATOL = 1e-4  # the deep-family fp32 bound (tolerance.tolerance_for("fp32", "diffusers.*"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_taesd() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                     num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4,
                                     upsampling_scaling_factor=2).eval()


def tiny_dcae() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41).eval()


@pytest.fixture(scope="module")
def taesd_export(tmp_path_factory):
    model = tiny_taesd()
    folder = tmp_path_factory.mktemp("taesd") / "taesd"
    model.save_pretrained(folder)
    out = tmp_path_factory.mktemp("taesd-export") / "export"
    r = CliRunner().invoke(main, ["export", "--diffusers", str(folder), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return model, out


def _images(n: int, side: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 3, side, side), dtype=np.float32) * 2 - 1)


def test_taesd_exports_deterministic_onnx_only(taesd_export):
    model, out = taesd_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["posterior"] == "deterministic"
    assert manifest["model"]["family"] == "diffusers.AutoencoderTiny"
    assert "latents" in manifest["model"]["config"]["encode"]
    assert sorted(manifest["files"]) == ["decoder.onnx", "encoder.onnx"]  # --diffusers: ONNX only by default
    for name in ("encoder.onnx", "decoder.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        assert meta["vae_deploy.posterior"] == "deterministic"


@pytest.mark.parametrize("side", [32, 48])
def test_taesd_runtime_equals_diffusers(taesd_export, side):
    model, out = taesd_export
    rt = Runtime.load(out, provider="cpu")
    assert rt.spec.posterior == "deterministic"
    x = _images(2, side)
    mu, logvar = rt.encode(x)
    with torch.no_grad():
        want_z = model.encode(torch.from_numpy(x)).latents.numpy()
        want_x = model.decode(torch.from_numpy(want_z)).sample.numpy()
    np.testing.assert_allclose(mu, want_z, atol=ATOL, rtol=1e-5)
    assert np.all(logvar == np.float32(DETERMINISTIC_LOGVAR))
    assert np.all(np.exp(np.float32(0.5) * logvar) == 0)  # every host's reparameterisation gives mu
    np.testing.assert_allclose(rt.decode(mu), want_x, atol=ATOL, rtol=1e-5)
    # a point posterior: "sampling" is the mean, whatever the seed
    np.testing.assert_array_equal(rt.reconstruct(x, sample=True, seed=3), rt.reconstruct(x))


def test_gaussian_exports_say_gaussian(tmp_path):
    torch.manual_seed(0)
    akl = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, sample_size=16)
    exp = to_exportable(akl)
    assert exp.spec.posterior == "gaussian" and exp.spec.metadata("encoder")["vae_deploy.posterior"] == "gaussian"


def test_onnx_keeps_tiny_epsilons(tmp_path):
    """onnxscript's x + 0 rewrite matched x + 1e-15 (abs_tol 1e-8): 0 / (0 + eps) became NaN."""
    import onnxruntime as ort

    from vae_deploy.exporters._exact_rewrites import _constant_patterns
    from vae_deploy.exporters.onnx import export_onnx

    class LinearAttentionDenominator(torch.nn.Module):
        def forward(self, x):
            num, den = torch.relu(x), torch.relu(-x).sum(dim=1, keepdim=True)
            return num / (den + 1e-15), num * 1.000001

    x = torch.tensor([[1.0, 2.0], [-1.0, 3.0]])
    before = [(c._rel_tol, c._abs_tol) for c in _constant_patterns()]
    export_onnx(LinearAttentionDenominator(), x, tmp_path / "m.onnx", input_name="x", output_names=["a", "b"],
                dynamic_dims={0: "batch"}, metadata={})
    assert [(c._rel_tol, c._abs_tol) for c in _constant_patterns()] == before  # put back
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    probe = np.array([[1.0, 2.0], [0.0, 5.0]], dtype=np.float32)  # row 0: a zero denominator
    a, b = sess.run(None, {"x": probe})
    with torch.no_grad():
        want_a, want_b = LinearAttentionDenominator()(torch.from_numpy(probe))
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, want_a.numpy())
    np.testing.assert_array_equal(b, want_b.numpy())


@pytest.mark.slow
def test_dcae_exports_finite_and_equal(tmp_path):
    model = tiny_dcae()
    folder = tmp_path / "dcae"
    model.save_pretrained(folder)
    result = vae_deploy.export(folder, tmp_path / "export", formats=("onnx",), batch_sizes=(1, 3))
    assert result.manifest["model"]["posterior"] == "deterministic"
    rt = Runtime.load(tmp_path / "export", provider="cpu")
    x = _images(3, 32, seed=2)
    mu, _ = rt.encode(x)
    with torch.no_grad():
        want = model.encode(torch.from_numpy(x)).latent.numpy()
        want_x = model.decode(torch.from_numpy(want)).sample.numpy()
    assert np.isfinite(mu).all()
    np.testing.assert_allclose(mu, want, atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(rt.decode(mu), want_x, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_classes_refused_in_one_line(tmp_path, name):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": name}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not read: refused before loading")
    r = CliRunner().invoke(main, ["export", "--diffusers", str(folder), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1
    error = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert error == [f"Error: {name} is not supported: {UNSUPPORTED[name]}"]
    assert not (tmp_path / "out").exists()


def tiny_wan() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                                      temperal_downsample=[True], latents_mean=[0.0] * 4,
                                      latents_std=[1.0] * 4).eval()


def test_video_vae_needs_a_5d_shape(tmp_path):
    with pytest.raises(ConfigError, match=r"video VAE .*--input-shape C,T,H,W"):
        to_exportable(tiny_wan())


@pytest.mark.slow
def test_wan_exports_with_input_shape(tmp_path):
    model = tiny_wan()
    folder = tmp_path / "wan"
    model.save_pretrained(folder)
    out = tmp_path / "export"
    r = CliRunner().invoke(main, ["export", "--diffusers", str(folder), "--input-shape", "3,5,16,16",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    rt = Runtime.load(out, provider="cpu")
    x = np.random.default_rng(0).random((1, 3, 5, 16, 16), dtype=np.float32) * 2 - 1
    with torch.no_grad():
        post = model.encode(torch.from_numpy(x)).latent_dist
        want_x = model.decode(post.mean).sample.numpy()
    mu, logvar = rt.encode(x)
    np.testing.assert_allclose(mu, post.mean.numpy(), atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(logvar, post.logvar.numpy(), atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(rt.decode(mu), want_x, atol=ATOL, rtol=1e-5)


def test_verify_checks_a_user_size_decode_in_the_vaes_range(taesd_export):
    from vae_deploy.checks.parity import input_range
    from vae_deploy.checks.verify import verify_export

    _, out = taesd_export
    result = verify_export(out, backends=["ort-cpu"])
    assert result["passed"], result["reports"]
    assert result["sizing"]["user_size"].startswith("decoder at latent [4, 64, 64]")
    names = [c["name"] for c in result["reports"][0]["cases"]]
    assert "decoder/user-size/bs=1" in names
    assert input_range(Runtime.load(out, provider="cpu").spec) == (-1.0, 1.0)
