"""The lean install: only the runtime dependencies (numpy, click, Pillow, onnx, onnxruntime),
no torch. A fresh virtual environment gets the package (built as a wheel, so the packaging is
tested too) and runs `sample` and `verify` on an export made in the full environment.

Slow (a venv and a 340 MB onnxruntime-gpu copied from pip's cache: about a minute); CI runs it.
The versions are pinned to this environment's, so pip takes them from its cache.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("numpy", "click", "pillow", "onnx", "onnxruntime-gpu", "onnxruntime")


def _pins() -> list[str]:
    out = []
    for name in RUNTIME:
        try:
            out.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return out


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    """bin/ of a venv with the runtime dependencies and the package, and nothing else."""
    root = tmp_path_factory.mktemp("lean")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    # the runtime dependencies at this environment's versions, then the package without deps:
    # exactly what `pip install vae-deploy` resolves to here, with no torch anywhere
    subprocess.run([*pip, "install", *_pins()], check=True, env=env, timeout=600)
    subprocess.run([*pip, "install", "--no-deps", str(ROOT)], check=True, env=env, timeout=600)
    return root / "venv" / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "vae-deploy"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_the_lean_environment_has_no_torch(lean, tmp_path):
    names = subprocess.run([str(lean / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                           text=True, check=True).stdout.lower()
    assert "torch" not in names and "scikit-learn" not in names and "onnxscript" not in names
    res = _run(lean, "export", "ckpt.pt", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "pip install 'vae-deploy[export]'" in res.stderr
    res = _run(lean, "train", "--epochs", "1", cwd=tmp_path)
    assert res.returncode == 1 and "pip install 'vae-deploy[train]'" in res.stderr


@pytest.mark.slow
def test_lean_sample_matches_the_full_environment(lean, exports, tmp_path):
    from PIL import Image

    from vae_deploy.runtime.core import Runtime

    res = _run(lean, "sample", str(exports["mlp"]), "-n", "8", "--seed", "0", "--out", "s.npy", "--grid", "s.png",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    want = Runtime.load(exports["mlp"], provider="cpu").sample(8, seed=0)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), want, rtol=0, atol=1e-6)
    assert min(Image.open(tmp_path / "s.png").size) >= 3 * 64  # upscaled 8x8 tiles


@pytest.mark.slow
def test_lean_verify_says_what_it_checked(lean, exports, digits, tmp_path):
    res = _run(lean, "verify", str(exports["mlp"]), "--batch-sizes", "1,7", "--json", "-", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no eager reference" in res.stderr and "RESULT: PASS (with 2 warnings above)" in res.stderr
    assert "encoder/random/" not in res.stderr or "rows labelled 'random'" in res.stderr
    import json

    report = json.loads(res.stdout)  # --json -: the JSON alone on standard output
    assert report["passed"] and report["reference"]["backend"] == "ort-cpu"
    assert report["data"]["label"] == "random" and report["run_check"]["passed"]
    assert report["skipped"] == {"torchscript": "needs torch: pip install 'vae-deploy[export]'"}
    # with real examples given, the rows are real and that warning goes
    np.save(tmp_path / "test.npy", digits.test[:32])
    res = _run(lean, "verify", str(exports["mlp"]), "--batch-sizes", "1,7", "--data", "test.npy", cwd=tmp_path)
    assert res.returncode == 0 and "inputs: real" in res.stdout and "--data" in res.stdout


@pytest.mark.slow
def test_lean_verify_compares_variants_with_ort_cpu(lean, tiny_ckpts, tmp_path):
    import json

    import onnx
    from onnx import numpy_helper

    from vae_deploy.exporters import export
    from vae_deploy.exporters.manifest import file_entry

    folder = export(tiny_ckpts["conv"], tmp_path / "e", precisions=("fp32", "fp32-fast", "int8")).out_dir
    manifest = json.loads((folder / "manifest.json").read_text())
    variants = sorted({e["precision"] for e in manifest["files"].values() if e["precision"] != "fp32"
                       and e["format"] == "onnx"})
    assert variants, "no precision variant was written to compare"
    res = _run(lean, "verify", str(folder), "--batch-sizes", "1,7", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for precision in variants:
        assert f"ort-cpu-{precision} vs ort-cpu" in res.stdout
    # a variant whose numbers are off (checksums forged to match) is caught without torch, too
    name = next(n for n, e in manifest["files"].items() if e["precision"] == variants[0] and e["role"] == "decoder")
    model = onnx.load(str(folder / name))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[:] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(folder / name))
    e = manifest["files"][name]
    manifest["files"][name] = file_entry(folder / name, role=e["role"], fmt=e["format"], precision=e["precision"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    res = _run(lean, "verify", str(folder), "--batch-sizes", "1,7", "--backends", f"ort-cpu-{variants[0]}",
               cwd=tmp_path)
    assert res.returncode == 1 and "integrity: PASS" in res.stdout
    assert f"ort-cpu-{variants[0]} vs ort-cpu" in res.stdout and "RESULT: FAIL" in res.stdout
