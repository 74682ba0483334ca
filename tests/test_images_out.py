"""Images out: the float -> uint8 conversion equals diffusers' ``VaeImageProcessor.postprocess``
(0 levels, on random arrays with values outside the range and exact .5 steps), the output range
recorded at export, ``Runtime.decode(output=...)``, ``vae-deploy decode``, the grids and
``batch --format png``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.conftest import SpatialToyVAE, copy_export
from vae_deploy.cli import main
from vae_deploy.errors import InputError
from vae_deploy.images import export_output_range, grid_image, resolve_output_range, to_uint8
from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.batch import run_batch
from vae_deploy.serving.batch.output import BatchError, read_outputs

diffusers = pytest.importorskip("diffusers", reason="the byo extra (diffusers) is not installed")
from diffusers.image_processor import VaeImageProcessor  # noqa: E402

DIFFUSERS_FAMILY = "diffusers.AutoencoderKL"


def half_steps(output_range: tuple[float, float]) -> np.ndarray:
    """Floats whose pixel value lands exactly on k + 0.5 in diffusers' float32 arithmetic."""
    lo, hi = output_range
    k = np.arange(0, 255, dtype=np.float32)
    y = ((k + np.float32(0.5)) / np.float32(255)).astype(np.float32)
    x = (y * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)
    scaled = np.clip(x * np.float32(1 / (hi - lo)) + np.float32(-lo / (hi - lo)), 0, 1) * np.float32(255)
    exact = x[(scaled - np.floor(scaled)) == np.float32(0.5)]
    assert len(exact) > 20, "the test needs values on exact .5 steps"
    return exact


def random_images(seed: int, n: int, c: int, h: int, w: int, output_range: tuple[float, float]) -> np.ndarray:
    """Uniform over 1.6x the range (about a fifth outside it), plus edges and exact .5 steps."""
    lo, hi = output_range
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    rng = np.random.default_rng(seed)
    x = rng.uniform(mid - 1.6 * half, mid + 1.6 * half, (n, c, h, w)).astype(np.float32)
    special = np.concatenate([half_steps(output_range),
                              np.float32([lo, hi, mid, lo - 1e-7, hi + 1e-7, -1e30, 1e30, 0.0, -0.0])])
    flat = x.reshape(-1)
    flat[: min(len(special), flat.size)] = special[: flat.size]
    return x


@pytest.mark.parametrize("output_range", [(-1.0, 1.0), (0.0, 1.0)])
@pytest.mark.parametrize("seed,shape", [(0, (2, 3, 16, 16)), (1, (3, 1, 12, 20)), (2, (1, 3, 32, 8))])
def test_to_uint8_equals_vae_image_processor(output_range, seed, shape):
    x = random_images(seed, *shape, output_range=output_range)
    proc = VaeImageProcessor(do_normalize=output_range == (-1.0, 1.0))
    ours = to_uint8(x, output_range)
    # do_normalize=False skips diffusers' clamp (values outside [0, 1] wrap in its uint8 cast): it is
    # given the clipped array there; we clip in both cases.
    theirs = x if output_range == (-1.0, 1.0) else np.clip(x, 0, 1)
    pil = proc.postprocess(torch.from_numpy(theirs), output_type="pil")
    ref = np.stack([np.asarray(im) for im in pil])
    ref = ref[..., None] if ref.ndim == 3 else ref
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert np.array_equal(ours, ref), f"max diff {np.abs(ours.astype(int) - ref).max()} levels"
    as_np = proc.postprocess(torch.from_numpy(theirs), output_type="np")
    assert np.array_equal(ours, (as_np * 255).round().astype(np.uint8))


def test_to_uint8_refuses_bad_input():
    with pytest.raises(InputError, match="NaN"):
        to_uint8(np.full((1, 3, 2, 2), np.nan, np.float32), (-1, 1))
    with pytest.raises(InputError, match="low < high"):
        to_uint8(np.zeros((1, 3, 2, 2), np.float32), (1, 1))
    with pytest.raises(InputError, match=r"expected images \[N, 1\|3\|4, H, W\], got shape \[1, 2, 2, 2\]"):
        to_uint8(np.zeros((1, 2, 2, 2), np.float32), (-1, 1))


