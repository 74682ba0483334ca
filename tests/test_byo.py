"""Bring your own VAE: foreign modules export, verify, run, and fail clearly when they cannot.

Three styles of model, each tiny and randomly initialised (no downloads): the classic PyTorch
VAE example (flat 784 inputs, ``encode`` -> ``(mu, logvar)``), an ``encoder``/``decoder``
submodule pair, and diffusers' ``AutoencoderKL`` built from a config (spatial latents,
dynamic height and width). Each model is exported once per module and reused.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

import vae_deploy
from vae_deploy.cli import main
from vae_deploy.errors import CheckpointError, ConfigError
from vae_deploy.runtime.batcher import MicroBatcher
from vae_deploy.runtime.core import Runtime

FP32_ATOL = 1e-5
AKL_ATOL = 1e-4  # AutoencoderKL: deep GroupNorm/attention stack (see adapters/foreign.py)


class ClassicVAE(nn.Module):
    """The classic PyTorch VAE example, narrowed: flattened 784 inputs, Bernoulli decoder."""

    def __init__(self, hidden: int = 32, latent_dim: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


class _ConvEncoder(nn.Module):
    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.mu = nn.Linear(4 * 8 * 8, latent_dim)
        self.logvar = nn.Linear(4 * 8 * 8, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x)
        return self.mu(h), self.logvar(h)


class _ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(latent_dim, 4 * 8 * 8)
        self.up = nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(F.relu(self.fc(z)).view(-1, 4, 8, 8)))


class SubmoduleVAE(nn.Module):
    """Halves as submodules (no encode/decode methods): 1x16x16 images, flat latent."""

    def __init__(self, latent_dim: int = 6) -> None:
        super().__init__()
        self.encoder = _ConvEncoder(latent_dim)
        self.decoder = _ConvDecoder(latent_dim)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These models are tiny: a second torch thread only adds synchronisation, and on a loaded
    2-core machine its spin-waiting doubled this file's CPU time (82 s -> 36 s measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_autoencoder_kl() -> nn.Module:
    diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")
    torch.manual_seed(0)
    # norm_num_groups=4 keeps >= 2 channels per group, as in every real AutoencoderKL (SD: 128
    # channels / 32 groups). With one channel per group an all-zero image sits exactly on
    # GroupNorm's zero-variance point and eager itself moves by 0.7 for a 1e-6 input change.
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.18215,
    ).eval()


def _seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _max_abs(result: dict) -> dict[str, float]:
    return {r["candidate"]: r["summary"]["max_abs_error"] for r in result["reports"]}


# --- the two small styles ----------------------------------------------------------------------

SMALL = {
    "classic": (ClassicVAE, (784,), (8,), "encode_decode"),
    "submodules": (SubmoduleVAE, (1, 16, 16), (6,), "encoder_decoder"),
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def small_export(request, tmp_path_factory):
    cls, input_shape, latent_shape, adapter = SMALL[request.param]
    torch.manual_seed(0)
    model = cls().eval()
    out = tmp_path_factory.mktemp(request.param) / "export"
    result = vae_deploy.export(model, out, example_input=_seeded(3, *input_shape), batch_sizes=(1, 4))
    return model, out, result.manifest, input_shape, latent_shape, adapter


def test_small_models_export_and_verify(small_export):
    model, out, manifest, input_shape, latent_shape, adapter = small_export
    m = manifest["model"]
    assert (m["family"], m["config"]["adapter"]) == (adapter, adapter)
    assert m["input_shape"] == list(input_shape) and m["latent_shape"] == list(latent_shape)
    assert m["likelihood"] == "unknown" and m["dynamic_axes"] == ["batch"]
    assert m["example_input_shape"] == list(input_shape)
    assert sorted(manifest["files"]) == ["decoder.onnx", "decoder.ts", "encoder.onnx", "encoder.ts"]
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_error"] <= FP32_ATOL
    # verify again from the in-memory module, at other batch sizes and another example input
    result = vae_deploy.verify(model, out, example_input=_seeded(2, *input_shape, seed=1), batch_sizes=(2, 7))
    assert result["passed"], result
    fp32 = {k: v for k, v in _max_abs(result).items() if not k.endswith("-bf16")}  # + openvino-* when installed
    assert {"torchscript", "ort-cpu"} <= set(fp32) <= {"torchscript", "ort-cpu", "openvino-cpu"}
    assert max(fp32.values()) <= FP32_ATOL


def test_small_models_run_on_the_runtime(small_export):
    model, out, _, input_shape, latent_shape, _ = small_export
    rt = Runtime.load(out, provider="cpu")
    samples = rt.sample(5, seed=0)
    assert samples.shape == (5, *input_shape)
    np.testing.assert_array_equal(samples, rt.sample(5, seed=0))
    x = _seeded(9, *input_shape, seed=2).numpy()
    with torch.no_grad():
        expected = model.decode(model.encode(torch.from_numpy(x))[0]) if hasattr(model, "decode") else \
            model.decoder(model.encoder(torch.from_numpy(x))[0])
    np.testing.assert_allclose(rt.reconstruct(x), expected.numpy(), atol=FP32_ATOL, rtol=1e-5)
    mu, logvar = rt.encode(x)
    assert mu.shape == logvar.shape == (9, *latent_shape)


# --- diffusers' AutoencoderKL: spatial latent, dynamic batch, height and width -------------------


@pytest.fixture(scope="module")
def akl_export(tmp_path_factory):
    model = tiny_autoencoder_kl()
    out = tmp_path_factory.mktemp("akl") / "export"
    x = _seeded(2, 3, 32, 32) * 2 - 1  # diffusers' VAEs take images in [-1, 1]
    result = vae_deploy.export(model, out, example_input=x, batch_sizes=(1, 3))
    return model, out, result.manifest


def test_autoencoder_kl_manifest_and_graphs(akl_export):
    import onnx

    _, out, manifest = akl_export
    m = manifest["model"]
    assert m["family"] == "diffusers.AutoencoderKL"
    assert m["input_shape"] == [3, -1, -1] and m["latent_shape"] == [4, -1, -1] and m["latent_dim"] == -1
    assert m["example_input_shape"] == [3, 32, 32] and m["example_latent_shape"] == [4, 16, 16]
    assert m["dynamic_axes"] == ["batch", "height", "width"]
    assert m["scaling_factor"] == pytest.approx(0.18215)
    assert m["config"]["encode"] == "module.encode(x).latent_dist(.mean, .logvar)"
    assert m["config"]["decode"] == "module.decode(z).sample"
    # 32x32 parity measured at export, ONNX and TorchScript
    parity = manifest["parity"]
    assert parity["passed"] and set(parity["backends"]) == {"ort-cpu", "torchscript"}
    assert parity["max_abs_error"] <= AKL_ATOL
    enc, dec = onnx.load(str(out / "encoder.onnx")), onnx.load(str(out / "decoder.onnx"))

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert dims(enc.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(dec.graph.input[0]) == ["batch", 4, "latent_height", "latent_width"]
    meta = {p.key: p.value for p in dec.metadata_props}
    assert meta["vae_deploy.latent_shape"] == "4,-1,-1" and meta["vae_deploy.example_latent_shape"] == "4,16,16"
    assert meta["vae_deploy.dynamic_axes"] == "batch,height,width" and meta["vae_deploy.scaling_factor"] == "0.18215"


def test_autoencoder_kl_verifies_at_another_image_size(akl_export):
    model, out, _ = akl_export
    x48 = _seeded(2, 3, 48, 48, seed=3) * 2 - 1
    result = vae_deploy.verify(model, out, example_input=x48, batch_sizes=(1, 2))
    assert result["passed"], result
    assert max(v for k, v in _max_abs(result).items() if not k.endswith("-bf16")) <= AKL_ATOL  # bf16: its own gate
    decoder_case = next(r for r in result["reports"] if r["candidate"] == "torchscript")["inputs"]["decoder"]
    assert "[N, 4, 24, 24]" in decoder_case  # decoder checked at the 48x48 image's latent size


def test_autoencoder_kl_runtime_samples_and_reconstructs(akl_export):
    model, out, _ = akl_export
    rt = Runtime.load(out, provider="cpu")
    assert rt.sample(2, seed=0).shape == (2, 3, 32, 32)  # default: the example latent size
    assert rt.sample(1, seed=0, latent_shape=(4, 20, 12)).shape == (1, 3, 40, 24)
    with pytest.raises(ValueError, match=r"latent_shape must fit \[4, \?, \?\]"):
        rt.sample(1, latent_shape=(3, 8, 8))
    x = (_seeded(3, 3, 48, 40, seed=4) * 2 - 1).numpy()
    with torch.no_grad():
        t = torch.from_numpy(x)
        expected = model.decode(model.encode(t).latent_dist.mean).sample.numpy()
    np.testing.assert_allclose(rt.reconstruct(x), expected, atol=AKL_ATOL, rtol=1e-5)
    # the micro-batcher batches only requests of one size, and samples at the example size
    small, big = x[:, :, :32, :32], x[:1]
    with MicroBatcher(rt, max_delay_ms=20) as mb:
        futures = [mb.submit("encode", a) for a in (small[0], big, small[1:])]
        mus = [f.result(30)[0] for f in futures]
        assert mb.sample(2, seed=0).shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(mus[0], rt.encode(small[0])[0])
    assert mus[1].shape == (1, 4, 24, 20) and mus[2].shape == (2, 4, 16, 16)


# --- the command line: --model package.module:factory --weights state_dict.pt ------------------

USER_MODULE = '''
import torch
from torch import nn


class MyVAE(nn.Module):
    def __init__(self, latent_dim=3):
        super().__init__()
        self.enc = nn.Linear(12, 2 * latent_dim)
        self.dec = nn.Linear(latent_dim, 12)

    def encode(self, x):
        return tuple(self.enc(x).chunk(2, dim=1))

    def decode(self, z):
        return torch.tanh(self.dec(z))


def build(latent_dim=3):
    return MyVAE(latent_dim)


def not_a_module():
    return 42
'''


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A folder with the user's module and its weights, as the cwd; sys.path/modules restored."""
    (tmp_path / "my_vae_pkg.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_vae_pkg", raising=False)
    sys.path.insert(0, str(tmp_path))
    import my_vae_pkg

    torch.manual_seed(0)
    model = my_vae_pkg.build(latent_dim=5)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    sys.path.remove(str(tmp_path))
    del sys.modules["my_vae_pkg"]
    return tmp_path, model


