"""Training features: exact resume, divergence, keep-best and early stopping, metric logs, devices."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.test_data_sources import write_images
from vae_deploy.cli import main
from vae_deploy.training.checkpoint import load_checkpoint
from vae_deploy.training.model import VAEConfig
from vae_deploy.training.train import TrainConfig, train

SMALL = ["--hidden", "16", "--latent-dim", "3", "--batch-size", "256"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]  # the checkpoint contract: weights_only loads it


@pytest.mark.parametrize("keep", ["last", "best"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, keep):
    a, b, full = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "full.pt"
    common = [*SMALL, "--keep", keep, "--kl-warmup", "3", "--seed", "5", "--quiet"]
    assert run("train", "--epochs", "2", "--out", str(a), *common).exit_code == 0
    res = run("train", "--resume", str(a), "--epochs", "4", "--out", str(b), "--quiet")
    assert res.exit_code == 0, res.output
    assert run("train", "--epochs", "4", "--out", str(full), *common).exit_code == 0
    wb, wf = weights(b), weights(full)
    assert wb.keys() == wf.keys() and all(torch.equal(wb[k], wf[k]) for k in wb)
    hb, hf = load_checkpoint(b).meta["history"], load_checkpoint(full).meta["history"]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in hb]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in hf] and len(hb) == 4
    state_b, state_f = load_checkpoint(b).train_state, load_checkpoint(full).train_state
    assert torch.equal(state_b["rng"], state_f["rng"]) and state_b["epoch"] == 4
    again = run("train", "--resume", str(b), "--epochs", "4", "--out", str(tmp_path / "c.pt"))
    assert again.exit_code == 1 and "already trained 4 epochs" in again.output


def test_resume_refuses_options_that_come_from_the_checkpoint(tmp_path):
    a = tmp_path / "a.pt"
    assert run("train", "--epochs", "1", "--out", str(a), *SMALL, "--quiet").exit_code == 0
    res = run("train", "--resume", str(a), "--family", "conv", "--lr", "0.1", "--epochs", "2")
    assert res.exit_code == 2 and "--family, --lr: taken from the checkpoint" in res.output


def test_divergence_exits_1_and_writes_nothing(tmp_path, monkeypatch):
    """--lr is bounded (1e30 is a usage error), so the blow-up is forced inside the optimiser, as a
    bad model or data set would cause it, and the CLI must still end in one line."""
    import torch

    real_adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: real_adam(params, lr=1e30))
    out = tmp_path / "c.pt"
    out.write_bytes(b"an earlier file the user keeps")
    assert run("train", "--lr", "1e30", "--out", str(out), *SMALL).exit_code == 2
    res = run("train", "--lr", "0.001", "--epochs", "3", "--out", str(out), *SMALL)
    assert res.exit_code == 1, res.output
    assert "Error: training diverged" in res.output and "no checkpoint was written" in res.output, res.output
    assert "Traceback" not in res.output
    assert out.read_bytes() == b"an earlier file the user keeps"
    assert not [p for p in tmp_path.iterdir() if p.name != "c.pt"]  # no temporary file left either


def test_keep_best_and_patience(digits, monkeypatch):
    """Scripted per-epoch test -ELBO: best at epoch 2, then 2 epochs without improvement stop training."""
    import vae_deploy.training.train as training

    real, scripted = training.evaluate, iter([50.0, 40.0, 45.0, 41.0, 30.0])

    def fake(model, x, *, samples=10, seed=1234):
        out = real(model, x[:4], samples=1)
        return {**out, "test_nelbo": next(scripted)} if samples == 1 else real(model, x, samples=samples)

    monkeypatch.setattr(training, "evaluate", fake)
    cfg = VAEConfig(family="mlp", latent_dim=3, hidden=(16,))
    result = train(cfg, digits, TrainConfig(epochs=5, batch_size=256, keep="best", patience=2), progress=False)
    m = result.metrics
    assert m["epochs_run"] == 4 and m["stopped_early"] and m["best_epoch"] == 2 and m["kept_epoch"] == 2
    monkeypatch.setattr(training, "evaluate", real)
    two = train(cfg, digits, TrainConfig(epochs=2, batch_size=256), progress=False)  # same seed: epoch 2's weights
    for k, v in two.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[k], v), k
    last = result.state["model"]  # the last (epoch 4) weights are kept too, for --resume
    assert any(not torch.equal(last[k], v) for k, v in two.model.state_dict().items())


def test_per_epoch_lines_csv_and_info_history(tmp_path):
    out, log = tmp_path / "c.pt", tmp_path / "logs" / "m.csv"
    res = run("train", "--epochs", "3", "--out", str(out), "--log-csv", str(log), "--threads", "1", *SMALL)
    assert res.exit_code == 0, res.output
    assert "1 threads" in res.output
    for e in (1, 2, 3):  # not a terminal: one line per epoch, with the test metric split in two
        assert f"epoch {e}/3  train " in res.output
    assert "test -ELBO" in res.output and "(recon " in res.output and "+ KL " in res.output
    rows = list(csv.DictReader(log.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "test_nelbo", "test_recon", "test_kl"} <= rows[0].keys()
    assert float(rows[2]["test_nelbo"]) == pytest.approx(float(rows[2]["test_recon"]) + float(rows[2]["test_kl"]))
    info = run("info", str(out))
    assert info.exit_code == 0 and '"epochs": 3' in info.output and '"best"' in info.output
    assert '"resumable": true' in info.output
    table = run("info", str(out), "--history")
    lines = table.output.strip().splitlines()
    assert table.exit_code == 0 and lines[0].startswith("epoch\tbeta\ttrain_loss") and len(lines) == 4


def test_tensorboard_event_files_parse_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    res = run("train", "--family", "conv", "--hidden", "4,8", "--latent-dim", "3", "--epochs", "3",
              "--image-every", "2", "--tensorboard", str(tb), "--out", str(tmp_path / "c.pt"), "--quiet")
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(tb), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/train", "test/nelbo", "test/recon", "test/kl", "beta"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("test/nelbo")] == [1, 2, 3]
    assert {"samples", "reconstructions"} <= set(tags["images"])
    assert [e.step for e in acc.Images("samples")] == [2, 3]  # every 2 epochs and at the end
    img = acc.Images("reconstructions")[-1]
    assert img.width > 0 and img.height > 0 and img.encoded_image_string[:4] == b"\x89PNG"


def test_cli_trains_on_an_image_folder_and_on_channels_last_arrays(tmp_path):
    root = write_images(tmp_path / "imgs", n=10, size=(8, 12), mode="RGB")
    res = run("train", "--data", str(root), "--family", "conv", "--hidden", "4,8", "--latent-dim", "2",
              "--epochs", "1", "--out", str(tmp_path / "f.pt"), "--quiet")
    assert res.exit_code == 0, res.output
    assert "of shape [3, 8, 12] (uint8)" in res.output
    assert load_checkpoint(tmp_path / "f.pt").meta["data"]["channels"] == 3
    p = tmp_path / "nhwc.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    res = run("train", "--data", str(p), "--epochs", "1", "--out", str(tmp_path / "a.pt"), "--quiet", *SMALL)
    assert res.exit_code == 0, res.output
    assert "note: " in res.output and "channels-last" in res.output and "of shape [3, 8, 8]" in res.output
    amb = tmp_path / "amb.npy"
    np.save(amb, np.zeros((20, 3, 8, 3), np.float32))
    res = run("train", "--data", str(amb), "--epochs", "1", "--out", str(tmp_path / "b.pt"), *SMALL)
    assert res.exit_code == 1 and "--layout" in res.output and not (tmp_path / "b.pt").exists()
    res = run("train", "--data", str(tmp_path / "nothing-here"), "--epochs", "1")
    assert res.exit_code == 1 and "folder of images" in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the refusal cannot happen")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    res = run("train", "--device", "cuda", "--epochs", "1", "--out", str(tmp_path / "c.pt"))
    assert res.exit_code == 1 and "Error: --device cuda: torch sees no CUDA device" in res.output
    assert not (tmp_path / "c.pt").exists()


def test_tensorboard_missing_is_reported_before_training(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("tensorboard") or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    res = run("train", "--tensorboard", str(tmp_path / "tb"), "--epochs", "1", "--out", str(tmp_path / "c.pt"))
    assert res.exit_code == 1 and "vae-deploy[tensorboard]" in res.output and "training" not in res.output
