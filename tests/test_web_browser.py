"""The web page in a real browser: Debian's chromium, headless, driven by Playwright, against
sites served on 127.0.0.1. Run by `make test-web` (CI), which installs onnxruntime-web first
and sets VAE_DEPLOY_REQUIRE_BROWSER=1 so that a missing browser fails instead of skipping.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from vae_deploy.images import to_images
from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.web import build_site
from vae_deploy.serving.web.prng import normal
from vae_deploy.serving.web.server import serve_site

pytestmark = pytest.mark.slow  # a browser start and a WASM compile per page: seconds each

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("VAE_DEPLOY_ARTIFACTS", REPO / "tmp/artifacts"))
TOL = 1e-4  # max abs difference, onnxruntime-web WASM vs onnxruntime CPU


def _unavailable(reason: str) -> None:
    if os.environ.get("VAE_DEPLOY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VAE_DEPLOY_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chrome() -> Iterator[object]:
    from vae_deploy.errors import VaeDeployError
    from vae_deploy.serving.web import browser
    from vae_deploy.serving.web.ortdist import find_dist

    try:
        find_dist()
        browser.chromium_path()
        pw = browser.sync_playwright().start()
    except VaeDeployError as e:
        _unavailable(str(e))
    b = browser.launch(pw)
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def sites(exports, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    out = {family: build_site(exports[family], root / family).out_dir for family in ("mlp", "conv")}
    out["spatial-export"] = akl = tiny_akl_export(root / "akl-export")
    out["spatial"] = build_site(akl, root / "spatial").out_dir
    return out


def tiny_akl_export(out: Path) -> Path:
    """diffusers' AutoencoderKL, tiny: latents [4, h, w] with dynamic h and w (ONNX only)."""
    import torch

    import vae_deploy
    from tests.test_byo import tiny_autoencoder_kl

    x = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    return vae_deploy.export(tiny_autoencoder_kl(), out, example_input=x, formats=("onnx",), verify=False).out_dir


@contextmanager
def page_at(chrome, site: Path, *, isolated: bool = False, query: str = "") -> Iterator[object]:
    from vae_deploy.serving.web.browser import open_page

    with serve_site(site, isolated=isolated) as url:
        page = open_page(chrome, url + query)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page
        finally:
            page.context.close()
        assert errors == [], errors


def ready(page) -> None:
    assert page.evaluate("document.body.dataset.state") == "ready", page.evaluate("window.vaeDeploy.error")


DECODE = """async ([z, dims]) => {
  const out = await window.vaeDeploy.decode(Float32Array.from(z), dims);
  return { data: Array.from(out.data), dims: out.dims };
}"""


def page_decode(page, z: np.ndarray) -> np.ndarray:
    out = page.evaluate(DECODE, [z.ravel().tolist(), list(z.shape)])
    return np.asarray(out["data"], np.float32).reshape(out["dims"])


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_decode_matches_the_python_runtime(chrome, sites, exports, family, rng):
    rt = Runtime.load(exports[family], provider="cpu")
    z = rng.standard_normal((5, *rt.latent_shape)).astype(np.float32)
    with page_at(chrome, sites[family]) as page:
        ready(page)
        got = page_decode(page, z)
    want = rt.decode(z)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL


def test_sample_draws_the_documented_noise(chrome, sites, exports):
    rt = Runtime.load(exports["mlp"], provider="cpu")
    with page_at(chrome, sites["mlp"]) as page:
        ready(page)
        s = page.evaluate("""async () => { const s = await window.vaeDeploy.sample(3, 11);
            return { z: Array.from(s.z), data: Array.from(s.data), dims: s.dims }; }""")
    z = normal(3 * int(np.prod(rt.latent_shape)), 11).reshape(3, int(np.prod(rt.latent_shape)))
    np.testing.assert_allclose(np.asarray(s["z"], np.float32).reshape(z.shape), z, atol=1e-6)
    got = np.asarray(s["data"], np.float32).reshape(s["dims"])
    assert np.abs(got - rt.decode(z)).max() <= TOL


