"""The VAE's maths: ELBO against a closed form, gradients, shapes, config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_model
from vae_deploy.errors import ConfigError
from vae_deploy.training.model import VAE, VAEConfig, kl_normal, reparameterize


def test_kl_matches_closed_form_and_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_normal(mu, logvar), expected)
    # the textbook case: mu = 1, sigma = 1 in one dim gives KL = 0.5
    assert kl_normal(torch.ones(1, 1), torch.zeros(1, 1)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_elbo_equals_hand_computed_bernoulli_terms(family):
    model = tiny_model(family)
    torch.manual_seed(1)
    x = torch.rand(6, 1, 8, 8)
    eps = torch.randn(6, 4)
    parts = model.elbo(x, eps=eps)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    probs = model.decode(z)
    recon = -(x * torch.log(probs) + (1 - x) * torch.log(1 - probs)).sum((1, 2, 3)).mean()
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(1).mean()
    torch.testing.assert_close(parts.recon, recon, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(parts.kl, kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.loss, recon + kl, rtol=1e-5, atol=1e-4)
    assert parts.recon > 0 and parts.kl >= 0  # a negative ELBO is a positive loss


def test_elbo_gaussian_closed_form_and_beta():
    cfg = VAEConfig(family="mlp", input_shape=(3,), latent_dim=2, hidden=(4,), likelihood="gaussian", obs_std=0.5)
    torch.manual_seed(0)
    model = VAE(cfg)
    x = torch.randn(4, 3)
    eps = torch.randn(4, 2)
    parts = model.elbo(x, eps=eps, beta=0.25)
    out, mu, logvar = model(x, eps)
    nll = -torch.distributions.Normal(out, 0.5).log_prob(x).sum(1).mean()
    torch.testing.assert_close(parts.recon, nll)
    torch.testing.assert_close(parts.loss, nll + 0.25 * kl_normal(mu, logvar).mean())


def test_reparameterisation_uses_mu_and_logvar():
    mu = torch.tensor([[1.0, -2.0]])
    logvar = torch.tensor([[math.log(4.0), 0.0]])
    eps = torch.tensor([[0.5, 1.0]])
    torch.testing.assert_close(reparameterize(mu, logvar, eps), torch.tensor([[2.0, -1.0]]))


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_gradients_flow_through_mu_and_logvar(family):
    model = tiny_model(family).train()
    x = torch.rand(4, 1, 8, 8)
    model.elbo(x).loss.backward()
    for head in (model.encoder.mu, model.encoder.logvar):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_logvar_is_clamped():
    model = tiny_model("mlp")
    with torch.no_grad():
        model.encoder.logvar.bias.fill_(1e4)
    _, logvar = model.encode(torch.rand(2, 1, 8, 8))
    assert logvar.max().item() == 20.0


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 16)])
def test_conv_family_shapes(shape):
    model = VAE(VAEConfig(family="conv", input_shape=shape, latent_dim=5, hidden=(4, 8))).eval()
    x = torch.rand(3, *shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 5)
    assert model.decode(mu).shape == (3, *shape)
    assert F.binary_cross_entropy(model.decode(mu), x.clamp(0, 1)).isfinite()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"family": "rnn"}, "family must be one of"),
        ({"family": "conv", "input_shape": (1, 10, 10)}, "divisible by 4"),
        ({"family": "conv", "input_shape": (64,)}, "needs input_shape (C, H, W)"),
        ({"latent_dim": 0}, "latent_dim must be >= 1"),
        ({"likelihood": "poisson"}, "likelihood must be one of"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        VAEConfig(**kwargs)


def test_config_dict_round_trip():
    cfg = VAEConfig(family="conv", input_shape=(1, 8, 8), hidden=(4, 8, 16))
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config keys"):
        VAEConfig.from_dict({**cfg.to_dict(), "bogus": 1})