@pytest.mark.parametrize("likelihood,family,data,expected", [
    ("gaussian", DIFFUSERS_FAMILY, None, (-1.0, 1.0)),
    ("bernoulli", "mlp", None, (0.0, 1.0)),
    ("gaussian", "conv", {"name": "digits"}, (0.0, 1.0)),
    ("gaussian", "conv", {"name": "/data/faces", "image_size": [64, 64]}, (0.0, 1.0)),
    ("gaussian", "mlp", {"name": "/data/floats.npy"}, ()),
    ("gaussian", "user_code", None, ()),
])
def test_export_output_range_rule(likelihood, family, data, expected):
    assert export_output_range(likelihood, family, data) == expected


# --- exports: the range is recorded; Runtime.decode(output=...) -------------------------------


def toy_export(out, *, family=DIFFUSERS_FAMILY, likelihood="bernoulli", output_range=(-1.0, 1.0), channels=3):
    """A seeded spatial toy exported with the given spec fields (ONNX only, unverified)."""
    from vae_deploy.exporters import export

    torch.manual_seed(0)
    ex = SpatialToyVAE(channels).eval().exportable(family)
    ex.spec = dataclasses.replace(ex.spec, likelihood=likelihood, output_range=tuple(output_range))
    return export(ex, out, formats=("onnx",), verify=False).out_dir


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    return toy_export(tmp_path_factory.mktemp("declared") / "export")


def latents(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SpatialToyVAE.latent_shape)).astype(np.float32) * 3


def test_range_in_metadata_and_manifest(declared):
    manifest = json.loads((declared / "manifest.json").read_text())
    assert manifest["model"]["output_range"] == [-1.0, 1.0]
    meta = {p.key: p.value for p in onnx.load(str(declared / "decoder.onnx")).metadata_props}
    assert meta["vae_deploy.output_range"] == "-1.0,1.0"
    rt = Runtime(declared / "encoder.onnx", declared / "decoder.onnx", provider="cpu")  # metadata alone
    assert rt.spec.output_range == (-1.0, 1.0)


def test_native_export_records_its_range(exports):
    for family, folder in exports.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["model"]["likelihood"] == "bernoulli", family
        assert manifest["model"]["output_range"] == [0.0, 1.0], family


@pytest.mark.parametrize("n", [1, 4])
def test_runtime_decode_outputs(declared, n):
    rt = Runtime.load(declared, provider="cpu")
    z = latents(n, n)
    x = rt.decode(z)
    u8 = rt.decode(z, output="uint8")
    assert u8.shape == (n, 8, 8, 3) and u8.dtype == np.uint8
    ref = VaeImageProcessor().postprocess(torch.from_numpy(x), output_type="pil")
    assert np.array_equal(u8, np.stack([np.asarray(im) for im in ref]))
    pil = rt.decode(z, output="pil")
    assert isinstance(pil, list) and len(pil) == n and all(im.mode == "RGB" and im.size == (8, 8) for im in pil)
    assert np.array_equal(np.stack([np.asarray(im) for im in pil]), u8)
    assert np.array_equal(rt.decode(z[0], output="uint8"), u8[0])  # one latent -> one image
    with pytest.raises(InputError, match=r"output must be one of \('float', 'uint8', 'pil'\), got 'png'"):
        rt.decode(z, output="png")


