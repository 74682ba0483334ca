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
from vae_deploy.serving.web import ORT_WEB_VERSION, build_site
from vae_deploy.serving.web.ortdist import ORT_FILES
from vae_deploy.serving.web.prng import mulberry32, normal

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


def _assert_same_graph(published: Path, exported: Path) -> None:
    """The published decoder is the export's graph: same operators, weights and model metadata."""
    import onnx

    a, b = onnx.load(str(published)), onnx.load(str(exported))
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    assert [t.SerializeToString() for t in a.graph.initializer] == [t.SerializeToString() for t in b.graph.initializer]
    assert list(a.metadata_props) == list(b.metadata_props) and a.graph.input == b.graph.input
    assert all(not n.metadata_props for n in a.graph.node)


def _export_sha(site: Path, name: str = "decoder.onnx") -> str:
    return json.loads((site / "manifest.json").read_text())["files"][name]["export_sha256"]


def test_site_has_page_decoder_manifest_and_ort_files(exports, fake_dist, tmp_path):
    res = web(exports["mlp"], "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 0, res.output
    site = tmp_path / "site"
    for name in ("index.html", "app.js", "vae.js", "onnxscan.js", "pixels.js", "style.css", "decoder.onnx",
                 "manifest.json", "site.json", *(f"ort/{f}" for f in ORT_FILES)):
        assert (site / name).is_file(), name
    assert not (site / "encoder.onnx").exists()  # the page needs only the decoder
    _assert_same_graph(site / "decoder.onnx", exports["mlp"] / "decoder.onnx")
    # the published manifest: what the page reads, nothing about the build machine
    full, public = (json.loads((d / "manifest.json").read_text()) for d in (exports["mlp"], site))
    assert public["model"] == full["model"] and public["format"] == full["format"] and "source" not in public
    entry = public["files"]["decoder.onnx"]
    assert list(public["files"]) == ["decoder.onnx"] and entry["export_sha256"] == full["files"]["decoder.onnx"]["sha256"]
    assert entry["sha256"] == file_sha256(site / "decoder.onnx") and entry["size"] == (site / "decoder.onnx").stat().st_size
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


def test_rebuild_replaces_only_the_previous_sites_files(exports, fake_dist, tmp_path):
    out = tmp_path / "site"
    build_site(exports["mlp"], out, ort_dist=fake_dist)
    (out / "CNAME").write_text("vae.example.org")  # a user's files in the published folder
    (out / "extra").mkdir()
    (out / "extra/notes.md").write_text("mine")
    build_site(exports["conv"], out, ort_dist=fake_dist)
    assert (out / "CNAME").read_text() == "vae.example.org" and (out / "extra/notes.md").read_text() == "mine"
    assert _export_sha(out) == file_sha256(exports["conv"] / "decoder.onnx")
    assert "CNAME" not in json.loads((out / "site.json").read_text())["files"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_refuses_to_replace_a_folder_that_is_not_a_site(exports, fake_dist, tmp_path):
    out = tmp_path / "mine"
    (out / "src").mkdir(parents=True)  # a folder of other things (a project), not a few loose files
    (out / "notes.txt").write_text("keep me")
    res = web(exports["mlp"], "--out", out, "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "Error: " in res.output and "does not look like a previous site" in res.output
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt", "src"]


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


# --- the output folder: export's rules ---------------------------------------------------------------


@pytest.mark.parametrize("target", [".", ".."])
def test_current_folder_and_above_are_refused(exports, fake_dist, tmp_path, monkeypatch, target):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    res = web(exports["mlp"], "--out", target, "--ort-dist", fake_dist)
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "current folder" in res.output, res.output
    assert "Traceback" not in res.output and sorted(p.name for p in work.iterdir()) == ["keep.txt"]


def test_symlink_out_is_refused_and_left_alone(exports, fake_dist, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    res = web(exports["mlp"], "--out", link, "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "is a symlink" in res.output, res.output
    assert link.is_symlink() and link.resolve() == real.resolve() and list(real.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no .old-* left


def test_folder_with_a_file_the_site_would_overwrite_is_refused(exports, fake_dist, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("my page")
    res = web(exports["mlp"], "--out", out, "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "not a previous `vae-deploy web` site" in res.output
    assert (out / "index.html").read_text() == "my page"


def test_a_few_loose_files_are_kept(exports, fake_dist, tmp_path):
    out = tmp_path / "pub"
    out.mkdir()
    (out / "README.md").write_text("about this demo")
    build_site(exports["mlp"], out, ort_dist=fake_dist)
    assert (out / "README.md").read_text() == "about this demo" and (out / "index.html").is_file()


def _rename_decoder(export: Path, name: str) -> None:
    manifest = json.loads((export / "manifest.json").read_text())
    (export / name).parent.mkdir(parents=True, exist_ok=True)
    (export / "decoder.onnx").rename(export / name)
    manifest["files"][name] = manifest["files"].pop("decoder.onnx")
    (export / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("name", "published"), [
    ("sub/decoder.onnx", "model/decoder.onnx"),
    ("index.html", "model/index.html"),
    ("app.js", "model/app.js"),
    ("manifest.json.onnx", "manifest.json.onnx"),
])  # fmt: skip
def test_decoder_names_never_overwrite_the_page(exports, fake_dist, tmp_path, name, published):
    export = copy_export(exports["mlp"], tmp_path / "export")
    _rename_decoder(export, name)
    res = web(export, "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 0, res.output
    site = tmp_path / "site"
    assert _export_sha(site, published) == file_sha256(export / name)
    _assert_same_graph(site / published, export / name)
    static = REPO / "vae_deploy/serving/web/static"
    for page_file in ("index.html", "app.js", "vae.js"):
        assert (site / page_file).read_bytes() == (static / page_file).read_bytes()
    cfg, public = (json.loads((site / f).read_text()) for f in ("site.json", "manifest.json"))
    assert cfg["decoder"]["file"] == published and list(public["files"]) == [published]


def test_published_site_holds_no_build_machine_paths(exports, fake_dist, tmp_path):
    export = copy_export(exports["mlp"], tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["source"] = {"path": str(tmp_path / "runs/ckpt.pt"), "sha256": "0" * 64}
    manifest["model"]["config"] = {"folder": str(Path.home() / "models/vae"), "note": "relative/ok"}
    (export / "manifest.json").write_text(json.dumps(manifest))
    site = tmp_path / "site"
    build_site(export, site, ort_dist=fake_dist)
    needles = {str(tmp_path), str(Path.home()), str(REPO), str(fake_dist)}
    for f in site.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not [n for n in needles if n.encode() in data], f
    assert json.loads((site / "manifest.json").read_text())["model"]["config"] == {"folder": "vae", "note": "relative/ok"}


def test_decoder_with_external_data_is_refused(exports, fake_dist, tmp_path):
    import onnx

    export = copy_export(exports["mlp"], tmp_path / "export")
    model = onnx.load(str(export / "decoder.onnx"))
    onnx.save(model, str(export / "decoder.onnx"), save_as_external_data=True, location="decoder.onnx.data")
    manifest = json.loads((export / "manifest.json").read_text())
    for name in ("decoder.onnx", "decoder.onnx.data"):
        manifest["files"][name] = {**manifest["files"]["decoder.onnx"], "sha256": file_sha256(export / name),
                                   "size": (export / name).stat().st_size, "format": "onnx" if name.endswith("x") else "data"}
    (export / "manifest.json").write_text(json.dumps(manifest))
    res = web(export, "--out", tmp_path / "site", "--ort-dist", fake_dist)
    assert res.exit_code == 1 and "keeps weights in external data files (decoder.onnx.data)" in res.output, res.output
    assert not (tmp_path / "site").exists()


# --- the page's own checks, run by node on the page's modules ---------------------------------------


def _node(script: str, *args: str) -> object:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the page's modules are checked with it)")
    import subprocess

    r = subprocess.run([node, "--input-type=module", "-e", script, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


STATIC = REPO / "vae_deploy/serving/web/static"


@pytest.mark.parametrize("variant", ["top-level", "if-subgraph", "local-function", "dropout-training",
                                     "dropout-flag-computed", "dropout-inference", "none"])  # fmt: skip
def test_page_scan_finds_what_python_finds(variant, tmp_path):
    import onnx

    from tests.test_cpp import _random_variants, tiny_decoder
    from vae_deploy.contract import random_ops

    model = tiny_decoder(tmp_path / "m", **_random_variants()[variant])
    script = (f'import {{ scanOnnx }} from "{(STATIC / "onnxscan.js").as_uri()}"; import fs from "fs";'
              "console.log(JSON.stringify(scanOnnx(fs.readFileSync(process.argv[1]))));")
    got = _node(script, str(model / "decoder.onnx"))
    proto = onnx.load(str(model / "decoder.onnx"))
    assert got["randomOps"] == random_ops(proto)
    assert got["metadata"] == {p.key: p.value for p in proto.metadata_props}
    assert (got["randomOps"] == []) == (variant in ("dropout-inference", "none"))


def test_page_scan_on_real_exports_and_external_data(exports, tmp_path):
    import onnx

    from vae_deploy.contract import external_data_locations

    export = copy_export(exports["conv"], tmp_path / "export")
    model = onnx.load(str(export / "decoder.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data")
    script = (f'import {{ scanOnnx }} from "{(STATIC / "onnxscan.js").as_uri()}"; import fs from "fs";'
              "console.log(JSON.stringify(process.argv.slice(1).map((f) => scanOnnx(fs.readFileSync(f)))));")
    plain, ext = _node(script, str(export / "decoder.onnx"), str(tmp_path / "ext.onnx"))
    assert plain["randomOps"] == [] and plain["externalData"] == []
    assert ext["externalData"] == external_data_locations(onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False))


@pytest.mark.parametrize("output_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_page_pixels_follow_diffusers_postprocess(output_range, rng):
    torch = pytest.importorskip("torch")
    image_processor = pytest.importorskip("diffusers.image_processor")

    lo, hi = output_range
    # every rounding boundary k + 0.5 (ties go to even), out-of-range values, and random ones
    x01 = np.concatenate([(np.arange(255) + 0.5) / 255, np.arange(256) / 255, [-0.5, 1.5, 2.0, -3.0],
                          rng.random(2000)]).astype(np.float32)  # fmt: skip
    x = (x01 * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)
    script = (f'import {{ toByte }} from "{(STATIC / "pixels.js").as_uri()}"; import fs from "fs";'
              "const [lo, hi, xs] = JSON.parse(fs.readFileSync(0, 'utf8'));"
              "console.log(JSON.stringify(xs.map((v) => toByte(v, lo, hi))));")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the page's modules are checked with it)")
    import subprocess

    r = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps([lo, hi, x.tolist()]),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    page = np.array(json.loads(r.stdout), np.uint8)
    if output_range == (-1.0, 1.0):  # diffusers' own processor: denormalize, then numpy_to_pil
        proc = image_processor.VaeImageProcessor(do_normalize=True)
        t = torch.from_numpy(x.reshape(1, 1, 1, -1).repeat(3, axis=1))
        pil = image_processor.VaeImageProcessor.numpy_to_pil(proc.postprocess(t, output_type="np"))[0]
        want = np.asarray(pil)[0, :, 0]
        np.testing.assert_array_equal(page, want)
    else:  # (0, 1): diffusers without the denormalize step does not clip, the page does
        inside = (x >= 0) & (x <= 1)
        proc = image_processor.VaeImageProcessor(do_normalize=False)
        t = torch.from_numpy(x[inside].reshape(1, 1, 1, -1).repeat(3, axis=1))
        pil = image_processor.VaeImageProcessor.numpy_to_pil(proc.postprocess(t, output_type="np"))[0]
        np.testing.assert_array_equal(page[inside], np.asarray(pil)[0, :, 0])
        np.testing.assert_array_equal(page[~inside], np.where(x[~inside] < 0, 0, 255))
