"""NaN/Inf: parity reports them (failure, or agreement where both sides match), never crashes;
a NaN checkpoint is refused by export and verify with one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import tiny_model
from vae_deploy.checks.parity import Tolerance, compare_arrays, compare_backends, format_report
from vae_deploy.cli import main
from vae_deploy.exporters.spec import ExportSpec
from vae_deploy.runtime.backends import TorchBackend
from vae_deploy.training.checkpoint import save_checkpoint

TOL = Tolerance(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ref, out, passed", [
    ([1.0, np.nan, 3.0], [1.0, np.nan, 3.0], True),  # NaN in the same place: agreement
    ([1.0, np.inf, -np.inf], [1.0, np.inf, -np.inf], True),
    ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0], False),  # NaN only in the candidate
    ([np.nan, 2.0], [1.0, 2.0], False),
    ([np.inf, 2.0], [-np.inf, 2.0], False),
    ([np.nan, np.nan], [np.nan, np.nan], True),
])
def test_compare_arrays_with_nonfinite(ref, out, passed):
    s = compare_arrays(np.array(ref), np.array(out), TOL)
    assert s["passed"] is passed
    json.dumps(s, allow_nan=False)  # the JSON report stays valid JSON
    if not passed:
        assert s["nan_ref"] + s["nan_out"] + s["inf_ref"] + s["inf_out"] > 0


def _nan_module(family: str = "mlp") -> torch.nn.Module:
    m = tiny_model(family)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    return m


def test_report_with_nan_outputs_is_a_failure_and_formats(digits):
    good, bad = tiny_model("mlp"), _nan_module()
    spec = ExportSpec(input_shape=(1, 8, 8), latent_shape=(4,))
    ref = TorchBackend(good.encode, good.decode, spec, name="eager")
    cand = TorchBackend(bad.encode, bad.decode, spec, name="nan")
    x = digits.test[:16].astype(np.float32)
    report = compare_backends(ref, cand, x, batch_sizes=(1, 3))
    assert report["summary"]["passed"] is False
    text = format_report(report)
    assert "NaN/Inf in different places" in text and "FAIL" in text
    json.dumps(report, allow_nan=False)
    # both sides NaN everywhere: element-wise agreement, but the ELBO cannot be judged: a failure
    both = compare_backends(cand, cand, x, batch_sizes=(1,))
    assert all(c["passed"] for c in both["cases"])
    assert both["summary"]["passed"] is False and both["elbo"]["error"]  # NaN latents or a NaN -ELBO
    assert "ERROR" in format_report(both)


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("nan") / "nan.pt", _nan_module(), {})


def test_export_of_a_nan_checkpoint_is_one_error_line(nan_ckpt, tmp_path):
    r = CliRunner().invoke(main, ["export", str(nan_ckpt), "--out", str(tmp_path / "export")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]  # after export's progress lines
    assert len(errors) == 1 and "NaN or Inf" in errors[0] and "diverged" in errors[0], r.output
    assert not (tmp_path / "export").exists() and list(tmp_path.iterdir()) == []


def test_verify_against_a_nan_checkpoint_is_one_error_line(nan_ckpt, exports):
    r = CliRunner().invoke(main, ["verify", str(exports["mlp"]), "--checkpoint", str(nan_ckpt)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.startswith("Error:") and "NaN or Inf" in r.output