def test_sample_grid_renders_the_decoded_samples(chrome, sites, exports):
    from PIL import Image

    rt = Runtime.load(exports["conv"], provider="cpu")
    with page_at(chrome, sites["conv"], query="?seed=3") as page:
        ready(page)
        layout = page.evaluate("window.vaeDeploy.layout.grid")
        png = page.locator("#grid").screenshot()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
    (ARTIFACTS / "web-grid.png").write_bytes(png)
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int16)

    assert layout["seed"] == 3 and layout["n"] == 16
    want = to_images(rt.decode(normal(16 * int(np.prod(rt.latent_shape)), 3).reshape(16, int(np.prod(rt.latent_shape)))))  # [N, H, W, C]
    s, pad, h, w, cols = layout["scale"], layout["pad"], layout["h"], layout["w"], layout["cols"]
    size = (layout["rows"] * (h * s + pad) + pad, cols * (w * s + pad) + pad)
    assert abs(shot.shape[0] - size[0]) <= 1 and abs(shot.shape[1] - size[1]) <= 1  # subpixel element box
    diffs, cells = [], []
    for i in range(16):
        r, k = divmod(i, cols)
        y, x = pad + r * (h * s + pad) + s // 2, pad + k * (w * s + pad) + s // 2
        cell = shot[y:y + h * s:s, x:x + w * s:s, 0]  # the centre of each image pixel's s x s block
        diffs.append(np.abs(cell - want[i, ..., 0].astype(np.int16)).max())
        cells.append(cell)
    assert max(diffs) <= 2, diffs  # rounding only: the page shows what the Runtime decodes
    cells = np.stack(cells)
    assert cells.max() - cells.min() >= 5 and abs(cells.mean() - 0x22) > 20  # drawn images, not the background


def test_sliders_decode_live(chrome, sites):
    with page_at(chrome, sites["mlp"]) as page:
        ready(page)
        assert page.locator("#sliders input[type=range]").count() == 4  # latent_dim 4 < 16
        before = page.locator("#live").screenshot()
        page.locator("#sliders input[data-dim='0']").fill("-3")
        page.wait_for_function("document.querySelector('#sliders output').textContent === '-3.00'")
        page.wait_for_timeout(300)
        after = page.locator("#live").screenshot()
        strip = page.evaluate("window.vaeDeploy.layout.strip")
    assert before != after
    assert strip["n"] == 8


