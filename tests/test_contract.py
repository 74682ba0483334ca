"""The export contract, enforced by every consumer: paths stay inside the folder, checksums
match, no random operator, declared shapes agree. Each tampering is re-hashed into the
manifest, so only the contract check (not the checksum check) can catch it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from vae_deploy.artifacts import file_sha256, load_manifest
from vae_deploy.checks.verify import check_contract, check_integrity
from vae_deploy.cli import main
from vae_deploy.contract import check_export, contract_problems, random_ops
from vae_deploy.errors import ArtifactError
from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.triton import write_triton_repo


def _rehash(folder: Path, *names: str) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    for n in names:
        m["files"][n].update(sha256=file_sha256(folder / n), size=(folder / n).stat().st_size)
    (folder / "manifest.json").write_text(json.dumps(m))


def _edit_manifest(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _with_op(folder: Path, op: str, *extra_inputs: str, **attrs) -> None:
    """Append ``op`` to the decoder: x_hat = x_hat_pre + op(x_hat_pre, ...)."""
    model = onnx.load(str(folder / "decoder.onnx"))
    g = model.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = [f"{out}_pre" if o == out else o for o in node.output]
    g.node.append(helper.make_node(op, [f"{out}_pre", *extra_inputs], ["noise"], name="tamper", **attrs))
    g.node.append(helper.make_node("Add", [f"{out}_pre", "noise"], [out], name="tamper_add"))
    onnx.save(model, str(folder / "decoder.onnx"))
    _rehash(folder, "decoder.onnx")


@pytest.fixture
def export_copy(exports, tmp_path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(exports["mlp"], dst)
    return dst


def _all_consumers_refuse(folder: Path, tmp_path: Path, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        Runtime.load(folder, provider="cpu")
    with pytest.raises(ArtifactError, match=match):
        Runtime.load(folder, provider="cpu", verify_checksums=False)
    with pytest.raises(ArtifactError, match=match):
        write_triton_repo(folder, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    contract = check_contract(folder, load_manifest(folder, verify=False), None)
    assert not contract["passed"] and any(match.lower() in p.lower() for p in contract["problems"]), contract


def test_a_clean_export_passes(exports):
    for folder in exports.values():
        manifest = load_manifest(folder, verify=False)
        assert contract_problems(folder, manifest) == []
        check_export(folder, manifest)


def test_random_normal_like_is_refused_everywhere(export_copy, tmp_path):
    _with_op(export_copy, "RandomNormalLike")
    _all_consumers_refuse(export_copy, tmp_path, "random operator RandomNormalLike")


@pytest.mark.parametrize("op", ["RandomUniformLike", "Bernoulli"])
def test_other_random_ops(export_copy, tmp_path, op):
    _with_op(export_copy, op)
    _all_consumers_refuse(export_copy, tmp_path, f"random operator {op}")


def test_random_op_inside_a_subgraph_and_training_dropout():
    then = helper.make_graph([helper.make_node("RandomNormal", [], ["r"], shape=[1])], "then", [],
                             [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1])])
    els = helper.make_graph([helper.make_node("Constant", [], ["r"], value_floats=[0.0])], "else", [],
                            [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1])])
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="branch"),
         helper.make_node("Dropout", ["y", "", "train"], ["d"], name="drop")],
        "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1])],
        initializer=[helper.make_tensor("train", TensorProto.BOOL, [], [True])])
    found = random_ops(helper.make_model(g))
    assert any(f.startswith("RandomNormal") for f in found) and any("Dropout in training mode" in f for f in found)
    g.initializer[0].CopyFrom(helper.make_tensor("train", TensorProto.BOOL, [], [False]))
    assert not any("Dropout" in f for f in random_ops(helper.make_model(g)))  # inference-mode Dropout is fine


def test_declared_output_shape_must_match(export_copy, tmp_path):
    model = onnx.load(str(export_copy / "decoder.onnx"))
    model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 99
    onnx.save(model, str(export_copy / "decoder.onnx"))
    _rehash(export_copy, "decoder.onnx")
    _all_consumers_refuse(export_copy, tmp_path, "graph output 'x_hat'")


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "sub/../../outside.onnx", "link.onnx"])
def test_manifest_names_must_stay_inside(export_copy, tmp_path, name):
    outside = tmp_path / "outside.onnx"
    shutil.copy(export_copy / "decoder.onnx", outside)
    if name == "link.onnx":
        os.symlink(outside, export_copy / "link.onnx")

    def point(m):
        entry = m["files"].pop("decoder.onnx")
        m["files"][name] = {**entry, "sha256": file_sha256(outside), "size": outside.stat().st_size}

    _edit_manifest(export_copy, point)
    _all_consumers_refuse(export_copy, tmp_path, "export may only refer to files inside" if name != "link.onnx"
                          else "outside the export folder")
    integrity = check_integrity(export_copy, load_manifest(export_copy, verify=False))
    assert not integrity["passed"] and integrity["files"][name].startswith("refused")


def test_external_data_outside_the_folder_is_never_read(export_copy, tmp_path):
    """The issue's example: an initializer pointing at ../../SECRET.txt, checksums re-hashed."""
    secret = tmp_path / "SECRET.txt"
    secret.write_bytes(b"s3cret" * 100)
    model = onnx.load(str(export_copy / "decoder.onnx"))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value="../SECRET.txt")
    init.ClearField("raw_data")
    onnx.save(model, str(export_copy / "decoder.onnx"))
    _rehash(export_copy, "decoder.onnx")
    _all_consumers_refuse(export_copy, tmp_path, "climbs out")
    assert not list(tmp_path.rglob("SECRET.txt"))[1:], "copied the secret somewhere"


