"""`vae-deploy web`: the site builder's checks and layout (no browser; see test_web_browser.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import copy_export, spatial_toy_export
from vae_deploy.artifacts import file_sha256
from vae_deploy.cli import main
from vae_deploy.web import ORT_WEB_VERSION, build_site
from vae_deploy.web.ortdist import ORT_FILES
from vae_deploy.web.prng import mulberry32, normal

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_dist(tmp_path) -> Path:
    """A stand-in for onnxruntime-web's dist folder: the builder only copies these files."""
    dist = tmp_path / "ort-dist"
    dist.mkdir()
    for name in ORT_FILES:
        (dist / name).write_bytes(b"// " + name.encode())
    return dist


def web(*args: str):
    return CliRunner().invoke(main, ["web", *map(str, args)])


def test_site_has_page_decoder_manifest_and_ort_files(exports, fake_dist, tmp_path):
    res = web(exports["mlp"], "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 0, res.output
    site = tmp_path / "site"
    for name in ("index.html", "app.js", "vae.js", "style.css", "decoder.onnx", "manifest.json", "site.json",
                 *(f"ort/{f}" for f in ORT_FILES)):
        assert (site / name).is_file(), name
    assert not (site / "encoder.onnx").exists()  # the page needs only the decoder
    assert (site / "decoder.onnx").read_bytes() == (exports["mlp"] / "decoder.onnx").read_bytes()
    assert json.loads((site / "manifest.json").read_text()) == json.loads((exports["mlp"] / "manifest.json").read_text())
    cfg = json.loads((site / "site.json").read_text())
    assert cfg["decoder"] == {"file": "decoder.onnx", "sha256": file_sha256(site / "decoder.onnx"),
                              "input": "z", "output": "x_hat"}
    assert cfg["onnxruntime_web"] == ORT_WEB_VERSION and cfg["limits"]["max_latent_side"] == 32
    assert "http.server" in res.output
    # Nothing in the page reaches for another host: every import, fetch, src and href is relative.
    refs = [ref for name in ("index.html", "app.js", "vae.js")
            for ref in re.findall(r"""(?:from|fetchOk\(|src=|href=)\s*["']([^"']+)""", (site / name).read_text())]
    assert "./ort/ort.wasm.min.mjs" in refs and "site.json" in refs
    assert [r for r in refs if "://" in r or r.startswith("//")] == []


@pytest.mark.slow  # exports a toy diffusers-style VAE (several seconds)
def test_spatial_latents_keep_their_dynamic_axes(tmp_path, fake_dist):
    export = spatial_toy_export(tmp_path / "toy", channels=3)
    result = build_site(export, tmp_path / "site", ort_dist=fake_dist, max_latent_side=8)
    assert result.contract.spatial and result.contract.latent_shape[0] == 2
    assert json.loads((tmp_path / "site/site.json").read_text())["limits"]["max_latent_side"] == 8


def test_rebuild_replaces_a_previous_site(exports, fake_dist, tmp_path):
    out = tmp_path / "site"
    build_site(exports["mlp"], out, ort_dist=fake_dist)
    (out / "stale.txt").write_text("from an older build")
    build_site(exports["conv"], out, ort_dist=fake_dist)
    assert not (out / "stale.txt").exists()
    assert file_sha256(out / "decoder.onnx") == file_sha256(exports["conv"] / "decoder.onnx")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_refuses_to_replace_a_folder_that_is_not_a_site(exports, fake_dist, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = web(exports["mlp"], "--out", out, "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "Error: " in res.output and "not a previous `vae-deploy web` site" in res.output
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_corrupted_decoder_is_refused_before_writing(exports, fake_dist, tmp_path):
    export = copy_export(exports["mlp"], tmp_path / "export")
    data = bytearray((export / "decoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (export / "decoder.onnx").write_bytes(bytes(data))
    res = web(export, "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 1, res.output
    assert "Error: " in res.output and "decoder.onnx: sha256 does not match" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "site").exists()


def test_manifest_that_disagrees_with_the_graph_is_refused(exports, fake_dist, tmp_path):
    export = copy_export(exports["mlp"], tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["model"]["latent_shape"] = [5]
    (export / "manifest.json").write_text(json.dumps(manifest))
    res = web(export, "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "graph input 'z' is [N, 4]" in res.output
    assert not (tmp_path / "site").exists()


def test_random_operator_is_refused(exports, fake_dist, tmp_path):
    import onnx

    export = copy_export(exports["mlp"], tmp_path / "export")
    model = onnx.load(str(export / "decoder.onnx"))
    model.graph.node.append(onnx.helper.make_node("RandomNormalLike", [model.graph.input[0].name], ["noise"]))
    onnx.save(model, str(export / "decoder.onnx"))
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"].update(sha256=file_sha256(export / "decoder.onnx"),
                                             size=(export / "decoder.onnx").stat().st_size)
    (export / "manifest.json").write_text(json.dumps(manifest))
    res = web(export, "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "random operator RandomNormalLike" in res.output


def test_manifest_path_outside_the_export_is_refused(exports, fake_dist, tmp_path):
    export = copy_export(exports["mlp"], tmp_path / "export")
    shutil.copy(export / "decoder.onnx", tmp_path / "decoder.onnx")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["files"]["../decoder.onnx"] = manifest["files"].pop("decoder.onnx")
    (export / "manifest.json").write_text(json.dumps(manifest))
    res = web(export, "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "climbs out with '..'" in res.output


def test_missing_onnxruntime_web_says_how_to_install(exports, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = web(exports["mlp"], "--out", tmp_path / "site", "--ort-dist", empty)
    assert res.exit_code == 1, res.output
    assert "lacks ort.wasm.min.mjs" in res.output and "make web-deps" in res.output
    assert not (tmp_path / "site").exists()


def test_wrong_onnxruntime_web_version_is_refused(exports, tmp_path):
    dist = tmp_path / "onnxruntime-web/dist"
    dist.mkdir(parents=True)
    for name in ORT_FILES:
        (dist / name).write_bytes(b"x")
    (dist.parent / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": "1.0.0"}))
    res = web(exports["mlp"], "--out", tmp_path / "site", "--ort-dist", dist)
    assert res.exit_code == 1 and f"version 1.0.0; expected {ORT_WEB_VERSION}" in res.output


def test_missing_export_is_one_error_line(tmp_path, fake_dist):
    res = web(tmp_path / "nope", "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "does not exist" in res.output


def test_pinned_version_is_the_same_everywhere():
    pkg = json.loads((REPO / "web/package.json").read_text())
    lock = json.loads((REPO / "web/package-lock.json").read_text())
    assert pkg["dependencies"]["onnxruntime-web"] == ORT_WEB_VERSION  # exact, no range
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == ORT_WEB_VERSION


def test_page_noise_is_seeded_standard_normal():
    a, b = normal(20_001, 7), normal(20_001, 7)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, normal(20_001, 8))
    assert abs(a.mean()) < 0.03 and abs(a.std() - 1) < 0.03 and np.isfinite(a).all()
    gen = mulberry32(0)
    first = [next(gen) for _ in range(3)]
    assert all(0 <= v < 2**32 for v in first) and len(set(first)) == 3


def test_out_inside_the_export_is_refused(exports, fake_dist, tmp_path):
    export = copy_export(exports["mlp"], tmp_path / "export")
    res = web(export, "--out", export / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "is inside the export folder" in res.output
    assert not (export / "site").exists()
