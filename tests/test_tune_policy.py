"""tune and auto: one budget rule, records keyed by budget and decode size, a tuning file that
is re-checked, type-checked, locked and bounded, and never hangs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vae_deploy.cli import main
from vae_deploy.errors import ConfigError, InputError
from vae_deploy.runtime.core import Runtime
from vae_deploy.runtime.engines import cpu, tune
from vae_deploy.runtime.engines.tune import tune as run_tune  # the real one: fixtures patch tune.tune
from vae_deploy.runtime.engines.tuning_file import MAX_RECORDS, add_record, read_tuning
from vae_deploy.tolerance import (
    Budget,
    budget_accepts,
    make_budget,
    measure_decoder,
    to_8bit,
    tolerance_for,
)

try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:  # the lean install: the extra is optional
    HAVE_OV = False

NO_BF16 = {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx512_bf16": False, "amx_bf16": False,
           "amx_int8": False}
FAST = {"rounds": 1, "round_s": 0.001, "open_runtime": Runtime.load}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: dict(NO_BF16))
    monkeypatch.setattr(tune, "cpu_flags", lambda: dict(NO_BF16))


@pytest.fixture
def tune_calls(monkeypatch):
    """Count the tunes ``auto`` starts, and keep them short."""
    calls: list[dict] = []
    real = tune.tune
    monkeypatch.setattr(tune, "tune", lambda *a, **k: calls.append(k) or real(*a, **{**k, **FAST}))
    return calls


@pytest.fixture(scope="module")
def variants_export(tiny_ckpts, tmp_path_factory) -> Path:
    """The tiny conv VAE (1 x 28 x 28 images) with lossy variants beside fp32."""
    from vae_deploy.exporters import export

    out = tmp_path_factory.mktemp("variants") / "conv"
    return export(tiny_ckpts["conv"], out, formats=("onnx",), precisions=("fp32", "int8", "fp16")).out_dir


# --- the budget rule (tolerance.py) -------------------------------------------------------------

def _images(shift: float, frac: float = 1.0, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    ref = np.random.default_rng(0).random((n, 3, 16, 16)).astype(np.float32)
    cand = ref.copy()
    flat = cand.reshape(-1)
    flat[: int(frac * flat.size)] += shift
    return ref, cand


@pytest.mark.parametrize("precision, shift, frac, budget, accepted", [
    ("fp32", 3e-6, 1.0, Budget(), True),                 # exact class
    ("fp32-fast", 3e-6, 1.0, Budget("fp32-only"), True),
    ("fp16", 3e-6, 1.0, Budget("fp32-only"), True),      # measured within fp32's tolerance: exact class
    ("fp16", 1e-3, 1.0, Budget("fp32-only"), False),     # lossy under fp32-only
    ("fp16", 1e-3, 1.0, Budget(), True),                 # well under 2% of range, < 1 level of 8 bits
    ("bf16", 0.01, 1.0, Budget(), False),                # 1% of range but 2.5 levels on every pixel
    ("bf16", 0.01, 0.005, Budget(), True),               # the same error on 0.5% of pixels
    ("bf16", 0.05, 0.005, Budget(), False),              # 5% of the range
    ("int8", 1e-3, 1.0, Budget(), False),                # int8 only under an explicit budget
    ("int8", 1e-3, 1.0, Budget("max-error", 2e-3), True),
    ("int8", 1e-3, 1.0, Budget("max-error", 5e-4), False),
])
def test_budget_rule(precision, shift, frac, budget, accepted):
    ref, cand = _images(shift, frac)
    measured = measure_decoder(ref, cand, output_range=(0.0, 1.0))
    ok, why = budget_accepts(precision, measured, budget)
    assert ok is accepted, why


def test_budget_uses_the_declared_range_else_the_observed_one():
    ref, cand = _images(0.015, 0.001)
    observed = measure_decoder(ref, cand)  # observed range ~[0, 1]: 1.5% passes
    assert observed["range_source"] == "observed" and budget_accepts("fp16", observed)[0]
    narrow = measure_decoder(ref, cand, output_range=(0.0, 0.5))  # declared: 3% of it fails
    assert narrow["range_source"] == "declared" and not budget_accepts("fp16", narrow)[0]
    # the 8-bit conversion rule: clip((x - lo) / (hi - lo), 0, 1) * 255, rounded
    assert to_8bit(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]), -1.0, 1.0).tolist() == [0, 128, 191, 255, 255]


def test_non_image_outputs_skip_the_8bit_rule_and_nonfinite_fails():
    ref = np.random.default_rng(0).random((4, 784))
    assert measure_decoder(ref, ref + 0.01)["image_within_1_level"] is None
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert not budget_accepts("fp16", measure_decoder(ref, bad))[0]


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, "0.1", True])
def test_make_budget_refuses_bad_max_error(value):
    with pytest.raises(ConfigError, match="max_error must be a finite number >= 0"):
        make_budget(value)
    with pytest.raises(ConfigError, match="not both"):
        make_budget(0.1, fp32_only=True)


# --- budgets reach auto --------------------------------------------------------------------------

def test_fp32_only_budget_reaches_auto_and_never_yields_lossy(variants_export, tmp_path, no_bf16, tune_calls):
    path = tmp_path / "t.json"
    rec = run_tune(variants_export, batch_sizes=(2,), fp32_only=True, tuning_file=path, **FAST)
    assert rec["budget"] == "fp32-only" and set(rec["batch_sizes"]["2"]["samples_per_s"]) <= {"ort-cpu",
                                                                                               "openvino-cpu"}
    rt = Runtime.load(variants_export, engine="auto", precision="auto", fp32_only=True, tuning_file=path)
    assert tune_calls == [] and rt.precision == "fp32" and "fp32-only budget" in rt.describe()["why"]
    # A hand edit that makes int8 the fastest of the fp32-only record: re-checked against the
    # budget (its recorded error is not exact class), so auto re-tunes instead of loading it.
    data = json.loads(path.read_text())
    (rid, stored), = data["records"].items()
    stored["batch_sizes"]["2"]["samples_per_s"]["ort-cpu-int8"] = 1e12
    stored["gates"]["ort-cpu-int8"] = {"passed": True, "measured": {"max_abs_error": 0.04, "within_fp32": False,
                                                                    "range": [0.0, 1.0]}}
    path.write_text(json.dumps(data))
    rt = Runtime.load(variants_export, engine="auto", precision="auto", fp32_only=True, tuning_file=path)
    assert rt.precision == "fp32" and len(tune_calls) == 1
    assert "re-tuned now" in rt.describe()["why"] and "fp32-only budget does not accept it" in rt.describe()["why"]
    # The default budget is another record: tuned now, and it never picks int8.
    rt = Runtime.load(variants_export, engine="auto", precision="auto", tuning_file=path)
    assert len(tune_calls) == 2 and rt.precision != "int8" and "default budget" in rt.describe()["why"]
    # An explicit --max-error lets int8 be measured (and picked when fastest).
    rec = run_tune(variants_export, batch_sizes=(2,), max_error=1.0, tuning_file=path, **FAST)
    assert "ort-cpu-int8" in rec["batch_sizes"]["2"]["samples_per_s"], rec["excluded"]
    assert rec["gates"]["ort-cpu-fp16"]["passed"]
    assert len(json.loads(path.read_text())["records"]) == 3


def test_default_budget_gates_int8_out(variants_export, tmp_path, no_bf16):
    rec = run_tune(variants_export, batch_sizes=(2,), tuning_file=tmp_path / "t.json", **FAST)
    assert "ort-cpu-int8" not in rec["batch_sizes"]["2"]["samples_per_s"]
    assert "only under an explicit --max-error" in rec["excluded"]["ort-cpu-int8"]
    g = rec["gates"]["ort-cpu-fp16"]
    assert g["measured"]["image_within_1_level"] is not None  # 1 x 28 x 28: judged as an image
    assert g["passed"] == budget_accepts("fp16", g["measured"])[0]


@pytest.mark.parametrize("label, why", [
    ("openvino-cpu-bf16", "no native bf16" if HAVE_OV else "not installed"),
    ("ort-cuda-fp16", "CPU engines only"),
    ("ort-cpu-int8", "no int8 decoder"),
    ("tensorrt-cpu", "not a backend label"),
    ("ort-cpu-fp64", "unknown precision"),
])
def test_hand_edited_labels_are_rechecked(exports, tmp_path, no_bf16, tune_calls, label, why):
    path = tmp_path / "t.json"
    run_tune(exports["mlp"], batch_sizes=(2,), tuning_file=path, **FAST)
    data = json.loads(path.read_text())
    (stored,) = data["records"].values()
    stored["batch_sizes"]["2"]["samples_per_s"][label] = 1e12
    stored["gates"][label] = {"passed": True, "measured": {"max_abs_error": 0.0, "within_fp32": True,
                                                            "range": [0.0, 1.0]}}
    path.write_text(json.dumps(data))
    rt = Runtime.load(exports["mlp"], engine="auto", precision="auto", tuning_file=path)
    assert rt.name != label and rt.provider == "cpu" and len(tune_calls) == 1
    assert "re-tuned now" in rt.describe()["why"] and why in rt.describe()["why"]


def test_auto_refuses_a_gpu_provider(exports, tmp_path):
    with pytest.raises(ConfigError, match="CPU engines"):
        Runtime.load(exports["mlp"], engine="auto", provider="cuda", tuning_file=tmp_path / "t.json")
    with pytest.raises(ConfigError, match="need engine or precision 'auto'"):
        Runtime.load(exports["mlp"], fp32_only=True)


# --- the tuning file ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_tuning_files_give_one_line_without_hanging(exports, tmp_path, kind):
    if kind == "fifo":
        target = tmp_path / "t.json"
        os.mkfifo(target)
    else:
        target = Path("/dev/zero")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "vae_deploy", "sample", str(exports["mlp"]), "-n", "1",
                        "--engine", "auto", "--tuning-file", str(target)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: tuning file") and "regular file" in lines[0]
    assert ("a FIFO" if kind == "fifo" else "a device") in lines[0]


def test_oversized_tuning_file_is_refused_before_reading(exports, tmp_path):
    path = tmp_path / "t.json"
    with path.open("wb") as f:
        f.truncate(300 << 20)  # sparse: 300 MB on paper, nothing on disk
    res = CliRunner().invoke(main, ["sample", str(exports["mlp"]), "-n", "1", "--engine", "auto",
                                    "--tuning-file", str(path)])
    assert res.exit_code == 1 and "at most 16,777,216 bytes" in res.output and "Traceback" not in res.output
    with pytest.raises(InputError):
        read_tuning(path)


def _good_record(exports, path: Path) -> dict:
    run_tune(exports["mlp"], batch_sizes=(2,), tuning_file=path, **FAST)
    return json.loads(path.read_text())


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["batch_sizes"]["2"]["samples_per_s"].update({"ort-cpu": "fast"}), "samples_per_s.ort-cpu"),
    (lambda r: r["batch_sizes"]["2"]["samples_per_s"].update({"ort-cpu": math.nan}), "samples_per_s.ort-cpu"),
    (lambda r: r["key"].update(threads="4"), "key.threads"),
    (lambda r: r["key"].update(latent_shape=[4, -1]), "key.latent_shape"),
    (lambda r: r["key"]["cpu_flags"].update(avx2="yes"), "key.cpu_flags.avx2"),
    (lambda r: r.update(gates=[]), "gates"),
    (lambda r: r["batch_sizes"].update({"two": {}}), "batch_sizes.two"),
])
def test_wrong_value_types_give_one_line_naming_the_field(exports, tmp_path, edit, field):
    path = tmp_path / "t.json"
    data = _good_record(exports, path)
    edit(next(iter(data["records"].values())))
    path.write_text(json.dumps(data))  # json writes NaN as a bare NaN, which Python reads back
    res = CliRunner().invoke(main, ["sample", str(exports["mlp"]), "-n", "1", "--engine", "auto",
                                    "--tuning-file", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert res.output.startswith("Error: tuning file") and field in res.output and "must be" in res.output
    res = CliRunner().invoke(main, ["tune", str(exports["mlp"]), "--tuning-file", str(path)])
    assert res.exit_code == 1 and field in res.output  # refused before measuring: the file stays as it was
    assert json.loads(path.read_text(), parse_constant=lambda c: c) is not None


def test_concurrent_writers_keep_every_record(tmp_path):
    path = tmp_path / "t.json"
    record = {"key": {"cpu_model": "x", "cpu_flags": {}, "versions": {}, "graphs_sha256": {}, "threads": None,
                      "fp32_only": False, "max_error": None, "latent_shape": [4]},
              "created": "2026-01-01T00:00:00", "gates": {}, "excluded": {},
              "batch_sizes": {"1": {"samples_per_s": {"ort-cpu": 1.0}, "winner": {"backend": "ort-cpu"}}}}
    script = ("import json, sys\nfrom vae_deploy.runtime.engines.tuning_file import add_record\n"
              f"record = json.loads({json.dumps(record)!r})\n"
              f"for i in range(25):\n    add_record({str(path)!r}, sys.argv[1] + str(i), record)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, who], env=env) for who in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    records = read_tuning(path)["records"]
    assert len(records) == 50 and {f"{w}{i}" for w in "ab" for i in range(25)} == set(records)
    assert (tmp_path / "t.json.lock").exists()


def test_records_are_bounded_oldest_dropped(exports, tmp_path):
    path = tmp_path / "t.json"
    rec = next(iter(_good_record(exports, path)["records"].values()))
    for i in range(5):
        add_record(path, f"r{i}", {**rec, "created": f"2099-01-0{i + 1}T00:00:00"}, max_records=3)
    assert set(read_tuning(path)["records"]) == {"r2", "r3", "r4"}
    assert MAX_RECORDS == 256


# --- the CLI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["tune", "{e}", "--max-error", "nan"],
    ["tune", "{e}", "--max-error", "inf"],
    ["tune", "{e}", "--max-error", "-0.1"],
    ["sample", "{e}", "--engine", "auto", "--max-error", "nan"],
    ["sample", "{e}", "--engine", "auto", "--fp32-only", "--max-error", "0.1"],
    ["sample", "{e}", "--fp32-only"],  # a budget without auto
    ["reconstruct", "{e}", "{e}/manifest.json", "--max-error", "0.1"],
    ["serve", "{e}", "--fp32-only"],
])
def test_bad_budget_options_are_usage_errors(exports, tmp_path, args):
    res = CliRunner().invoke(main, [a.format(e=exports["mlp"]) for a in args] + ["--tuning-file",
                                                                                   str(tmp_path / "t.json")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert not (tmp_path / "t.json").exists()


def test_cli_budget_reaches_auto(exports, tmp_path, tune_calls):
    path = tmp_path / "t.json"
    assert CliRunner().invoke(main, ["tune", str(exports["mlp"]), "--fp32-only", "--batch-sizes", "2",
                                     "--rounds", "1", "--tuning-file", str(path)]).exit_code == 0
    assert len(tune_calls) == 1 and tune_calls[0]["fp32_only"] is True
    res = CliRunner().invoke(main, ["sample", str(exports["mlp"]), "-n", "2", "--engine", "auto", "--fp32-only",
                                    "--tuning-file", str(path)])
    assert res.exit_code == 0 and len(tune_calls) == 1, res.output  # the fp32-only record was found
    res = CliRunner().invoke(main, ["sample", str(exports["mlp"]), "-n", "2", "--engine", "auto",
                                    "--tuning-file", str(path)])
    assert res.exit_code == 0 and len(tune_calls) == 2, res.output  # the default budget: another record


def test_serve_passes_the_budget_to_runtime_load(exports, monkeypatch):
    import vae_deploy.serving.serve

    seen = {}
    monkeypatch.setattr(vae_deploy.serving.serve, "serve", lambda export_dir, options, **kw: seen.update(kw))
    res = CliRunner().invoke(main, ["serve", str(exports["mlp"]), "--engine", "auto", "--max-error", "0.05"])
    assert res.exit_code == 0 and seen["engine"] == "auto" and seen["max_error"] == 0.05, res.output


def test_tune_refuses_an_export_with_a_random_operator(exports, tmp_path):
    from tests.test_contract import _with_op

    folder = shutil.copytree(exports["mlp"], tmp_path / "export")
    _with_op(folder, "RandomNormalLike")
    res = CliRunner().invoke(main, ["tune", str(folder), "--tuning-file", str(tmp_path / "t.json")])
    assert res.exit_code == 1 and "Traceback" not in res.output and "KeyError" not in res.output
    assert res.output.startswith("Error:") and "random operator RandomNormalLike" in res.output
    assert not (tmp_path / "t.json").exists()


# --- shapes: tune at the size decoded (a spatial diffusers export) -----------------------------

@pytest.fixture(scope="module")
def akl_export(tmp_path_factory):
    pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")
    from tests.test_diffusion import tiny_akl
    from vae_deploy.adapters import from_diffusers
    from vae_deploy.exporters import export

    folder = tmp_path_factory.mktemp("akl") / "vae"
    tiny_akl().save_pretrained(folder)
    return export(from_diffusers(folder), tmp_path_factory.mktemp("akl-export") / "export",
                  formats=("onnx",)).out_dir


@pytest.mark.slow
def test_records_are_keyed_by_latent_shape(akl_export, tmp_path, tune_calls):
    path = tmp_path / "t.json"
    small = run_tune(akl_export, latent_shape=(4, 4, 4), batch_sizes=(1,), tuning_file=path, **FAST)
    assert small["key"]["latent_shape"] == [4, 4, 4] and "latent [4, 4, 4]" in small["method"]
    default = run_tune(akl_export, batch_sizes=(1,), tuning_file=path, **FAST)  # the example latent
    assert default["key"]["latent_shape"] == [4, 16, 16]
    assert len(read_tuning(path)["records"]) == 2
    rt = Runtime.load(akl_export, engine="auto", precision="auto", latent_shape=(4, 4, 4), tuning_file=path)
    assert tune_calls == [] and "from the tuning file" in rt.describe()["why"]
    rt = Runtime.load(akl_export, engine="auto", precision="auto", latent_shape=(4, 5, 5), tuning_file=path)
    assert tune_calls == [] and "nearest latent shape [4, 4, 4]" in rt.describe()["why"]
    rt = Runtime.load(akl_export, engine="auto", precision="auto", latent_shape=(4, 8, 8), tuning_file=path)
    assert len(tune_calls) == 1 and tune_calls[0]["latent_shape"] == (4, 8, 8)  # no record within 2x: tuned
    assert "tuned now at latent [4, 8, 8]" in rt.describe()["why"]
    assert len(read_tuning(path)["records"]) == 3
    # the CLI passes the shape it is about to decode
    res = CliRunner().invoke(main, ["sample", str(akl_export), "-n", "1", "--engine", "auto", "--latent-shape",
                                    "4,8,8", "--tuning-file", str(path)])
    assert res.exit_code == 0 and len(tune_calls) == 1, res.output


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_OV, reason="OpenVINO (the 'openvino' extra) is not installed")
def test_openvino_f32_is_a_candidate_on_a_diffusers_export(akl_export, tmp_path):
    from vae_deploy.runtime.engines.gate import gate

    ref = Runtime.load(akl_export, provider="cpu")
    ov = Runtime.load(akl_export, engine="openvino", precision="fp32")
    g = gate(ref, ov, "fp32", budget=make_budget(fp32_only=True), latent_shape=(4, 8, 8))
    # the same tolerance verify uses for deep diffusers VAEs (1e-4), not the plain fp32 1e-5
    assert g["atol"] == tolerance_for("fp32", "diffusers.AutoencoderKL").atol == 1e-4
    assert g["passed"] and g["measured"]["within_fp32"], g
    rec = run_tune(akl_export, fp32_only=True, latent_shape=(4, 8, 8), batch_sizes=(1,),
                    tuning_file=tmp_path / "t.json", **FAST)
    assert "openvino-cpu" in rec["batch_sizes"]["1"]["samples_per_s"], rec["excluded"]
