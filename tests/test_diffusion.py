"""Latent-diffusion VAEs: diffusers folders, tiled decode/encode, scaled latents, adapters, and
verify sized to the model.

One tiny ``AutoencoderKL`` (random seeded weights) is saved with ``save_pretrained`` to a
temporary folder and exported from it through the command line, once per module; the tiling
tests compare that export with diffusers' own ``tiled_decode``/``tiled_encode``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import vae_deploy
from vae_deploy.adapters import to_exportable
from vae_deploy.adapters.diffusers_folder import resolve_folder
from vae_deploy.adapters.outputs import NoFit, as_gaussian, as_tensor
from vae_deploy.checks.plan import (
    DEFAULT_BATCH_SIZES,
    batch_sizes_for,
    demote_knife_edges,
    estimated_seconds,
    plan_cases,
)
from vae_deploy.cli import main
from vae_deploy.errors import ConfigError
from vae_deploy.runtime.core import Runtime

diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")

AKL_ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_akl(**overrides) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.18215, shift_factor=0.0625)
    kwargs.update(overrides)
    return diffusers.AutoencoderKL(**kwargs).eval()


@pytest.fixture(scope="module")
def akl_folder(tmp_path_factory):
    model = tiny_akl()
    folder = tmp_path_factory.mktemp("akl") / "tiny-vae"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def folder_export(akl_folder, tmp_path_factory):
    model, folder = akl_folder
    out = tmp_path_factory.mktemp("akl-export") / "export"
    r = CliRunner().invoke(main, ["export", "--diffusers", str(folder), "--out", str(out), "--format", "onnx"])
    assert r.exit_code == 0, r.output
    return model, folder, out, r.output


# --- the diffusers folder ----------------------------------------------------------------------


def test_export_from_a_diffusers_folder(folder_export):
    import onnx

    model, folder, out, output = folder_export
    assert "[export" in output and "ONNX export of the decoder" in output  # progress on stderr
    assert "peak RSS" in output
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["model"]
    assert m["family"] == "diffusers.AutoencoderKL" and m["input_shape"] == [3, -1, -1]
    assert m["example_input_shape"] == [3, 32, 32]  # min(sample_size, 64)
    assert m["scaling_factor"] == pytest.approx(0.18215) and m["shift_factor"] == pytest.approx(0.0625)
    assert m["config"]["diffusers"] == {"path": str(folder.resolve()), "subfolder": None}
    assert manifest["export"]["seconds"] > 0 and manifest["export"]["peak_rss_bytes"] > 0
    assert "ONNX export of the encoder (torch.export + optimiser + checker)" in manifest["export"]["stages"]
    meta = {p.key: p.value for p in onnx.load(str(out / "decoder.onnx")).metadata_props}
    assert meta["vae_deploy.shift_factor"] == "0.0625"
    # the export is the saved model: its decode equals diffusers' on another size
    z = np.random.default_rng(0).standard_normal((2, 4, 12, 20), dtype=np.float32)
    with torch.no_grad():
        want = model.decode(torch.from_numpy(z)).sample.numpy()
    np.testing.assert_allclose(Runtime.load(out, provider="cpu").decode(z), want, atol=AKL_ATOL, rtol=1e-5)


def test_pipeline_folder_and_missing_files(tmp_path, akl_folder):
    _, folder = akl_folder
    pipe = tmp_path / "pipeline"
    (pipe / "vae").mkdir(parents=True)
    (pipe / "model_index.json").write_text("{}")
    for f in folder.iterdir():
        (pipe / "vae" / f.name).symlink_to(f)
    assert resolve_folder(pipe) == (pipe, "vae")  # a pipeline folder means its vae/
    assert resolve_folder(pipe, "vae") == (pipe, "vae")
    with pytest.raises(ConfigError, match=r"has no config.json \(a pipeline folder\? pass --subfolder vae\)"):
        resolve_folder(pipe, "unet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no hub access"):
        resolve_folder(empty)
    (empty / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ConfigError, match=r"no weights: expected one of \['diffusion_pytorch_model.safetensors'"):
        resolve_folder(empty)
    (empty / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (empty / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ConfigError, match="names class 'UNet2DModel'; expected a diffusers autoencoder"):
        to_exportable(empty)


def test_cli_diffusers_errors(tmp_path):
    r = CliRunner().invoke(main, ["export", "--diffusers", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "Error: --diffusers" in r.output and "is not a folder" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, ["export", "--diffusers", str(tmp_path), "--model", "m:f", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "drop --model" in r.output


# --- tiled decode / encode: diffusers' rule --------------------------------------------------------


@pytest.mark.parametrize("tile", [4, 8])
def test_tiled_decode_equals_diffusers(folder_export, tile):
    model, _, out, _ = folder_export
    rt = Runtime.load(out, provider="cpu")
    z = np.random.default_rng(tile).standard_normal((2, 4, 22, 17), dtype=np.float32)
    model.enable_tiling()
    model.tile_latent_min_size, model.tile_sample_min_size = tile, 2 * tile  # this model's ratio is 2
    with torch.no_grad():
        want = model.tiled_decode(torch.from_numpy(z)).sample.numpy()
    got = rt.decode(z, tile=tile)
    assert got.shape == want.shape == (2, 3, 44, 34)
    np.testing.assert_allclose(got, want, atol=AKL_ATOL, rtol=0)
    assert np.abs(got - rt.decode(z)).max() > 1e-3  # tiles really were decoded apart and blended


@pytest.mark.parametrize("tile", [4, 8])
def test_tiled_encode_equals_diffusers(folder_export, tile):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    model, _, out, _ = folder_export
    rt = Runtime.load(out, provider="cpu")
    x = np.random.default_rng(1).random((1, 3, 40, 56), dtype=np.float32) * 2 - 1
    model.tile_latent_min_size, model.tile_sample_min_size = tile, 2 * tile
    with torch.no_grad():
        want = DiagonalGaussianDistribution(model._tiled_encode(torch.from_numpy(x)))
    mu, logvar = rt.encode(x, tile=2 * tile)
    np.testing.assert_allclose(mu, want.mean.numpy(), atol=AKL_ATOL, rtol=0)
    np.testing.assert_allclose(logvar, want.logvar.numpy(), atol=AKL_ATOL, rtol=0)
    assert rt.reconstruct(x, tile=tile).shape == x.shape


def test_tile_errors(folder_export, tmp_path):
    _, _, out, _ = folder_export
    rt = Runtime.load(out, provider="cpu")
    z = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="tile must be a positive multiple of 4, got 6"):
        rt.decode(z, tile=6)
    with pytest.raises(ValueError, match="a positive multiple of 8 .* got 12"):
        rt.encode(np.zeros((1, 3, 16, 16), np.float32), tile=12)
    r = CliRunner().invoke(main, ["sample", str(out), "-n", "1", "--latent-shape", "4,12,12", "--tile", "4",
                                  "--out", str(tmp_path / "s.npy")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "s.npy").shape == (1, 3, 24, 24)
    r = CliRunner().invoke(main, ["sample", str(out), "-n", "1", "--tile", "5"])
    assert r.exit_code == 1 and "Error: tile must be a positive multiple of 4, got 5" in r.output


def test_scaled_latents(folder_export):
    _, _, out, _ = folder_export
    rt = Runtime.load(out, provider="cpu")
    assert rt.spec.scaling_factor == pytest.approx(0.18215) and rt.spec.shift_factor == pytest.approx(0.0625)
    z = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    scaled = (z - 0.0625) * np.float32(0.18215)  # what a diffusion pipeline holds
    np.testing.assert_allclose(rt.decode(scaled, latents="scaled"), rt.decode(z), atol=1e-5)
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    mu, logvar = rt.encode(x)
    mu_s, logvar_s = rt.encode(x, latents="scaled")
    np.testing.assert_allclose(mu_s, (mu - 0.0625) * 0.18215, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logvar_s, logvar + 2 * np.log(0.18215), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"latents must be one of \('raw', 'scaled'\)"):
        rt.decode(z, latents="pipeline")


# --- adapters: more output forms, named functions, the wrapper hint ------------------------------


class FormsVAE(nn.Module):
    """Encodes to whatever ``form`` says; decodes to a dict or a distribution."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.enc = nn.Linear(6, 4)
        self.dec = nn.Linear(2, 6)

    def encode(self, x):
        mu, raw = self.enc(x).chunk(2, dim=1)
        logvar = torch.tanh(raw)
        if self.form == "normal":
            return torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        if self.form == "mu_logvar":
            return {"mu": mu, "logvar": logvar}
        if self.form == "mean_log_var":
            return {"mean": mu, "log_var": logvar}
        if self.form == "latent_dist":
            return {"latent_dist": {"mean": mu, "logvar": logvar}}
        return mu, logvar, mu + 1  # unsupported: three tensors

    def decode(self, z):
        y = torch.sigmoid(self.dec(z))
        return {"x_hat": y} if self.form != "normal" else torch.distributions.Normal(y, 0.1)