def older_export(src, dst, **model_fields):
    """A copy of ``src`` whose manifest is what an export made before output_range was recorded
    says (no ``output_range`` key), with ``model_fields`` changed."""
    folder = copy_export(src, dst)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["model"]["output_range"]
    manifest["model"].update(model_fields)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_older_export_falls_back_and_says_so(declared, tmp_path):
    old = older_export(declared, tmp_path / "old")
    rt = Runtime.load(old, provider="cpu")
    assert resolve_output_range(rt.spec)[0] == (-1.0, 1.0)
    z = latents(7)
    with pytest.warns(UserWarning, match=r"records no output range .* assumed \(-1, 1\) for family diffusers"):
        u8 = rt.decode(z, output="uint8")
    assert np.array_equal(u8, to_uint8(rt.decode(z), (-1, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt.decode(z, output="uint8")  # said once per Runtime


def test_undeclared_gaussian_range_is_an_error(declared, tmp_path):
    out = older_export(declared, tmp_path / "g", family="toy", likelihood="gaussian")
    rt = Runtime.load(out, provider="cpu")
    with pytest.raises(InputError, match="declares no output range"):
        rt.decode(latents(1), output="uint8")
    r = CliRunner().invoke(main, ["decode", str(out), str(_npy(tmp_path / "z.npy", latents(1))),
                                  "--out", str(tmp_path / "png")])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "--output-range LOW,HIGH" in r.output
    assert not (tmp_path / "png").exists()
    r = CliRunner().invoke(main, ["decode", str(out), str(tmp_path / "z.npy"), "--out", str(tmp_path / "png"),
                                  "--output-range", "0,1"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / "00000.png")),
                          to_uint8(rt.decode(latents(1)), (0, 1))[0])


# --- vae-deploy decode ---------------------------------------------------------------------


def _npy(path, a):
    np.save(path, a)
    return path


@pytest.mark.parametrize("scale", ["raw", "scaled"])
def test_cli_decode_writes_pipeline_pngs(declared, tmp_path, scale):
    z = latents(11, 12)
    rt = Runtime.load(declared, provider="cpu")
    given = z if scale == "raw" else (z - np.float32(rt.spec.shift_factor)) * np.float32(rt.spec.scaling_factor)
    out = tmp_path / "png"
    r = CliRunner().invoke(main, ["decode", str(declared), str(_npy(tmp_path / "z.npy", given)), "--out", str(out),
                                  "--latents", scale, "--provider", "cpu"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:05d}.png" for i in range(12)]
    ref = VaeImageProcessor().postprocess(torch.from_numpy(rt.decode(z)), output_type="pil")
    for name, im in zip(names, ref):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(im)), name


def test_cli_decode_bad_input(declared, tmp_path):
    runner = CliRunner()
    z = _npy(tmp_path / "z.npy", latents(1))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    r = runner.invoke(main, ["decode", str(declared), str(z), "--out", str(busy)])
    assert r.exit_code == 1 and "is not empty" in r.output and (busy / "keep.txt").read_text() == "mine"
    r = runner.invoke(main, ["decode", str(declared), str(z), "--out", str(tmp_path / "o"), "--output-range", "1,0"])
    assert r.exit_code == 2 and "LOW < HIGH" in r.output
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = runner.invoke(main, ["decode", str(declared), str(tmp_path / "obj.npy"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "without pickle" in r.output
    wrong = _npy(tmp_path / "wrong.npy", np.zeros((2, 3, 4, 4), np.float32))
    r = runner.invoke(main, ["decode", str(declared), str(wrong), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


# --- grids and batch png use the same conversion ----------------------------------------------


def test_sample_grid_uses_the_range(declared, tmp_path):
    r = CliRunner().invoke(main, ["sample", str(declared), "-n", "4", "--seed", "3", "--provider", "cpu",
                                  "--out", str(tmp_path / "s.npy"), "--grid", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    x = np.load(tmp_path / "s.npy")
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert np.array_equal(grid, grid_image(x, output_range=(-1, 1)))
    assert not np.array_equal(grid, grid_image(x))  # not the old min-max stretch


def test_batch_decode_png(declared, tmp_path):
    z = latents(5, 7)
    rt = Runtime.load(declared, provider="cpu")
    run_batch("decode", declared, tmp_path / "out", input_path=_npy(tmp_path / "z.npy", z), shard_rows=3,
              fmt="png", runtime_options={"provider": "cpu"})
    got = read_outputs(tmp_path / "out")["x"]
    assert np.array_equal(got, rt.decode(z, output="uint8"))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"x-{i:05d}.png" for i in range(7)]
    with pytest.raises(BatchError, match="not encode"):
        run_batch("encode", declared, tmp_path / "enc", input_path=_npy(tmp_path / "x.npy", rt.decode(z)),
                  fmt="png", runtime_options={"provider": "cpu"})