def test_corrupted_decoder_is_refused_with_a_message(chrome, sites, tmp_path):
    site = shutil.copytree(sites["mlp"], tmp_path / "site")
    data = bytearray((site / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (site / "decoder.onnx").write_bytes(bytes(data))
    with page_at(chrome, site) as page:
        assert page.evaluate("document.body.dataset.state") == "error"
        message = page.locator("#error").inner_text()
        assert page.locator("#error").is_visible()
        assert message.startswith("Error: decoder.onnx failed its checksum check") and "Refusing" in message
        assert page.evaluate("typeof window.vaeDeploy.decode") == "undefined"  # no session was made


def test_spatial_latents_decode_within_the_stated_limit(chrome, sites):
    rt = Runtime.load(sites["spatial-export"], provider="cpu")
    rng = np.random.default_rng(1)
    with page_at(chrome, sites["spatial"]) as page:
        ready(page)
        assert "up to 32 x 32 cells" in page.locator("#limit").inner_text()
        assert page.evaluate("window.vaeDeploy.contract.latentShape") == [4, -1, -1]
        assert page.evaluate("window.vaeDeploy.layout.grid.n") == 4
        for z in (rng.standard_normal((2, 4, 8, 8)), rng.standard_normal((1, 4, 6, 10))):
            z = z.astype(np.float32)
            assert np.abs(page_decode(page, z) - rt.decode(z)).max() <= TOL
        err = page.evaluate("""async () => { try { await window.vaeDeploy.decode(new Float32Array(4 * 40 * 40),
            [1, 4, 40, 40]); return null; } catch (e) { return e.message; } }""")
    assert err == "latent axis 2 is 40; this page decodes spatial latents up to 32 cells per side"


def test_bad_latents_are_refused_with_the_expected_shape(chrome, sites):
    with page_at(chrome, sites["mlp"]) as page:
        ready(page)
        err = page.evaluate("""async () => { try { await window.vaeDeploy.decode(new Float32Array(3), [1, 3]);
            return null; } catch (e) { return e.message; } }""")
    assert err == "latent axis 1 must be 4, got 3"


def test_threads_when_cross_origin_isolated(chrome, sites, exports, rng):
    rt = Runtime.load(exports["conv"], provider="cpu")
    z = rng.standard_normal((4, int(np.prod(rt.latent_shape)))).astype(np.float32)
    with page_at(chrome, sites["conv"], isolated=True, query="?threads=2") as page:
        ready(page)
        assert page.evaluate("crossOriginIsolated") is True
        assert page.evaluate("window.vaeDeploy.decoder.info.threads") == 2
        assert np.abs(page_decode(page, z) - rt.decode(z)).max() <= TOL


def test_one_thread_without_cross_origin_isolation(chrome, sites):
    with page_at(chrome, sites["mlp"], query="?threads=2") as page:
        ready(page)
        assert page.evaluate("crossOriginIsolated") is False
        assert page.evaluate("window.vaeDeploy.decoder.info.threads") == 1


def test_measure_reports_page_and_runtime_latency(chrome, exports, tmp_path):
    import json

    from vae_deploy.serving.web.measure import measure

    report = measure(exports["mlp"], tmp_path / "out", reps=3, loads=1, batches=(1,), threads=2,
                     screenshot=tmp_path / "page.png", chrome=chrome)
    rows = {(r["backend"], r["threads"]): r for r in report["rows"]}
    assert set(rows) == {("ort-web-wasm", 1), ("ort-web-wasm", 2), ("ort-cpu", 1), ("ort-cpu", 2)}
    assert rows[("ort-web-wasm", 2)]["cross_origin_isolated"] is True
    for r in rows.values():
        assert r["first_image_ms"] > 0 and 0 < r["median_ms"] <= r["p95_ms"] and r["reps"] == 3
    assert json.loads((tmp_path / "out/web_latency.json").read_text())["rows"] == report["rows"]
    assert "| ort-web-wasm | 2 | yes | 1 |" in (tmp_path / "out/web_latency.md").read_text()
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_operator_is_refused_even_with_a_rehashed_manifest(chrome, sites, tmp_path):
    # someone edits the published site: adds noise to the decoder and re-hashes manifest.json and
    # site.json so the checksum passes; the page's own scan of the bytes must still refuse it
    import json

    import onnx

    from vae_deploy.artifacts import file_sha256

    site = shutil.copytree(sites["mlp"], tmp_path / "site")
    model = onnx.load(str(site / "decoder.onnx"))
    model.graph.node.append(onnx.helper.make_node("RandomNormalLike", [model.graph.input[0].name], ["noise"],
                                                  name="noise"))  # fmt: skip
    onnx.save(model, str(site / "decoder.onnx"))
    sha, size = file_sha256(site / "decoder.onnx"), (site / "decoder.onnx").stat().st_size
    manifest = json.loads((site / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"].update(sha256=sha, size=size)
    (site / "manifest.json").write_text(json.dumps(manifest))
    cfg = json.loads((site / "site.json").read_text())
    cfg["decoder"]["sha256"] = sha
    (site / "site.json").write_text(json.dumps(cfg))
    with page_at(chrome, site) as page:
        assert page.evaluate("document.body.dataset.state") == "error"
        message = page.locator("#error").inner_text()
        assert message.startswith("Error: decoder.onnx: random operator RandomNormalLike (noise)"), message
        assert "Refusing to run it" in message and len(message.strip().splitlines()) == 1
        assert page.evaluate("typeof window.vaeDeploy.decode") == "undefined"  # no session was made


@pytest.mark.parametrize("family", ["conv", "spatial"])
def test_page_pixels_are_the_output_range_rule(chrome, sites, exports, family, rng):
    # the page's float -> uint8 step (pixels.js, what the canvases draw) on the page's own decode
    # of a latent, against the rule in numpy: clip((x - lo) / (hi - lo), 0, 1) * 255, ties to even
    import json

    manifest = json.loads((sites[family] / "manifest.json").read_text())
    lo, hi = manifest["model"].get("output_range") or (0.0, 1.0)
    with page_at(chrome, sites[family]) as page:
        ready(page)
        dims = page.evaluate("window.vaeDeploy.decoder.latentDims(2, 4)")
        z = rng.standard_normal(dims).astype(np.float32) * 3  # wide: values outside the range too
        out = page.evaluate(
            """async ([z, dims]) => {
              const { toImages } = await import("./pixels.js");
              const out = await window.vaeDeploy.decode(Float32Array.from(z), dims);
              const imgs = toImages(out.data, out.dims, window.vaeDeploy.range);
              return { data: Array.from(out.data), dims: out.dims, range: window.vaeDeploy.range,
                       pixels: imgs.map((im) => Array.from(im.data)) };
            }""",
            [z.ravel().tolist(), dims],
        )
    assert out["range"] == [lo, hi]
    x = np.asarray(out["data"], np.float32).reshape(out["dims"])
    if x.ndim == 2:
        side = int(np.sqrt(x.shape[1]))
        x = x.reshape(-1, 1, side, side)
    want = np.round(np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0, 1) * np.float32(255)).astype(np.uint8)
    want = want.transpose(0, 2, 3, 1)
    got = np.asarray(out["pixels"], np.uint8).reshape(x.shape[0], x.shape[2], x.shape[3], 4)
    rgb = got[..., :3] if x.shape[1] == 3 else got[..., :1]
    np.testing.assert_array_equal(rgb, want)
    assert (got[..., 3] == 255).all() and len(np.unique(rgb)) > 10  # real images, clipped ends included
