"""Exporters: both families x both formats, metadata, manifest, no randomness, atomicity, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import tiny_model
from vae_deploy.cli import main
from vae_deploy.contract import random_ops
from vae_deploy.errors import ArtifactError, ExportError
from vae_deploy.exporters import export
from vae_deploy.exporters.manifest import load_manifest
from vae_deploy.exporters.onnx import check_model
from vae_deploy.training.checkpoint import file_sha256, load_checkpoint

FAMILIES = ["mlp", "conv"]


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_graphs_checked_named_and_dynamic(exports, tiny_ckpts, family):
    folder = exports[family]
    model = load_checkpoint(tiny_ckpts[family]).build_model()
    enc = onnx.load(str(folder / "encoder.onnx"))
    dec = onnx.load(str(folder / "decoder.onnx"))
    onnx.checker.check_model(enc, full_check=True)
    assert [i.name for i in enc.graph.input] == ["x"] and [o.name for o in enc.graph.output] == ["mu", "logvar"]
    assert [i.name for i in dec.graph.input] == ["z"] and [o.name for o in dec.graph.output] == ["x_hat"]
    for m in (enc, dec):
        assert m.opset_import[0].version == 18
        for v in [*m.graph.input, *m.graph.output]:
            assert v.type.tensor_type.shape.dim[0].dim_param == "batch", v.name
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert not [i for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    so = ort.SessionOptions()
    es = ort.InferenceSession(str(folder / "encoder.onnx"), so, providers=["CPUExecutionProvider"])
    ds = ort.InferenceSession(str(folder / "decoder.onnx"), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n in (1, 2, 37, 256):  # one file, every batch size
        x = rng.random((n, 1, 8, 8), dtype=np.float32)
        z = rng.standard_normal((n, 4), dtype=np.float32)
        mu, logvar = es.run(None, {"x": x})
        (x_hat,) = ds.run(None, {"z": z})
        with torch.no_grad():
            emu, elogvar = model.encode(torch.from_numpy(x))
            ex = model.decode(torch.from_numpy(z))
        assert mu.shape == (n, 4) and x_hat.shape == (n, 1, 8, 8)
        np.testing.assert_allclose(mu, emu.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(logvar, elogvar.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(x_hat, ex.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_torchscript_same_signature(exports, tiny_ckpts, family):
    folder = exports[family]
    model = load_checkpoint(tiny_ckpts[family]).build_model()
    enc = torch.jit.load(str(folder / "encoder.ts"))
    dec = torch.jit.load(str(folder / "decoder.ts"))
    x, z = torch.rand(5, 1, 8, 8), torch.randn(3, 4)
    with torch.no_grad():
        mu, logvar = enc(x)
        torch.testing.assert_close(mu, model.encode(x)[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(dec(z), model.decode(z), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_random_ops_in_any_graph(exports, family):
    for name in ("encoder.onnx", "decoder.onnx"):
        assert random_ops(onnx.load(str(exports[family] / name))) == []
    for name in ("encoder.ts", "decoder.ts"):
        graph = str(torch.jit.load(str(exports[family] / name)).inlined_graph)
        assert "aten::randn" not in graph and "aten::normal" not in graph and "aten::rand" not in graph


def test_random_op_detector_catches_randomness():
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("RandomNormalLike", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert random_ops(m) == ["RandomNormalLike (unnamed)"]
    with pytest.raises(ExportError, match="random operators"):
        check_model(m)


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata_is_enough_to_configure_a_consumer(exports, tiny_ckpts, family):
    ckpt_sha = file_sha256(tiny_ckpts[family])
    for role in ("encoder", "decoder"):
        m = onnx.load(str(exports[family] / f"{role}.onnx"))
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta["vae_deploy.role"] == role
        assert meta["vae_deploy.format_version"] == "1"
        assert meta["vae_deploy.latent_dim"] == "4" and meta["vae_deploy.latent_shape"] == "4"
        assert meta["vae_deploy.input_shape"] == "1,8,8"
        assert meta["vae_deploy.likelihood"] == "bernoulli"
        assert meta["vae_deploy.family"] == family
        assert meta["vae_deploy.source_sha256"] == ckpt_sha
        assert m.producer_name == "vae-deploy" and m.producer_version


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_checksums_match_files(exports, family):
    folder = exports[family]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"encoder.onnx", "decoder.onnx", "encoder.ts", "decoder.ts"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(folder / name)
        assert entry["size"] == (folder / name).stat().st_size
    assert manifest["export"]["opset"] == 18 and "dynamo" in manifest["export"]["onnx_exporter"]
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_abs_error"] <= 1e-5
    assert set(parity["backends"]) == {"ort-cpu", "torchscript"}
    load_manifest(folder)  # verifies


def test_single_format_and_bad_format(tmp_path, tiny_ckpts):
    res = export(tiny_ckpts["mlp"], tmp_path / "ts", formats=("torchscript",))
    assert set(res.manifest["files"]) == {"encoder.ts", "decoder.ts"}
    with pytest.raises(ExportError, match="unknown export format"):
        export(tiny_ckpts["mlp"], tmp_path / "x", formats=("tflite",))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_export_leaves_previous_folder_intact(tmp_path, tiny_ckpts, exports, monkeypatch):
    out = tmp_path / "export"
    export(tiny_ckpts["mlp"], out)
    (out / "README.md").write_text("the user's own notes")
    before = _snapshot(out)

    # 1. a model whose export raises
    import vae_deploy.exporters as ex

    def boom(*a, **k):
        raise ExportError("simulated exporter crash")

    monkeypatch.setattr(ex, "export_torchscript", boom)
    with pytest.raises(ExportError, match="simulated exporter crash"):
        export(tiny_ckpts["conv"], out)
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]  # no temp litter

    # 2. an export whose graphs disagree with eager (parity gate)
    from vae_deploy.checks import parity

    real = parity.compare_arrays
    monkeypatch.setattr(parity, "compare_arrays", lambda r, o, t: real(r, o + 1e-3, t))
    with pytest.raises(ExportError, match="disagree with the eager model"):
        export(tiny_ckpts["conv"], out)
    monkeypatch.undo()
    assert _snapshot(out) == before

    # 3. a successful re-export replaces the artifacts but keeps the user's file
    export(tiny_ckpts["conv"], out)
    assert (out / "README.md").read_text() == "the user's own notes"
    assert load_manifest(out)["model"]["family"] == "conv"


def test_invalid_target(tmp_path, tiny_ckpts):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        export(tiny_ckpts["mlp"], f)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root ignores permission bits
            with pytest.raises(ExportError, match="cannot write"):
                export(tiny_ckpts["mlp"], ro / "sub" / "export")
    finally:
        ro.chmod(0o700)
    assert f.read_text() == "x"


def test_export_of_in_memory_model(tmp_path):
    res = export(tiny_model("conv"), tmp_path / "e", formats=("onnx",))
    assert res.manifest["parity"]["passed"]
    assert "uniform" in res.manifest["parity"]["inputs"]["encoder"]  # no training data known


def test_cli_export_and_info(tmp_path, tiny_ckpts):
    out = tmp_path / "cli-export"
    res = CliRunner().invoke(main, ["export", str(tiny_ckpts["conv"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "decoder.onnx" in res.output and "PASS" in res.output
    assert "[torch.onnx]" not in res.output and "Warning" not in res.output  # no exporter chatter
    res = CliRunner().invoke(main, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert "z[batch, 4] -> x_hat[batch, 1, 8, 8]" in res.output
    res = CliRunner().invoke(main, ["export", str(tmp_path / "missing.pt"), "--out", str(out)])
    assert res.exit_code == 1 and "does not exist" in res.output
    res = CliRunner().invoke(main, ["export", str(tiny_ckpts["conv"]), "--format", "onnx,pdf"])
    assert res.exit_code == 2 and "expected a comma-separated subset" in res.output


def test_tampered_manifest_listed_file_is_caught(tmp_path, exports):
    from tests.conftest import copy_export

    folder = copy_export(exports["mlp"], tmp_path / "e")
    data = bytearray((folder / "decoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (folder / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="decoder.onnx: sha256"):
        load_manifest(folder)