@pytest.mark.parametrize("form", ["normal", "latent_dist"])  # the other mappings: test_output_unpacking_rules
def test_adapter_output_forms(form, tmp_path):
    model = FormsVAE(form).eval()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    result = vae_deploy.export(model, tmp_path / "e", example_input=x, formats=("onnx",), batch_sizes=(1, 2))
    assert result.manifest["parity"]["passed"]
    with torch.no_grad():
        mu, raw = model.enc(x).chunk(2, dim=1)
    got_mu, got_logvar = Runtime.load(tmp_path / "e", provider="cpu").encode(x.numpy())
    np.testing.assert_allclose(got_mu, mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(got_logvar, torch.tanh(raw).numpy(), atol=1e-5)


def test_output_unpacking_rules():
    mu, sd = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    assert as_gaussian(torch.distributions.Normal(mu, sd))[2] == "(.mean, .stddev) -> logvar"
    torch.testing.assert_close(as_gaussian({"mean": mu, "variance": sd})[1], torch.log(sd))
    torch.testing.assert_close(as_gaussian({"mu": mu, "std": sd})[1], 2 * torch.log(sd))
    assert as_gaussian({"mu": mu, "logvar": sd})[2] == "(['mu'], ['logvar'])"
    assert as_gaussian({"mean": mu, "log_var": sd})[2] == "(['mean'], ['log_var'])"
    assert as_gaussian({"mean": mu, "logvar": sd})[2] == "(['mean'], ['logvar'])"
    assert as_gaussian({"posterior": {"mu": mu, "logvar": sd}})[2] == "['posterior'](['mu'], ['logvar'])"
    assert as_tensor({"recon": mu})[1] == "['recon']"
    with pytest.raises(NoFit, match=r"dict\(mu=Tensor\[2, 3\] float32\)"):
        as_gaussian({"mu": mu})


def test_named_functions_and_wrapper_hint(tmp_path):
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = FormsVAE("mu_logvar")

        def to_posterior(self, x):
            return self.inner.encode(x)

        def render(self, z):
            return self.inner.decode(z)

    x = torch.rand(2, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="--encode-fn/--decode-fn"):
        to_exportable(Renamed(), x)
    exp = to_exportable(Renamed(), x, encode_fn="to_posterior", decode_fn="render")
    assert exp.spec.config["adapter"] == "named" and exp.spec.config["encode_fn"] == "to_posterior"
    assert to_exportable(Renamed(), x, encode_fn="inner.encode", decode_fn="inner.decode").spec.latent_shape == (2,)
    with pytest.raises(ConfigError) as e:
        to_exportable(FormsVAE("three"), x)
    hint = str(e.value)
    assert "The smallest wrapper that would work:" in hint and "z, mu, logvar = out" in hint
    assert "out = self.vae.encode(x)" in hint and "return self.vae.decode(z)" in hint


def test_safetensors_weights_with_model(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    (tmp_path / "forms_vae.py").write_text(
        "from torch import nn\n"
        "from tests.test_diffusion import FormsVAE\n"
        "def build():\n    return FormsVAE('mean_log_var')\n")
    model = FormsVAE("mean_log_var")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    from vae_deploy.adapters.user_code import load_state_dict

    loaded = load_state_dict(tmp_path / "w.safetensors")
    assert set(loaded) == set(model.state_dict()) and torch.equal(loaded["enc.weight"], model.enc.weight)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    from vae_deploy.errors import CheckpointError

    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        load_state_dict(tmp_path / "bad.safetensors")


# --- verify: sized to the model, knife-edge warnings --------------------------------------------


def test_batch_sizes_follow_the_model_cost():
    tiny, sd_64px, huge = 2e5, 5.4e10, 1e13  # FLOPs per example (encoder + decoder)
    assert batch_sizes_for(tiny) == DEFAULT_BATCH_SIZES
    plan = plan_cases(sd_64px, budget_s=20, gflops=25)
    assert plan.batch_sizes == (1, 3) and (plan.edge_batch, plan.recon_n) == (1, 2)  # minimal edge cases too
    assert plan_cases(tiny).edge_batch == 4 and plan_cases(tiny).recon_n == 64
    mid = plan_cases(2e8, budget_s=20, gflops=25)  # ~1250 examples per side affordable
    assert mid.batch_sizes == (1, 7, 64, 257) or estimated_seconds(2e8, mid, gflops=25) <= 20
    assert estimated_seconds(2e9, plan_cases(2e9, budget_s=20, gflops=25), gflops=25) <= 20
    assert batch_sizes_for(huge) == (1, 3)  # never less than 1 and an odd batch above 1
    assert batch_sizes_for(None) == DEFAULT_BATCH_SIZES  # unknown cost: the defaults
    # monotone: a costlier model never gets more
    sizes = [sum(batch_sizes_for(f)) for f in (1e6, 1e8, 1e9, 1e10, 1e11)]
    assert sizes == sorted(sizes, reverse=True)


def _report(cases, elbo=None):
    from vae_deploy.checks.parity import summarize

    r = {"candidate": "onnxruntime-cpu", "tolerance": {"atol": 1e-4}, "cases": cases}
    if elbo is not None:
        r["elbo"] = elbo
    r["summary"] = summarize(r)
    return r


def _case(name, inp, passed, max_abs=1e-6):
    return {"name": name, "input": inp, "passed": passed,
            "outputs": {"mu": {"max_abs": max_abs, "mean_abs": 0.0, "shape": [1], "min_atol_to_pass": max_abs,
                               "passed": passed}}}


def test_knife_edge_cases_become_warnings_only_when_real_data_passes():
    r = _report([_case("encoder/real/bs=1", "real", True), _case("encoder/zeros/bs=4", "zeros", False, 1.63e-4)])
    assert not r["summary"]["passed"]
    lines = demote_knife_edges(r)
    assert r["summary"]["passed"] and r["summary"]["warnings"] == ["encoder/zeros/bs=4"]
    assert len(lines) == 1 and "1.63e-04" in lines[0] and "encoder/zeros/bs=4" in lines[0]
    assert r["cases"][1]["passed"] is False and r["cases"][1]["warning"] is True  # numbers kept as measured
    bad = _report([_case("encoder/real/bs=1", "real", False, 1.0), _case("encoder/zeros/bs=4", "zeros", False)])
    assert demote_knife_edges(bad) == [] and not bad["summary"]["passed"]
    alt = _report([_case("encoder/real/bs=1", "real", True), _case("decoder/alternating4sigma/bs=4",
                                                                   "alternating4sigma", False)])
    assert demote_knife_edges(alt) == [] and not alt["summary"]["passed"]  # not a constant input


def test_verify_defaults_on_the_folder_export(folder_export):
    _, folder, out, _ = folder_export
    r = CliRunner().invoke(main, ["verify", str(out), "--json", str(out.parent / "v.json")])
    assert r.exit_code == 0, r.output
    result = json.loads((out.parent / "v.json").read_text())
    assert result["sizing"]["batch_sizes"] == "sized to the model" and result["sizing"]["flops_per_example"] > 0
    assert result["sizing"]["chosen"] == list(DEFAULT_BATCH_SIZES)  # a tiny model affords them all
    assert result["reference"]["path"] == str(folder.resolve())  # rebuilt from the recorded folder
    decoder_inputs = result["reports"][0]["inputs"]["decoder"]
    assert "[N, 4, 16, 16]" in decoder_inputs  # the export's 32x32 example, not a guess
    assert isinstance(result["warnings"], list)


def test_verify_with_strict_edges_and_given_model(folder_export):
    _, folder, out, _ = folder_export
    r = CliRunner().invoke(main, ["verify", str(out), "--diffusers", str(folder), "--batch-sizes", "1,2",
                                  "--strict-edges"])
    assert r.exit_code == 0, r.output
    assert "RESULT: PASS" in r.output
