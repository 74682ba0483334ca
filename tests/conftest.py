"""Shared fixtures: tiny seeded models and checkpoints, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vae_deploy.training.checkpoint import save_checkpoint
from vae_deploy.training.data import load_dataset
from vae_deploy.training.model import VAE, VAEConfig

TINY = {
    "mlp": VAEConfig(family="mlp", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,)),
    "conv": VAEConfig(family="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(4, 8, 16)),
}


def tiny_model(family: str, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(TINY[family]).eval()


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory, digits) -> dict[str, Path]:
    """A seeded, briefly trained checkpoint per family (trained so outputs are not trivial)."""
    from vae_deploy.training.train import TrainConfig, checkpoint_meta, train

    out = {}
    root = tmp_path_factory.mktemp("ckpts")
    for family, cfg in TINY.items():
        tcfg = TrainConfig(epochs=2, batch_size=256, seed=0)
        result = train(cfg, digits, tcfg, progress=False)
        out[family] = save_checkpoint(root / f"{family}.pt", result.model, checkpoint_meta(digits, tcfg, result))
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def exports(tmp_path_factory, tiny_ckpts) -> dict[str, Path]:
    """Each tiny checkpoint exported (ONNX + TorchScript, verified) once per session."""
    from vae_deploy.exporters import export

    root = tmp_path_factory.mktemp("exports")
    return {family: export(ckpt, root / family).out_dir for family, ckpt in tiny_ckpts.items()}


def copy_export(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


class SpatialToyVAE(torch.nn.Module):
    """A diffusers-style toy: C x 8 x 8 images, a multi-dimensional latent [2, 4, 4]."""

    latent_shape = (2, 4, 4)

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.input_shape = (channels, 8, 8)
        self.enc = torch.nn.Conv2d(channels, 4, 4, stride=2, padding=1)
        self.dec = torch.nn.ConvTranspose2d(2, channels, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(z))

    def exportable(self, family: str = "toy"):
        from vae_deploy.exporters.spec import DecoderGraph, EncoderGraph, Exportable, ExportSpec

        gen = torch.Generator().manual_seed(0)
        spec = ExportSpec(input_shape=self.input_shape, latent_shape=self.latent_shape, family=family)
        return Exportable(
            EncoderGraph(self.encode, self), DecoderGraph(self.decode, self), spec,
            torch.rand((2, *self.input_shape), generator=gen), torch.randn((2, *self.latent_shape), generator=gen),
        )


def spatial_toy_export(out: Path, channels: int, family: str = "toy") -> Path:
    """Export a seeded ``SpatialToyVAE`` (ONNX only, unverified: its numbers don't matter)."""
    from vae_deploy.exporters import export

    torch.manual_seed(0)
    return export(SpatialToyVAE(channels).eval().exportable(family), out, formats=("onnx",), verify=False).out_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """diffusers test modules run torch on one thread: the CI machine has 2 cores and the
    exports beside them use both; results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
