"""Engines: OpenVINO beside onnxruntime, bf16 refusal, the accuracy gate and the tuning file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from vae_deploy.cli import main
from vae_deploy.errors import EngineError
from vae_deploy.runtime.core import Runtime
from vae_deploy.runtime.engines import cpu, tune

try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:  # the lean install: the extra is optional
    HAVE_OV = False
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="OpenVINO (the 'openvino' extra) is not installed")

NO_BF16 = {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx512_bf16": False, "amx_bf16": False,
           "amx_int8": False}
BF16 = {**NO_BF16, "avx512f": True, "avx512_bf16": True}


@pytest.fixture
def flags(monkeypatch):
    """Pretend to be a CPU with the given key flags (the tuning key and bf16 refusal read them)."""
    def use(f: dict[str, bool]) -> None:
        monkeypatch.setattr(cpu, "cpu_flags", lambda: dict(f))
        monkeypatch.setattr(tune, "cpu_flags", lambda: dict(f))
    return use


@needs_ov
@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_openvino_matches_onnxruntime(exports, family):
    ref = Runtime.load(exports[family], provider="cpu")
    ov = Runtime.load(exports[family], engine="openvino", max_batch=5)
    rng = np.random.default_rng(0)
    x, z = rng.random((7, 1, 8, 8), dtype=np.float32), rng.standard_normal((7, 4), dtype=np.float32)
    np.testing.assert_allclose(ov.decode(z), ref.decode(z), atol=1e-5)
    np.testing.assert_allclose(ov.encode(x)[0], ref.encode(x)[0], atol=1e-5)
    np.testing.assert_allclose(ov.reconstruct(x), ref.reconstruct(x), atol=1e-5)
    assert ov.sample(3, seed=1).shape == (3, 1, 8, 8)
    d = ov.describe()
    assert d["engine"] == "openvino" and d["backend"] == "openvino-cpu" and d["inference_precision"] == "<Type: 'float32'>"


@needs_ov
def test_bf16_refused_without_native_bf16_unless_forced(exports, flags):
    flags(NO_BF16)
    with pytest.raises(EngineError, match="needs a CPU with native bf16.*force"):
        Runtime.load(exports["conv"], engine="openvino", precision="bf16")
    rt = Runtime.load(exports["conv"], engine="openvino", precision="bf16", force_bf16=True)
    assert rt.engine.label == "openvino-cpu-bf16" and rt.files["decoder"].endswith("decoder.onnx")


def test_onnxruntime_has_no_bf16(exports, flags):
    flags(BF16)
    with pytest.raises(EngineError, match="bf16 runs on engine 'openvino'"):
        Runtime.load(exports["mlp"], engine="onnxruntime", precision="bf16")


def test_missing_openvino_names_the_extra(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as on a lean install
    with pytest.raises(EngineError, match=r"pip install 'vae-deploy\[openvino\]'"):
        Runtime.load(exports["mlp"], engine="openvino")
    res = CliRunner().invoke(main, ["sample", str(exports["mlp"]), "-n", "2", "--engine", "openvino"])
    assert res.exit_code == 1 and "Error:" in res.output and "vae-deploy[openvino]" in res.output
    assert "Traceback" not in res.output


def test_tune_records_reuses_and_retunes_on_a_changed_key(exports, tmp_path, flags, monkeypatch):
    flags(NO_BF16)
    path = tmp_path / "tuning.json"
    rec = tune.tune(exports["mlp"], open_runtime=Runtime.load, batch_sizes=(1, 8), rounds=1, round_s=0.001, tuning_file=path)
    data = json.loads(path.read_text())
    (key_id, stored), = data["records"].items()
    assert stored["key"]["cpu_flags"] == NO_BF16 and stored["key"]["graphs_sha256"]
    assert set(rec["batch_sizes"]) == {"1", "8"} and "ort-cpu" in rec["batch_sizes"]["1"]["samples_per_s"]
    if HAVE_OV:  # no native bf16: left out, and the suite says why
        assert "no native bf16" in rec["excluded"]["openvino-cpu-bf16"]
    # the winner is never slower than fp32 onnxruntime in the same measurement
    for cell in rec["batch_sizes"].values():
        assert cell["samples_per_s"][cell["winner"]["backend"]] >= cell["samples_per_s"]["ort-cpu"]

    calls = []
    real = tune.tune
    monkeypatch.setattr(tune, "tune", lambda *a, **k: calls.append(1) or real(*a, **{**k, "rounds": 1,
                                                                                  "round_s": 0.001}))
    rt = Runtime.load(exports["mlp"], engine="auto", precision="auto", tuning_file=path)
    assert calls == [] and "from the tuning file" in rt.describe()["why"]  # reused: no measuring
    flags(BF16)  # another CPU: the key changes, so it re-tunes and keeps both records
    rt = Runtime.load(exports["mlp"], engine="auto", precision="auto", tuning_file=path)
    assert calls == [1] and "tuned now" in rt.describe()["why"]
    assert len(json.loads(path.read_text())["records"]) == 2


def test_gate_excludes_lossy_variants_over_budget(exports, tmp_path, flags):
    flags(BF16)
    rec = tune.tune(exports["conv"], open_runtime=Runtime.load, batch_sizes=(4,), rounds=1, round_s=0.001, tuning_file=tmp_path / "t.json",
                    max_error=1e-9)
    measured = set(rec["batch_sizes"]["4"]["samples_per_s"])
    assert "ort-cpu" in measured
    if HAVE_OV:
        assert "openvino-cpu-bf16" not in measured
        assert "above --max-error" in rec["excluded"]["openvino-cpu-bf16"]
        assert rec["gates"]["openvino-cpu-bf16"]["max_abs_error"] > 1e-9
    rec = tune.tune(exports["conv"], open_runtime=Runtime.load, batch_sizes=(4,), rounds=1, round_s=0.001, tuning_file=tmp_path / "t.json",
                    fp32_only=True)
    assert all(p in ("fp32", "fp32-fast") for p in
               (c["winner"]["precision"] for c in rec["batch_sizes"].values()))
    if HAVE_OV:
        assert rec["excluded"]["openvino-cpu-bf16"] == "lossy precision; fp32-only budget"


def test_broken_candidate_fails_the_gate(exports):
    from vae_deploy.runtime.engines.gate import gate

    ref = Runtime.load(exports["conv"], provider="cpu")
    broken = Runtime.load(exports["conv"], provider="cpu")
    decode = broken._decode
    broken._decode = lambda z: decode(z) + 0.25  # a conversion gone wrong, off at the output's scale
    g = gate(ref, broken, "bf16")
    assert not g["passed"] and "decoder outside atol" in g["reason"] and "-ELBO differs" in g["reason"]
    assert gate(ref, Runtime.load(exports["conv"], provider="cpu"), "fp32")["passed"]


def test_tune_cli_and_bad_options(exports, tmp_path):
    path = tmp_path / "t.json"
    res = CliRunner().invoke(main, ["tune", str(exports["mlp"]), "--batch-sizes", "2", "--rounds", "1",
                                    "--tuning-file", str(path)])
    assert res.exit_code == 0, res.output
    assert "batch 2 at latent [4]:" in res.output and "CPU:" in res.output and path.is_file()
    res = CliRunner().invoke(main, ["tune", str(exports["mlp"]), "--fp32-only", "--max-error", "0.1"])
    assert res.exit_code == 2 and "not both" in res.output
    path.write_text("{not json")
    res = CliRunner().invoke(main, ["sample", str(exports["mlp"]), "-n", "1", "--engine", "auto",
                                    "--tuning-file", str(path)])
    assert res.exit_code == 1 and "not readable JSON" in res.output and "Traceback" not in res.output


def test_runtime_path_imports_no_torch(exports, tmp_path):
    code = (
        "import sys; from vae_deploy.runtime.core import Runtime\n"
        f"rt = Runtime.load({str(exports['mlp'])!r}, engine='auto', precision='auto', "
        f"tuning_file={str(tmp_path / 't.json')!r})\n"
        "rt.sample(2); print(rt.engine.label); assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    if HAVE_OV:
        code += f"Runtime.load({str(exports['mlp'])!r}, engine='openvino').sample(2)\nassert 'torch' not in sys.modules\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@needs_ov
def test_verify_includes_openvino_backends(exports, tiny_ckpts, flags):
    from vae_deploy.checks.verify import verify_export

    flags(BF16)  # bf16 is verified where it is native
    result = verify_export(exports["mlp"], checkpoint=tiny_ckpts["mlp"], batch_sizes=(1, 7), engines=["openvino"])
    reports = {r["candidate"]: r for r in result["reports"]}
    assert set(reports) == {"openvino-cpu", "openvino-cpu-bf16"}, list(reports)
    assert reports["openvino-cpu"]["summary"]["max_abs_error"] <= 1e-5
    bf16 = reports["openvino-cpu-bf16"]
    assert bf16["tolerance"]["atol"] == 0.1 and bf16["elbo"]["rtol"] == 0.005  # the documented bf16 gate
    assert result["passed"], [r["summary"] for r in reports.values()]


def test_verify_engine_openvino_without_the_extra(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    res = CliRunner().invoke(main, ["verify", str(exports["mlp"]), "--engine", "openvino"])
    assert res.exit_code == 1 and "vae-deploy[openvino]" in res.output and "Traceback" not in res.output