def test_fifo_listed_in_the_manifest_is_refused_not_read(export_copy, tmp_path):
    os.mkfifo(export_copy / "weights.bin")  # reading it would block forever
    _edit_manifest(export_copy, lambda m: m["files"].update(
        {"weights.bin": {"sha256": "0" * 64, "size": 0, "role": "decoder", "format": "data"}}))
    with pytest.raises(ArtifactError, match="not a regular file"):
        check_export(export_copy, load_manifest(export_copy, verify=False))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("model"), r"lacks \['model'\]"),
    (lambda m: m.pop("files"), r"lacks \['files'\]"),
    (lambda m: m["model"].update(input_shape="1,8,8"), "model.input_shape"),
    (lambda m: m["model"].update(latent_shape=[0]), "model.latent_shape"),
    (lambda m: m["files"].update({"x": 3}), r"files\['x'\]"),
])
def test_manifest_schema(export_copy, edit, match):
    _edit_manifest(export_copy, edit)
    with pytest.raises(ArtifactError, match=match):
        Runtime.load(export_copy, provider="cpu")
    r = CliRunner().invoke(main, ["info", str(export_copy)])
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.startswith("Error:"), r.output


def test_verify_cli_fails_a_random_op_and_sampling_stays_deterministic(export_copy, exports, tiny_ckpts, tmp_path):
    """The issue's example end to end: verify must say contract FAIL and exit 1."""
    _with_op(export_copy, "RandomNormalLike")
    r = CliRunner().invoke(main, ["verify", str(export_copy), "--checkpoint", str(tiny_ckpts["mlp"]),
                                  "--batch-sizes", "1", "--backends", "torchscript"])
    assert r.exit_code == 1, r.output
    assert "contract: FAIL" in r.output and "RandomNormalLike" in r.output and "RESULT: FAIL" in r.output
    rt = Runtime.load(exports["mlp"], provider="cpu")
    np.testing.assert_array_equal(rt.sample(4, seed=1), rt.sample(4, seed=1))


def test_info_on_an_onnx_file_describes_it_and_names_random_ops(export_copy):
    r = CliRunner().invoke(main, ["info", str(export_copy / "decoder.onnx")])
    assert r.exit_code == 0 and "vae_deploy.latent_shape = 4" in r.output and "random" not in r.output, r.output
    _with_op(export_copy, "RandomNormalLike")
    r = CliRunner().invoke(main, ["info", str(export_copy / "decoder.onnx")])
    assert r.exit_code == 0 and "random operators (break the contract): RandomNormalLike" in r.output, r.output
