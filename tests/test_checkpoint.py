"""Checkpoints: exact round trip, and every kind of bad file refused with one clear error."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tests.conftest import tiny_model
from vae_deploy.errors import CheckpointError
from vae_deploy.training.checkpoint import FORMAT_NAME, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_round_trip_is_exact(tmp_path, family):
    model = tiny_model(family, seed=3)
    path = save_checkpoint(tmp_path / "c.pt", model, {"note": "hi"})
    raw = torch.load(path, weights_only=True)  # the contract: plain weights_only loading works
    assert raw["format"] == {"name": FORMAT_NAME, "version": 1}
    ckpt = load_checkpoint(path)
    assert ckpt.config == model.config
    assert ckpt.meta["note"] == "hi" and "torch" in ckpt.meta["versions"]
    assert ckpt.state_dict.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.state_dict[k], v), k
    assert len(ckpt.sha256) == 64
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(ckpt.build_model().encode(x)[0], model.encode(x)[0])


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": {"name": FORMAT_NAME, "version": 1}, "config": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused without being run"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_truncated_file(tmp_path):
    good = save_checkpoint(tmp_path / "c.pt", tiny_model("mlp"))
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged, truncated"):
        load_checkpoint(bad)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"state_dict": {}}, "not a vae-deploy checkpoint"),
        ({"format": {"name": "other", "version": 1}}, "expected name 'vae-deploy-checkpoint'"),
        ({"format": {"name": FORMAT_NAME, "version": 99}}, "format version 99"),
        ({"format": {"name": FORMAT_NAME, "version": 1}, "config": {"family": "mlp"}}, "entry 'state_dict'"),
        (
            {"format": {"name": FORMAT_NAME, "version": 1}, "config": {"family": "gru"}, "state_dict": {}, "meta": {}},
            "invalid config",
        ),
        (
            {"format": {"name": FORMAT_NAME, "version": 1}, "config": {}, "state_dict": {"w": torch.ones(1)}, "meta": {}},
            "do not fit its config",
        ),
    ],
)
def test_foreign_or_inconsistent_files(tmp_path, payload, message):
    path = tmp_path / "x.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_and_non_torch_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    p = tmp_path / "text.pt"
    p.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        load_checkpoint(p)
    p2 = tmp_path / "pickle.pt"
    p2.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(p2)