def test_cli_exports_a_user_module(user_project):
    root, model = user_project
    res = CliRunner().invoke(main, ["export", "--model", "my_vae_pkg:build", "--weights", "weights.pt",
                                    "--input-shape", "12", "--latent-dim", "5", "--likelihood", "gaussian",
                                    "--format", "onnx", "--out", "exp"])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output
    manifest = json.loads((root / "exp" / "manifest.json").read_text())
    assert manifest["model"]["latent_shape"] == [5] and manifest["model"]["likelihood"] == "gaussian"
    assert manifest["source"]["path"] == str(root / "weights.pt")  # absolute: resolves from anywhere
    assert manifest["model"]["config"]["factory"] == "my_vae_pkg:build"
    assert manifest["parity"]["backends"]["ort-cpu"]["elbo_rel_diff"] is not None  # gaussian: ELBO checked
    x = _seeded(4, 12).numpy()
    with torch.no_grad():
        expected = model.decode(model.encode(torch.from_numpy(x))[0]).numpy()
    np.testing.assert_allclose(Runtime.load(root / "exp").reconstruct(x), expected, atol=FP32_ATOL)
    # the CLI verify path rebuilds the module the same way
    res = CliRunner().invoke(main, ["verify", "exp", "--model", "my_vae_pkg:build", "--weights", "weights.pt",
                                    "--input-shape", "12", "--latent-dim", "5", "--likelihood", "gaussian",
                                    "--batch-sizes", "1,3"])
    assert res.exit_code == 0, res.output
    # without --model, verify uses the factory and weights the manifest records, from any folder
    (root / "elsewhere").mkdir()
    os.chdir(root / "elsewhere")
    res = CliRunner().invoke(main, ["verify", "../exp", "--batch-sizes", "1,3"])
    assert res.exit_code == 0, res.output
    assert "against eager (my_vae_pkg:build with " in res.output and "RESULT: PASS" in res.output
    # once the weights are gone, it explains that it needs --model
    os.chdir(root)
    (root / "weights.pt").rename(root / "moved.pt")
    res = CliRunner().invoke(main, ["verify", "exp"])
    assert res.exit_code == 1 and "no longer resolve" in res.output and "--model package.module:factory" in res.output


