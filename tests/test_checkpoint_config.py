"""A checkpoint whose config is malformed or does not fit its weights is refused in one line,
before any layer is allocated (a config can ask for terabytes)."""

from __future__ import annotations

import time

import pytest
import torch
from click.testing import CliRunner

from vae_deploy.cli import main
from vae_deploy.errors import CheckpointError
from vae_deploy.training.checkpoint import load_checkpoint


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(input_shape="1,8,8"), "input_shape is '1,8,8'; expected a list of integers"),
    (lambda c: c.update(hidden=[10**9]), r"config says \[1000000000, 64\], weights are \[32, 64\]"),
    (lambda c: c.update(hidden=[16]), "do not fit its config"),
    (lambda c: c.update(latent_dim=-3), "latent_dim must be >= 1"),
    (lambda c: c.update(hidden=["a"]), "hidden is"),
], ids=["shape-string", "huge-layer", "smaller-layer", "negative-latent", "hidden-text"])
def test_bad_configs_are_refused_before_allocating(tiny_ckpts, tmp_path, edit, match):
    obj = torch.load(tiny_ckpts["mlp"], weights_only=True)
    obj["config"] = dict(obj["config"])
    edit(obj["config"])
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)
    assert time.perf_counter() - t < 5
    r = CliRunner().invoke(main, ["info", str(bad)])
    assert r.exit_code == 1 and r.output.startswith("Error:") and "Traceback" not in r.output, r.output
