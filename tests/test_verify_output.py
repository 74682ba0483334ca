"""verify never passes on the wrong evidence: data paths that resolve from anywhere, rows
labelled by what was really used, loud warnings, --data, one backend name, --json -, the
worst case always shown, bounded relative errors, a readable result object; and every command
that needs a missing extra names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from vae_deploy.checks.parity import Tolerance, compare_arrays
from vae_deploy.checks.report import VerifyResult
from vae_deploy.checks.verify import verify_export
from vae_deploy.cli import main
from vae_deploy.cli.options import friendly_errors
from vae_deploy.training.data import load_dataset


@pytest.fixture(scope="module")
def relative_data_export(tmp_path_factory, digits):
    """A tiny checkpoint trained on `--data mine.npy` given as a relative path, exported."""
    from tests.conftest import TINY
    from vae_deploy.exporters import export
    from vae_deploy.training.checkpoint import save_checkpoint
    from vae_deploy.training.train import TrainConfig, checkpoint_meta, train

    root = tmp_path_factory.mktemp("reldata")
    np.save(root / "mine.npy", np.concatenate([digits.train, digits.test])[:400])
    old = os.getcwd()
    os.chdir(root)
    try:
        ds = load_dataset("mine.npy")
    finally:
        os.chdir(old)
    tcfg = TrainConfig(epochs=1, batch_size=256, seed=0)
    result = train(TINY["mlp"], ds, tcfg, progress=False)
    ckpt = save_checkpoint(root / "ckpt.pt", result.model, checkpoint_meta(ds, tcfg, result))
    return root, ds, export(ckpt, root / "exp", formats=("onnx",)).out_dir


def test_data_spec_records_an_absolute_path_and_checksum(relative_data_export):
    root, ds, _ = relative_data_export
    assert ds.spec.name == "mine.npy" and ds.spec.path == str(root / "mine.npy")
    assert ds.spec.sha256 and len(ds.spec.sha256) == 64


def test_verify_from_another_folder_finds_the_real_data(relative_data_export, tmp_path, monkeypatch):
    _, _, folder = relative_data_export
    monkeypatch.chdir(tmp_path)  # where "mine.npy" does not exist
    result = verify_export(folder, batch_sizes=(1, 7))
    assert result.passed and result["data"]["label"] == "real" and result.warnings == []
    names = [c["name"] for c in result["reports"][0]["cases"]]
    assert "encoder/real/bs=7" in names and "test-set -ELBO" in str(result)


def test_missing_data_is_labelled_random_and_warned_about(relative_data_export, tmp_path):
    root, _, folder = relative_data_export
    (root / "mine.npy").rename(root / "gone.npy")
    try:
        result = verify_export(folder, batch_sizes=(1, 7))
        text = str(result)
        names = [c["name"] for c in result["reports"][0]["cases"]]
        assert "encoder/random/bs=7" in names and not any("/real/" in n for n in names)
        assert result["data"]["label"] == "random" and len(result.warnings) == 1
        assert text.splitlines()[1].startswith("WARNING: the training data") and "--data FILE" in text
        assert text.splitlines()[-1] == "RESULT: PASS (with 1 warning above)"
        assert "test-set -ELBO" not in text and "-ELBO on random inputs (not a test-set figure)" in text
        # --data puts real examples back
        res = CliRunner().invoke(main, ["verify", str(folder), "--batch-sizes", "1,7", "--data", str(root / "gone.npy")])
        assert res.exit_code == 0, res.output
        assert "inputs: real" in res.output and "WARNING" not in res.output and "encoder/real/" in res.output
    finally:
        (root / "gone.npy").rename(root / "mine.npy")


def test_data_option_checks_its_file(relative_data_export, tmp_path):
    _, _, folder = relative_data_export
    res = CliRunner().invoke(main, ["verify", str(folder), "--data", str(tmp_path / "nope.npy")])
    assert res.exit_code == 2 and "--data" in res.output and "not a file" in res.output
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5), np.float32))
    res = CliRunner().invoke(main, ["verify", str(folder), "--data", str(tmp_path / "wrong.npy")])
    assert res.exit_code == 1 and "Error: --data" in res.output and "[1, 8, 8]" in res.output


def test_one_backend_name_and_json_to_stdout(relative_data_export, tmp_path, monkeypatch):
    _, _, folder = relative_data_export
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["verify", str(folder), "--batch-sizes", "1", "--backends", "ort-cpu",
                                    "--json", "-"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # the JSON alone on standard output, the text on stderr
    assert [r["candidate"] for r in report["reports"]] == ["ort-cpu"] and not (tmp_path / "-").exists()
    assert "ort-cpu vs eager" in res.stderr
    res = CliRunner().invoke(main, ["verify", str(folder), "--backends", "onnx-cpu"])
    assert res.exit_code == 1 and "Error: unknown or unavailable backend(s) onnx-cpu" in res.output
    assert "offers ort-cpu" in res.output


def test_the_worst_case_is_always_shown(relative_data_export):
    _, _, folder = relative_data_export
    result = verify_export(folder, batch_sizes=(1, 7, 64))
    for report in result["reports"]:
        worst_case, _, output = report["summary"]["worst"].partition(":")
        rows = [ln for ln in str(result).splitlines() if "<- worst" in ln]
        assert any(ln.split()[:2] == [worst_case, output] for ln in rows), (worst_case, rows)


def test_relative_errors_next_to_zero_are_bounded():
    ref = np.array([1e-7, 0.5, 0.9], np.float32)
    out = ref + np.array([3e-7, 1e-6, 0.0], np.float32)
    s = compare_arrays(ref, out, Tolerance(1e-5, 1e-5))
    assert s["passed"] and s["max_rel"] > 1.0  # 300% "relative error" at 1e-7: meaningless
    assert s["max_rel_significant"] == pytest.approx(2e-6, rel=0.05)  # |ref| >= 1e-3 only
    assert compare_arrays(np.zeros(3), np.zeros(3), Tolerance(1e-5, 1e-5))["max_rel_significant"] is None


def test_verify_result_reads_well(relative_data_export):
    _, _, folder = relative_data_export
    result = verify_export(folder, batch_sizes=(1,), backends=["ort-cpu"])
    assert isinstance(result, VerifyResult) and result.passed is True and result["passed"] is True
    assert json.loads(json.dumps(result.to_dict()))["schema"] == "vae-deploy-verify/1"
    assert str(result).startswith(f"verifying {folder} against eager") and "RESULT: PASS" in str(result)
    assert repr(result) == f"<VerifyResult PASS {str(folder)!r} against eager (ort-cpu: pass)>"


def test_runtime_repr(relative_data_export):
    from vae_deploy.runtime.core import Runtime

    _, _, folder = relative_data_export
    rt = Runtime.load(folder, provider="cpu")
    assert repr(rt) == "<Runtime ort-cpu fp32: x [?, 1, 8, 8] -> z [?, 4], bernoulli, max_batch 1024>"


@pytest.mark.parametrize(("command", "module", "extra"), [
    ("export", "torch", "export"), ("train", "torch", "train"), ("train", "sklearn", "train"),
    ("bench", "matplotlib", "bench"), ("serve", "pytriton.triton", "serve"),
])
def test_a_missing_extra_is_named(command, module, extra):
    @click.command(command)
    @friendly_errors
    def cmd() -> None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 1 and f"pip install 'vae-deploy[{extra}]'" in res.output
    assert res.output.startswith(f"Error: `vae-deploy {command}` needs ") and "Traceback" not in res.output


def test_other_missing_modules_are_not_disguised():
    @click.command("sample")
    @friendly_errors
    def cmd() -> None:
        raise ModuleNotFoundError("No module named 'nowhere'", name="nowhere")

    res = CliRunner().invoke(cmd, [])
    assert isinstance(res.exception, ModuleNotFoundError)


def test_info_json(tiny_ckpts, exports):
    res = CliRunner().invoke(main, ["info", str(tiny_ckpts["mlp"]), "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.stdout)["config"]["family"] == "mlp"
    res = CliRunner().invoke(main, ["info", str(exports["mlp"]), "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.stdout)["format"]["name"] == "vae-deploy-export"


def test_train_json(tmp_path):
    out = tmp_path / "t.json"
    res = CliRunner().invoke(main, ["train", "--epochs", "1", "--quiet", "--out", str(tmp_path / "c.pt"),
                                    "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(Path(out).read_text())
    assert report["checkpoint"] == str(tmp_path / "c.pt") and report["metrics"]["test_nelbo"] > 0