@pytest.mark.parametrize("args, message", [
    ([], "give a CHECKPOINT, or --model"),
    (["ckpt.pt", "--model", "my_vae_pkg:build", "--weights", "weights.pt"], "not both"),
    (["--model", "my_vae_pkg:build"], "--model needs --weights"),
    (["ckpt.pt", "--weights", "weights.pt"], "--weights only apply with --model"),
    (["--model", "my_vae_pkg", "--weights", "weights.pt"], "must look like 'package.module:factory'"),
    (["--model", "no_such_pkg:build", "--weights", "weights.pt"], "cannot import 'no_such_pkg'"),
    (["--model", "my_vae_pkg:buld", "--weights", "weights.pt"], "has no 'buld'; callables there: MyVAE, build"),
    (["--model", "my_vae_pkg:not_a_module", "--weights", "weights.pt"], "returned a int; expected a torch.nn.Module"),
    (["--model", "my_vae_pkg:build", "--weights", "garbage.pt"], "not a weights file torch.load(weights_only=True)"),
    (["--model", "my_vae_pkg:build", "--weights", "nested.pt"], "holds a state dict under 'state_dict'"),
    (["--model", "my_vae_pkg:build", "--weights", "weights.pt", "--latent-dim", "4"],
     "shape mismatch (3): enc.weight: file [10, 12], model [8, 12]"),
    (["--model", "my_vae_pkg:build", "--weights", "weights.pt", "--latent-dim", "5", "--input-shape", "13"],
     "module.encode(x) with x Tensor[2, 13] float32 raised RuntimeError"),
])
def test_cli_errors_are_clear(user_project, args, message):
    root, model = user_project
    (root / "garbage.pt").write_bytes(b"not a zip file")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, root / "nested.pt")
    res = CliRunner().invoke(main, ["export", *args, "--out", "exp"])
    assert res.exit_code != 0
    assert message in res.output, res.output
    assert not (root / "exp").exists()


