"""Parity: the matrix over family x backend x batch size, the failure cases verify must catch,
and the JSON report's schema (golden file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tests.conftest import copy_export
from vae_deploy.adapters import from_checkpoint
from vae_deploy.checks.parity import DEFAULT_TOLERANCES, Tolerance, compare_arrays, compare_backends
from vae_deploy.checks.verify import verify_export
from vae_deploy.cli import main
from vae_deploy.exporters.manifest import file_entry
from vae_deploy.runtime.backends import TorchBackend
from vae_deploy.runtime.core import Runtime
from vae_deploy.training.checkpoint import file_sha256, load_checkpoint

GOLDEN = Path(__file__).parent / "golden" / "verify_report_schema.json"


def _backend(kind: str, folder: Path):
    if kind == "torchscript":
        return TorchBackend.from_torchscript(folder)
    return Runtime.load(folder, provider="cpu")


@pytest.fixture(scope="module")
def eagers(tiny_ckpts):
    out = {}
    for family, path in tiny_ckpts.items():
        exp = from_checkpoint(load_checkpoint(path))
        out[family] = TorchBackend(exp.encoder, exp.decoder, exp.spec, name="eager")
    return out


@pytest.mark.parametrize("batch_size", [1, 7, 64, 257], ids=lambda b: f"bs{b}")
@pytest.mark.parametrize("backend", ["ort-cpu", "torchscript"])
@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_parity_matrix(exports, eagers, digits, family, backend, batch_size):
    report = compare_backends(eagers[family], _backend(backend, exports[family]), digits.test,
                              batch_sizes=(batch_size,), edge_cases=False, elbo=False)
    s = report["summary"]
    assert s["passed"], report
    assert s["max_abs_error"] <= 1e-5
    for case in report["cases"]:
        for out in case["outputs"].values():
            assert out["nan_out"] == out["inf_out"] == 0
            assert out["shape"][0] == batch_size


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_edge_inputs_and_elbo(exports, eagers, digits, family):
    report = compare_backends(eagers[family], _backend("ort-cpu", exports[family]), digits.test, batch_sizes=(7,))
    inputs = {c["input"] for c in report["cases"]}
    assert {"zeros", "ones", "+4sigma", "-4sigma", "real", "normal"} <= inputs
    assert report["elbo"]["passed"] and report["elbo"]["rel_diff"] <= 1e-4
    assert report["elbo"]["n_examples"] == len(digits.test)


def test_compare_arrays_statistics():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    out = ref.copy()
    out[1, 0] += 0.5
    s = compare_arrays(ref, out, Tolerance(1e-5, 0.0))
    assert not s["passed"] and s["worst_index"] == [1, 0]
    assert s["max_abs"] == pytest.approx(0.5) and s["max_rel"] == pytest.approx(0.5 / 3)
    assert s["min_atol_to_pass"] == pytest.approx(0.5)
    assert compare_arrays(ref, out, Tolerance(0.5, 0.0))["passed"]
    nan = out.copy()
    nan[0, 0] = np.nan
    s = compare_arrays(ref, nan, Tolerance(1.0, 1.0))
    assert not s["passed"] and s["nan_out"] == 1 and s["nan_ref"] == 0
    assert compare_arrays(ref, ref[:1], Tolerance(1, 1))["error"].startswith("shape mismatch")


def test_verify_passes_and_cli_json(tmp_path, exports, tiny_ckpts):
    res = CliRunner().invoke(main, ["verify", str(exports["conv"]), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "RESULT: PASS" in res.output and "ort-cpu vs eager" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["reference"]["sha256"] == file_sha256(tiny_ckpts["conv"])


def _schema(obj):
    if isinstance(obj, dict):
        return {k: _schema(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        merged: dict = {}
        kinds = set()
        for item in obj:
            s = _schema(item)
            if isinstance(s, dict):
                merged.update(s)
            else:
                kinds.add(json.dumps(s))
        return [merged] if merged else sorted(kinds)
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, (int, float)):
        return "number"
    if obj is None:
        return "null"
    return "string"


def test_json_report_keeps_its_schema(exports):
    report = verify_export(exports["mlp"], batch_sizes=(1, 7))
    schema = _schema(report)
    # per-case output names vary (mu/logvar vs x_hat) and are covered by the merge above
    if not GOLDEN.exists():  # first run writes the golden file; commit it
        GOLDEN.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    assert schema == json.loads(GOLDEN.read_text()), "the verify JSON schema changed: update tests/golden deliberately"


def _alter_weights(folder: Path, name: str = "decoder.onnx", update_checksum: bool = False) -> None:
    m = onnx.load(str(folder / name))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(folder / name))
    if update_checksum:
        manifest = json.loads((folder / "manifest.json").read_text())
        e = manifest["files"][name]
        manifest["files"][name] = file_entry(folder / name, role=e["role"], fmt=e["format"], precision=e["precision"])
        (folder / "manifest.json").write_text(json.dumps(manifest))


def _verify_cli(folder: Path, *extra: str):
    return CliRunner().invoke(main, ["verify", str(folder), "--batch-sizes", "1,7", *extra])


def test_catches_weights_altered_without_checksum_update(tmp_path, exports):
    folder = copy_export(exports["mlp"], tmp_path / "e")
    _alter_weights(folder)
    res = _verify_cli(folder)
    assert res.exit_code == 1
    assert "decoder.onnx: sha256 does not match the manifest (modified after export)" in res.output
    assert "ort-cpu vs eager" in res.output and "FAIL" in res.output  # and how far off it is


def test_catches_weights_altered_with_checksum_updated(tmp_path, exports):
    folder = copy_export(exports["mlp"], tmp_path / "e")
    _alter_weights(folder, update_checksum=True)
    report = verify_export(folder, batch_sizes=(1, 7))
    assert report["integrity"]["passed"]  # the checksums were forged...
    onnx_report = next(r for r in report["reports"] if r["candidate"] == "ort-cpu")
    assert not onnx_report["summary"]["passed"]  # ...but the numbers give it away
    assert any(c.startswith("decoder/") for c in onnx_report["summary"]["failed"])
    assert not report["passed"]


def test_catches_truncated_file(tmp_path, exports):
    folder = copy_export(exports["mlp"], tmp_path / "e")
    p = folder / "encoder.onnx"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    res = _verify_cli(folder)
    assert res.exit_code == 1
    assert "encoder.onnx: size" in res.output and "truncated" in res.output
    assert "cannot load" in res.output or "cannot be parsed" in res.output


def test_catches_graph_from_a_different_checkpoint(tmp_path, exports, tiny_ckpts, digits):
    from vae_deploy.training.checkpoint import save_checkpoint
    from vae_deploy.training.train import TrainConfig, train

    other = train(load_checkpoint(tiny_ckpts["mlp"]).config, digits, TrainConfig(epochs=1, seed=99), progress=False)
    other_path = save_checkpoint(tmp_path / "other.pt", other.model, {"data": digits.spec.to_dict()})
    res = _verify_cli(exports["mlp"], "--checkpoint", str(other_path))
    assert res.exit_code == 1
    assert "exported from a different checkpoint" in res.output


def test_catches_wrong_input_shape_contract(tmp_path, exports):
    folder = copy_export(exports["mlp"], tmp_path / "e")
    for name in ("encoder.onnx", "decoder.onnx"):
        m = onnx.load(str(folder / name))
        for p in m.metadata_props:
            if p.key == "vae_deploy.input_shape":
                p.value = "1,64"
        onnx.save(m, str(folder / name))
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("encoder.onnx", "decoder.onnx"):
        e = manifest["files"][name]
        manifest["files"][name] = file_entry(folder / name, role=e["role"], fmt=e["format"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    res = _verify_cli(folder)
    assert res.exit_code == 1
    assert "metadata input_shape is '1,64', manifest says '1,8,8'" in res.output


def test_tolerances_documented_per_precision():
    assert DEFAULT_TOLERANCES["fp32"].atol == 1e-5
    assert DEFAULT_TOLERANCES["fp16"].atol > DEFAULT_TOLERANCES["fp32"].atol
    assert DEFAULT_TOLERANCES["int8"].atol >= DEFAULT_TOLERANCES["fp16"].atol