# --- detection errors name what was looked for and what came back ------------------------------


class NotAVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 4)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # one tensor: a plain autoencoder
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SamplingVAE(ClassicVAE):
    def encode(self, x: torch.Tensor):  # returns (z, logvar): a sample, not the posterior mean
        mu, logvar = super().encode(x)
        return self.reparameterize(mu, logvar), logvar


class EncoderOnly(ClassicVAE):
    decode = None


def test_module_that_fits_no_adapter_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigError) as err:
        vae_deploy.export(NotAVAE(), tmp_path / "e", example_input=torch.rand(2, 4))
    msg = str(err.value)
    assert "cannot export a NotAVAE: no adapter fits it on the example input Tensor[2, 4] float32" in msg
    assert "module.encode(x) returned Tensor[2, 4] float32; expected a (mu, logvar) tuple" in msg
    with pytest.raises(ConfigError, match=r"module.encode\(x\) gave \(mu, logvar\) Tensor\[2, 8\] float32, but "
                                          "module has no callable 'decode'"):
        vae_deploy.export(EncoderOnly(), tmp_path / "e", example_input=torch.rand(2, 784))
    assert "encoder_decoder (submodules encoder(x) and decoder(z)): module has no callable 'encoder'" in msg
    assert ".latent_dist" in msg and ".sample" in msg
    with pytest.raises(ConfigError, match="not deterministic"):
        vae_deploy.export(SamplingVAE(), tmp_path / "e", example_input=torch.rand(2, 784))
    with pytest.raises(ConfigError, match="cannot export a int: expected a checkpoint path"):
        vae_deploy.export(42, tmp_path / "e")
    assert not (tmp_path / "e").exists()


class FixedBatchVAE(ClassicVAE):
    def encode(self, x: torch.Tensor):  # eager works at any batch; jit.trace freezes int(...) to 2
        mu, logvar = super().encode(x)
        n = int(x.shape[0])
        return mu.reshape(n, -1), logvar.reshape(n, -1)


def test_trace_frozen_to_the_example_size_is_refused(tmp_path):
    from vae_deploy.errors import ExportError

    model, x = FixedBatchVAE().eval(), torch.rand(2, 784)
    with pytest.raises(ExportError, match=r"TorchScript export of the encoder failed: .*does not generalise to input "
                                          r"\[5, 784\]: output 0 has shape \[2, 20\], eager \[5, 8\]"):
        vae_deploy.export(model, tmp_path / "e", example_input=x, formats=("torchscript",))
    assert not (tmp_path / "e").exists()


def test_state_dict_loading_errors(tmp_path):
    from vae_deploy.adapters.user_code import load_state_dict

    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pt")
