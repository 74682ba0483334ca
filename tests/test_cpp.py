"""The C++ consumer (cpp/): build it, run vae_sample on the suite's exports (and a toy with
multi-dimensional latents), and hold it to onnxruntime in Python on the same files; its
errors; its memory (valgrind).

The first run builds cpp/ into cpp/build/ (cpp/build.sh, which fetches the ONNX Runtime
headers once into cpp/third_party/); later runs reuse that build.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.conftest import copy_export, spatial_toy_export
from vae_deploy.artifacts import file_sha256
from vae_deploy.contract import random_ops

CPP = Path(__file__).resolve().parents[1] / "cpp"
TOL = 1e-5
FETCH_FAILED = 3  # get-onnxruntime.sh's exit status when the headers cannot be fetched


# --- building ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vae_sample() -> Path:
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"cannot build cpp/: {' and '.join(missing)} not installed")
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run([str(CPP / "build.sh")], env=env, capture_output=True, text=True, timeout=900)
    if r.returncode == FETCH_FAILED:
        pytest.skip(f"the ONNX Runtime headers could not be fetched: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, f"cpp/build.sh failed:\n{r.stdout}\n{r.stderr}"
    exe = Path(r.stdout.strip().splitlines()[-1])
    assert exe.is_file(), exe
    return exe


def run_cpp(exe: Path, *args: object, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, f"vae_sample {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}"
    return r


# --- exports -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cpp_exports(exports, tmp_path_factory) -> dict[str, Path]:
    """The suite's tiny mlp and conv exports (trained, verified), and a spatial-latent toy."""
    out = tmp_path_factory.mktemp("cpp-exports") / "spatial"
    return {**exports, "spatial": spatial_toy_export(out, channels=3)}


FAMILIES = ["mlp", "conv", "spatial"]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def shapes(model_dir: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    props = {p.key: p.value for p in onnx.load(str(model_dir / "decoder.onnx")).metadata_props}
    parse = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
    return parse(props["vae_deploy.input_shape"]), parse(props["vae_deploy.latent_shape"])


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32, (a.shape, a.dtype, b.shape, b.dtype)
    return float(np.max(np.abs(a - b)))


# --- parity with onnxruntime in Python -------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_decodes_like_python(vae_sample, cpp_exports, family, tmp_path):
    model = cpp_exports[family]
    input_shape, latent_shape = shapes(model)
    run_cpp(vae_sample, "--model", model, "--n", 16, "--seed", 7,
            "--save-z", tmp_path / "z.npy", "--out", tmp_path / "x.npy")  # fmt: skip
    z, x = np.load(tmp_path / "z.npy"), np.load(tmp_path / "x.npy")
    assert z.shape == (16, *latent_shape) and x.shape == (16, *input_shape)
    (expected,) = session(model / "decoder.onnx").run(None, {"z": z})
    assert max_abs(x, expected) <= TOL
    # a seed is a seed: the same one draws the same latents, another one others
    run_cpp(vae_sample, "--model", model, "--n", 16, "--seed", 7, "--save-z", tmp_path / "z2.npy")
    run_cpp(vae_sample, "--model", model, "--n", 16, "--seed", 8, "--save-z", tmp_path / "z3.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "z2.npy"), z)
    assert not np.array_equal(np.load(tmp_path / "z3.npy"), z)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decode_z_file_like_python(vae_sample, cpp_exports, family, dtype, rng, tmp_path):
    model = cpp_exports[family]
    _, latent_shape = shapes(model)
    z = rng.standard_normal((5, *latent_shape)).astype(dtype)
    np.save(tmp_path / "z.npy", z)
    run_cpp(vae_sample, "--model", model, "--z-file", tmp_path / "z.npy", "--out", tmp_path / "x.npy")
    (expected,) = session(model / "decoder.onnx").run(None, {"z": z.astype(np.float32)})
    assert max_abs(np.load(tmp_path / "x.npy"), expected) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_x_file_like_python(vae_sample, cpp_exports, family, rng, tmp_path):
    model = cpp_exports[family]
    input_shape, _ = shapes(model)
    x = rng.random((9, *input_shape), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    run_cpp(vae_sample, "--model", model, "--x-file", tmp_path / "x.npy", "--out", tmp_path / "mu.npy",
            "--logvar-out", tmp_path / "logvar.npy", "--recon-out", tmp_path / "recon.npy")  # fmt: skip
    mu, logvar = session(model / "encoder.onnx").run(["mu", "logvar"], {"x": x})
    (recon,) = session(model / "decoder.onnx").run(None, {"z": mu})
    assert max_abs(np.load(tmp_path / "mu.npy"), mu) <= TOL
    assert max_abs(np.load(tmp_path / "logvar.npy"), logvar) <= TOL
    assert max_abs(np.load(tmp_path / "recon.npy"), recon) <= TOL


# --- the latent generator is the documented one ------------------------------------------------


def mt19937_64(seed: int) -> Iterator[int]:
    """std::mt19937_64, from the constants the C++ standard gives."""
    n, m, mask = 312, 156, (1 << 64) - 1
    lower, upper = (1 << 31) - 1, mask ^ ((1 << 31) - 1)
    mt = [seed & mask]
    for i in range(1, n):
        mt.append((6364136223846793005 * (mt[-1] ^ (mt[-1] >> 62)) + i) & mask)
    while True:
        for i in range(n):
            y = (mt[i] & upper) | (mt[(i + 1) % n] & lower)
            mt[i] = mt[(i + m) % n] ^ (y >> 1) ^ (0xB5026F5AA96619E9 if y & 1 else 0)
        for y in mt:
            y ^= (y >> 29) & 0x5555555555555555
            y ^= (y << 17) & 0x71D67FFFEDA60000
            y ^= (y << 37) & 0xFFF7EEE000000000
            yield (y ^ (y >> 43)) & mask


def box_muller(seed: int, count: int) -> np.ndarray:
    bits = mt19937_64(seed)
    uniform = lambda: ((next(bits) >> 11) + 0.5) * 2.0**-53  # noqa: E731
    out = []
    while len(out) < count:
        r, theta = math.sqrt(-2.0 * math.log(uniform())), 2.0 * math.pi * uniform()
        out += [r * math.cos(theta), r * math.sin(theta)]
    return np.array(out[:count], dtype=np.float32)


def test_latents_follow_the_documented_generator(vae_sample, cpp_exports, tmp_path):
    # the reference itself: the standard's check value, the 10000th output for the default seed
    gen = mt19937_64(5489)
    assert [next(gen) for _ in range(10000)][-1] == 9981545732273789042

    run_cpp(
        vae_sample,
        "--model",
        cpp_exports["spatial"],
        "--n",
        33,
        "--seed",
        123,
        "--save-z",
        tmp_path / "z.npy",
    )
    z = np.load(tmp_path / "z.npy")  # 33 * 32 values: odd pairs, and more than one draw per example
    np.testing.assert_allclose(z.ravel(), box_muller(123, z.size), rtol=1e-6, atol=1e-6)
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1


# --- output formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "mode", "channels"), [("conv", "L", 1), ("spatial", "RGB", 3)])
def test_image_grid(vae_sample, cpp_exports, family, mode, channels, tmp_path):
    from PIL import Image

    grid = tmp_path / "grid.png"
    run_cpp(
        vae_sample, "--model", cpp_exports[family], "--n", 10, "--out", tmp_path / "x.npy", "--grid", grid
    )
    assert grid.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")  # a PNG any viewer opens
    img = Image.open(grid)
    # 10 images of 8x8, each upscaled 8x to 64x64 (nearest neighbour): 4 columns and 3 rows,
    # with 1-pixel lines between and around
    assert img.mode == mode and img.size == (4 * 65 + 1, 3 * 65 + 1)
    pixels = np.asarray(img).reshape(3 * 65 + 1, 4 * 65 + 1, channels)
    x = np.load(tmp_path / "x.npy")
    want = np.rint(np.clip(x[0], 0, 1) * 255).astype(np.uint8).repeat(8, 1).repeat(8, 2)
    np.testing.assert_array_equal(pixels[1:65, 1:65].transpose(2, 0, 1), want)


def test_npy_output_is_plain_float32(vae_sample, cpp_exports, tmp_path):
    run_cpp(vae_sample, "--model", cpp_exports["mlp"], "--n", 3, "--out", tmp_path / "x.npy")
    raw = (tmp_path / "x.npy").read_bytes()
    assert raw[:8] == b"\x93NUMPY\x01\x00"
    header_len = int.from_bytes(raw[8:10], "little")
    assert (10 + header_len) % 64 == 0
    x = np.load(tmp_path / "x.npy", allow_pickle=False)
    assert x.dtype == np.dtype("<f4") and x.shape == (3, 1, 8, 8) and x.flags.c_contiguous


def test_bench_prints_throughput(vae_sample, cpp_exports):
    r = run_cpp(
        vae_sample, "--model", cpp_exports["mlp"], "--n", 64, "--threads", 1, "--repeat", 5, "--warmup", 1
    )
    line = r.stdout.strip().splitlines()[-1]
    assert (
        line.startswith("bench: sample batch=64 threads=1 repeat=5")
        and float(line.split("samples_per_s=")[1]) > 0
    )


# --- errors --------------------------------------------------------------------------------------


def _shape(s: tuple[int, ...]) -> str:
    return ",".join(map(str, s))


def _manifest_shape(text: str | None) -> list[int]:
    """A metadata shape as the manifest records it (-1 for a dynamic axis)."""
    parts = (text or "").split(",")
    return [int(p) if p.strip().isdigit() and int(p) > 0 else -1 for p in parts]


def write_manifest(
    folder: Path, input_shape: list[int], latent_shape: list[int], roles: dict[str, str] | None = None
) -> Path:
    """A manifest.json listing ``roles`` (name -> role; default: decoder.onnx), hashed now."""
    import json

    roles = roles or {"decoder.onnx": "decoder"}
    files = {name: {"sha256": file_sha256(folder / name), "size": (folder / name).stat().st_size, "role": role,
                    "format": "onnx" if name.endswith(".onnx") else "data", "precision": "fp32"}
             for name, role in roles.items()}  # fmt: skip
    manifest = {"format": {"name": "vae-deploy-export", "version": 1},
                "model": {"input_shape": input_shape, "latent_shape": latent_shape}, "files": files}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def tiny_decoder(
    path: Path,
    *,
    input_name: str = "z",
    input_type: int = TensorProto.FLOAT,
    graph_latent: int = 4,
    x_shape: tuple[int, ...] = (1, 2, 2),
    meta: dict[str, str | None] | None = None,
    extra_nodes: list[onnx.NodeProto] | None = None,
    extra_initializers: list[onnx.TensorProto] | None = None,
    functions: list[onnx.FunctionProto] | None = None,
    manifest: bool = True,
) -> Path:
    """A hand-built decoder graph: z [N, k] -> MatMul -> Reshape -> x_hat [N, *x_shape], with a
    manifest.json that lists and hashes it (``manifest=False``: none)."""
    size = math.prod(x_shape)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [graph_latent, size], np.ones(graph_latent * size).tolist()
    )
    target = helper.make_tensor("target", TensorProto.INT64, [1 + len(x_shape)], [-1, *x_shape])
    nodes = [
        helper.make_node("Cast", [input_name], ["zf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["zf", "w"], ["flat"]),
        helper.make_node("Reshape", ["flat", "target"], ["x_hat"]),
    ]
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info(input_name, input_type, ["batch", graph_latent])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["batch", *x_shape])],
        initializer=[w, target, *(extra_initializers or [])],
    )  # fmt: skip
    graph.node.extend(extra_nodes or [])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("local", 1)] if functions else [])
    proto = helper.make_model(graph, opset_imports=opsets, functions=functions or [])
    proto.ir_version = 8
    props: dict[str, str | None] = {
        "format_version": "1", "role": "decoder", "input_shape": _shape(x_shape), "latent_shape": "4", "latent_dim": "4",
    }  # fmt: skip
    props.update(meta or {})
    helper.set_model_props(proto, {f"vae_deploy.{k}": v for k, v in props.items() if v is not None})
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path / "decoder.onnx"))
    if manifest:
        write_manifest(path, _manifest_shape(props["input_shape"]), _manifest_shape(props["latent_shape"]))
    return path


@pytest.mark.parametrize("input_shape", ["1,2,2", "1,-1,-1", "1,height,width"])
def test_hand_built_decoder_runs(vae_sample, input_shape, tmp_path):
    # the baseline that the broken variants below depart from; metadata axes that are not
    # positive sizes are dynamic (the exporter writes -1) and accept the graph's sizes
    model = tiny_decoder(tmp_path / "ok", meta={"input_shape": input_shape})
    run_cpp(vae_sample, "--model", model, "--n", 2, "--out", tmp_path / "x.npy", "--grid", tmp_path / "x.png")
    assert np.load(tmp_path / "x.npy").shape == (2, 1, 2, 2)


def test_dynamic_latent_axes_need_a_z_file(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "dyn", meta={"latent_shape": "-1", "latent_dim": None})
    r = run_cpp(vae_sample, "--model", model, "--n", 2, ok=False)
    assert r.returncode == 1 and "has a dynamic axis; give the latents with --z-file" in r.stderr, r.stderr
    np.save(tmp_path / "z.npy", np.ones((2, 4), np.float32))
    run_cpp(vae_sample, "--model", model, "--z-file", tmp_path / "z.npy", "--out", tmp_path / "x.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.full((2, 1, 2, 2), 4, np.float32))


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"input_name": "latent"}, "must have exactly one input 'z', the graph has 'latent'"),
        ({"input_type": TensorProto.DOUBLE}, "input 'z' should be float32 [N, 4] (metadata vae_deploy.latent_shape), "
                                             "the graph declares 'z' float64 [?, 4]"),
        ({"meta": {"latent_shape": "8", "latent_dim": "8"}},
         "input 'z' should be float32 [N, 8] (metadata vae_deploy.latent_shape), the graph declares 'z' float32 [?, 4]"),
        ({"meta": {"latent_shape": "2,2"}}, "input 'z' should be float32 [N, 2, 2]"),
        ({"meta": {"input_shape": "1,4,4"}}, "output 'x_hat' should be float32 [N, 1, 4, 4] (metadata "
                                             "vae_deploy.input_shape), the graph declares 'x_hat' float32 [?, 1, 2, 2]"),
        ({"meta": {"latent_dim": "5"}}, "vae_deploy.latent_dim is '5' but vae_deploy.latent_shape [4] has 4 elements"),
        ({"meta": {"role": "encoder"}}, "expected a decoder (vae_deploy.role), the file says 'encoder'"),
        ({"meta": {"format_version": "2"}}, "vae_deploy.format_version is '2', this program reads version 1"),
        ({"meta": {"latent_shape": None}}, "metadata_props has no 'vae_deploy.latent_shape'"),
        ({"meta": {"latent_shape": "4,,2"}}, "expected comma-separated sizes"),
    ],
    ids=["input-name", "input-dtype", "latent-mismatch", "latent-rank", "output-mismatch", "latent-dim",
         "role", "format-version", "no-metadata", "bad-shape-text"],
)  # fmt: skip
def test_clear_error_for_a_model_that_breaks_the_contract(vae_sample, variant, message, tmp_path):
    # the session-level checks, which stand behind the manifest's (its shapes follow the metadata here)
    model = tiny_decoder(tmp_path / "bad", **variant, manifest=False)
    r = run_cpp(vae_sample, "--model", model, "--n", 2, "--no-verify", ok=False)
    assert r.returncode == 1, r.stderr
    assert "decoder.onnx" in r.stderr and message in r.stderr, r.stderr


def test_clear_error_for_a_missing_model(vae_sample, tmp_path):
    r = run_cpp(vae_sample, "--model", tmp_path / "nowhere", ok=False)
    assert r.returncode == 1 and f"model folder not found: {tmp_path / 'nowhere'}" in r.stderr, r.stderr
    r = run_cpp(vae_sample, "--model", tmp_path / "nowhere", "--no-verify", ok=False)
    assert r.returncode == 1
    assert f"model file not found: {tmp_path / 'nowhere' / 'decoder.onnx'}" in r.stderr


def test_clear_error_for_a_file_that_is_not_onnx(vae_sample, tmp_path):
    (tmp_path / "decoder.onnx").write_text("not a model")
    r = run_cpp(vae_sample, "--model", tmp_path, "--no-verify", ok=False)
    assert r.returncode == 1 and f"cannot load ONNX model {tmp_path / 'decoder.onnx'}" in r.stderr


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 5), np.float32), "input 'z' must have shape [N, 4] with N >= 1 (metadata vae_deploy.latent_shape), got [3, 5]"),
        (np.zeros((0, 4), np.float32), "with N >= 1 (metadata vae_deploy.latent_shape), got [0, 4]"),
        (np.zeros((3, 4), np.int64), "dtype '<i8' is not supported; expected float32 ('<f4') or float64 ('<f8')"),
        (np.asfortranarray(np.zeros((3, 4), np.float32)), "array is in Fortran order"),
    ],
    ids=["shape", "empty-batch", "dtype", "fortran"],
)  # fmt: skip
def test_clear_error_for_bad_latents(vae_sample, array, message, tmp_path):
    model = tiny_decoder(tmp_path / "ok")
    np.save(tmp_path / "z.npy", array)
    r = run_cpp(vae_sample, "--model", model, "--z-file", tmp_path / "z.npy", ok=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_truncated_npy_is_refused(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "ok")
    np.save(tmp_path / "z.npy", np.zeros((3, 4), np.float32))
    raw = (tmp_path / "z.npy").read_bytes()
    (tmp_path / "z.npy").write_bytes(raw[:-5])
    r = run_cpp(vae_sample, "--model", model, "--z-file", tmp_path / "z.npy", ok=False)
    assert r.returncode == 1 and "needs 48 data bytes, the file has 43" in r.stderr, r.stderr


def _npy_with_shape(path: Path, shape_text: str, data: bytes) -> Path:
    """A float32 .npy whose header declares ``shape_text`` (as written) over ``data``."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data)
    return path


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("(-2, 4)", "has the dimension '-2'; expected non-negative integers"),
        ("(100000000, 4)", "needs 1600000000 data bytes, the file has 32"),  # refused before allocating
        ("(4294967296, 4294967296, 4)", "is too large to address on this machine"),  # overflow
        ("(99999999999999999999, 4)", "expected non-negative integers"),  # would overflow stoll
    ],
    ids=["negative", "declared-larger-than-file", "overflow", "huge-number"],
)  # fmt: skip
def test_npy_header_lies_are_refused_before_allocating(vae_sample, shape, message, tmp_path):
    model = tiny_decoder(tmp_path / "ok")
    z = _npy_with_shape(tmp_path / "z.npy", shape, np.zeros(8, np.float32).tobytes())
    r = run_cpp(vae_sample, "--model", model, "--z-file", z, ok=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "bad_alloc" not in r.stderr and "stoll" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--model DIR is required"),
        (["--model", "m", "--n", "0"], "--n needs an integer >= 1, got '0'"),
        (["--model", "m", "--bogus"], "unknown argument '--bogus'"),
        (["--model", "m", "--z-file", "a", "--x-file", "b"], "give --z-file or --x-file, not both"),
    ],
)
def test_usage_errors(vae_sample, args, message):
    r = run_cpp(vae_sample, *args, ok=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_grid_needs_an_image_model(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "flat", x_shape=(4,))
    r = run_cpp(vae_sample, "--model", model, "--grid", tmp_path / "g.png", ok=False)
    assert r.returncode == 1 and "--grid needs an image model" in r.stderr, r.stderr


def test_info_lists_metadata_and_runtime(vae_sample, cpp_exports):
    out = run_cpp(vae_sample, "--model", cpp_exports["spatial"], "--info").stdout
    assert f"onnxruntime {ort.__version__}" in out  # the very library the wheel ships
    assert "vae_deploy.latent_shape = 2,4,4" in out and "vae_deploy.role = encoder" in out


# --- the export contract: enforced before a session opens --------------------------------------


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("vae_sample: error: "), r.stderr
    return lines[0]


def test_no_manifest_is_refused_unless_no_verify(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "m", manifest=False)
    line = _one_error_line(run_cpp(vae_sample, "--model", model, "--n", 2, ok=False))
    assert "no manifest.json in" in line and "--no-verify" in line
    r = run_cpp(vae_sample, "--model", model, "--n", 2, "--no-verify", "--out", tmp_path / "x.npy")
    assert "warning: --no-verify" in r.stderr and np.load(tmp_path / "x.npy").shape == (2, 1, 2, 2)


@pytest.mark.parametrize("how", ["flip-byte", "truncate", "append"])
def test_tampered_decoder_is_refused_naming_the_file(vae_sample, cpp_exports, how, tmp_path):
    model = copy_export(cpp_exports["mlp"], tmp_path / "m")
    raw = bytearray((model / "decoder.onnx").read_bytes())
    if how == "flip-byte":
        raw[len(raw) // 2] ^= 0x01
    elif how == "truncate":
        raw = raw[:-1]
    else:
        raw += b"\0"
    (model / "decoder.onnx").write_bytes(bytes(raw))
    line = _one_error_line(run_cpp(vae_sample, "--model", model, "--n", 2, ok=False))
    want = "sha256 does not match the manifest" if how == "flip-byte" else "(truncated or replaced)"
    assert "decoder.onnx: " in line and want in line, line
    # --no-verify is the way around it, and says so (the flipped byte may still be a valid graph)
    r = run_cpp(vae_sample, "--model", model, "--n", 2, "--no-verify", ok=False)
    assert "vae_sample: warning: --no-verify" in r.stderr


def test_tampered_encoder_is_refused(vae_sample, cpp_exports, rng, tmp_path):
    model = copy_export(cpp_exports["mlp"], tmp_path / "m")
    (model / "encoder.onnx").write_bytes((model / "encoder.onnx").read_bytes() + b"\0")
    np.save(tmp_path / "x.npy", rng.random((2, 1, 8, 8), dtype=np.float32))
    line = _one_error_line(run_cpp(vae_sample, "--model", model, "--x-file", tmp_path / "x.npy", ok=False))
    assert "encoder.onnx: size" in line


def _edit_manifest(model: Path, edit) -> None:
    import json

    manifest = json.loads((model / "manifest.json").read_text())
    edit(manifest)
    (model / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"].pop("decoder.onnx"), "decoder.onnx is not listed in manifest.json"),
        (lambda m: m["files"].__setitem__("/etc/passwd", {"sha256": "0", "size": 1}), "is an absolute path"),
        (lambda m: m["files"].__setitem__("../x.onnx", {"sha256": "0", "size": 1}), "climbs out with '..'"),
        (lambda m: m["model"].__setitem__("latent_shape", [5]), "metadata latent_shape is '4', manifest says [5]"),
        (lambda m: m["model"].pop("input_shape"), "model.input_shape should be a list of integers"),
        (lambda m: m["files"]["decoder.onnx"].__setitem__("role", "encoder"), "lists it as a encoder"),
    ],
    ids=["not-listed", "absolute", "dotdot", "shape-mismatch", "no-shape", "role"],
)  # fmt: skip
def test_manifest_problems_are_refused(vae_sample, edit, message, tmp_path):
    model = tiny_decoder(tmp_path / "m")
    _edit_manifest(model, edit)
    assert message in _one_error_line(run_cpp(vae_sample, "--model", model, "--n", 2, ok=False))


def test_symlink_out_of_the_folder_is_refused(vae_sample, tmp_path):
    outside = tiny_decoder(tmp_path / "outside")
    model = tiny_decoder(tmp_path / "m")
    (model / "decoder.onnx").unlink()
    (model / "decoder.onnx").symlink_to(outside / "decoder.onnx")  # same bytes, same checksum
    line = _one_error_line(run_cpp(vae_sample, "--model", model, "--n", 2, ok=False))
    assert "'decoder.onnx' resolves to" in line and "outside the export folder" in line


def test_manifest_that_is_not_json_is_refused(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "m")
    (model / "manifest.json").write_text("{not json")
    assert "manifest.json is not valid JSON" in _one_error_line(
        run_cpp(vae_sample, "--model", model, ok=False)
    )


def test_external_data_is_checked_like_the_graph(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "m", manifest=False)
    proto = onnx.load(str(model / "decoder.onnx"))
    from onnx import numpy_helper  # raw_data tensors: the ones onnx moves to external files

    raw = [numpy_helper.from_array(numpy_helper.to_array(t), t.name) for t in proto.graph.initializer]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(raw)
    onnx.save(
        proto,
        str(model / "decoder.onnx"),
        save_as_external_data=True,
        location="decoder.onnx.data",
        size_threshold=80,
    )  # fmt: skip  (onnx counts sys.getsizeof: w, not the Reshape target)
    roles = {"decoder.onnx": "decoder", "decoder.onnx.data": "decoder"}
    write_manifest(model, [1, 2, 2], [4], roles)
    np.save(tmp_path / "z.npy", np.ones((2, 4), np.float32))
    # listed and intact: runs, the weights read from beside the checked graph
    run_cpp(vae_sample, "--model", model, "--z-file", tmp_path / "z.npy", "--out", tmp_path / "x.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.full((2, 1, 2, 2), 4, np.float32))
    # tampered weights
    data = bytearray((model / "decoder.onnx.data").read_bytes())
    data[0] ^= 0x40
    (model / "decoder.onnx.data").write_bytes(bytes(data))
    line = _one_error_line(run_cpp(vae_sample, "--model", model, "--z-file", tmp_path / "z.npy", ok=False))
    assert "decoder.onnx.data: sha256 does not match the manifest" in line
    # not listed at all
    write_manifest(model, [1, 2, 2], [4])
    line = _one_error_line(run_cpp(vae_sample, "--model", model, "--z-file", tmp_path / "z.npy", ok=False))
    assert "external data 'decoder.onnx.data' is not listed in the manifest" in line


def _random_variants() -> dict[str, dict]:
    """Decoders that hide a random operator in each place the scan must reach, and look-alikes that don't."""
    noise = helper.make_node("RandomNormalLike", ["zf"], ["noise"], name="noise")
    sub = helper.make_graph([helper.make_node("RandomUniform", [], ["u"], shape=[1], name="deep")], "then", [],
                            [helper.make_tensor_value_info("u", TensorProto.FLOAT, [1])])  # fmt: skip
    other = helper.make_graph([helper.make_node("Constant", [], ["u"], value_floats=[0.0])], "else", [],
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, [1])])  # fmt: skip
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    branch = helper.make_node("If", ["cond"], ["branch"], then_branch=sub, else_branch=other, name="if")
    fn = helper.make_function("local", "Noisy", ["a"], ["b"],
                              [helper.make_node("Bernoulli", ["a"], ["b"], name="coin")],
                              [helper.make_opsetid("", 18)])  # fmt: skip
    call = helper.make_node("Noisy", ["zf"], ["coin_out"], domain="local", name="call")

    def dropout(flag: bool | None) -> dict:
        init = [] if flag is None else [helper.make_tensor("train", TensorProto.BOOL, [], [flag])]
        extra = [] if flag is not None else [helper.make_node("Constant", [], ["train"], value_int=1)]
        ratio = helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.5])
        node = helper.make_node("Dropout", ["zf", "ratio", "train"], ["dropped"], name="drop")
        return {"extra_nodes": [*extra, node], "extra_initializers": [ratio, *init]}

    return {
        "top-level": {"extra_nodes": [noise]},
        "if-subgraph": {"extra_nodes": [branch], "extra_initializers": [cond]},
        "local-function": {"extra_nodes": [call], "functions": [fn]},
        "dropout-training": dropout(True),
        "dropout-flag-computed": dropout(None),
        "dropout-inference": dropout(False),  # not random: runs
        "none": {},
    }


@pytest.mark.parametrize("variant", list(_random_variants()))
def test_random_operators_are_refused_like_python(vae_sample, variant, tmp_path):
    model = tiny_decoder(
        tmp_path / "m", **_random_variants()[variant]
    )  # the manifest hashes it: only the scan stops it
    found = random_ops(onnx.load(str(model / "decoder.onnx")))  # Python's finding on the same file
    r = run_cpp(vae_sample, "--model", model, "--n", 2, ok=False)
    if found:
        line = _one_error_line(r)
        for f in found:
            assert f"decoder.onnx: random operator {f}" in line, (found, line)
        assert variant not in ("dropout-inference", "none")
    else:
        assert r.returncode == 0, r.stderr
        assert variant in ("dropout-inference", "none")


def test_random_decoder_runs_with_no_verify(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "m", **_random_variants()["top-level"])
    r = run_cpp(vae_sample, "--model", model, "--n", 2, "--no-verify")
    assert "warning: --no-verify" in r.stderr


def test_scan_agrees_with_python_on_real_exports(vae_sample, cpp_exports):
    # a real export has no random op: both runtimes open it (the parity tests above) and Python finds none
    for family in FAMILIES:
        for name in ("encoder.onnx", "decoder.onnx"):
            assert random_ops(onnx.load(str(cpp_exports[family] / name))) == []
    run_cpp(vae_sample, "--model", cpp_exports["conv"], "--info")


def test_damaged_graphs_give_one_clean_line(vae_sample, tmp_path):
    # seeded damage to a graph with a subgraph, the manifest re-hashed each time so that only
    # the scan and ONNX Runtime stand in the way: never a crash, never a random op let through,
    # and every refusal one line of valid UTF-8 (names read from damaged bytes included)
    import random

    model = tiny_decoder(tmp_path / "m", **_random_variants()["if-subgraph"])
    raw = (model / "decoder.onnx").read_bytes()
    rnd = random.Random(0)
    for _ in range(60):
        b = bytearray(raw)
        how = rnd.choice(["truncate", "flip", "scramble"])
        if how == "truncate":
            b = b[: rnd.randrange(len(b))]
        elif how == "flip":
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        else:
            for _ in range(8):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        (model / "decoder.onnx").write_bytes(bytes(b))
        write_manifest(model, [1, 2, 2], [4])
        r = subprocess.run(
            [str(vae_sample), "--model", str(model), "--n", "2"], capture_output=True, timeout=60
        )
        assert r.returncode == 1, (how, r.returncode, r.stderr[-500:])  # the RandomUniform, or a broken graph
        line = r.stderr.decode("utf-8")  # raises on invalid UTF-8
        assert line.count("\n") == 1 and line.startswith("vae_sample: error: "), line


# --- bad input and bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mode", ["--z-file", "--x-file"])
def test_non_finite_input_is_refused(vae_sample, cpp_exports, value, mode, tmp_path):
    model = cpp_exports["mlp"]
    input_shape, latent_shape = shapes(model)
    a = np.zeros((3, *(latent_shape if mode == "--z-file" else input_shape)), np.float32)
    a.flat[5] = value
    np.save(tmp_path / "a.npy", a)
    line = _one_error_line(run_cpp(vae_sample, "--model", model, mode, tmp_path / "a.npy",
                                   "--out", tmp_path / "o.npy", ok=False))  # fmt: skip
    assert "expected finite values, got 1 NaN/Inf (first at flat index 5" in line
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("shape", ["(5, 8,,)", "(5,,8)", "(,)", "(,5)"])
def test_malformed_npy_shapes_are_refused(vae_sample, shape, tmp_path):
    model = tiny_decoder(tmp_path / "ok")
    z = _npy_with_shape(tmp_path / "z.npy", shape, np.zeros(40, np.float32).tobytes())
    line = _one_error_line(run_cpp(vae_sample, "--model", model, "--z-file", z, ok=False))
    assert "has an empty dimension" in line


@pytest.mark.parametrize("shape", ["(2, 4,)", "(2, 4)", "(2,4)"])
def test_python_tuple_shapes_are_read(vae_sample, shape, tmp_path):
    model = tiny_decoder(tmp_path / "ok")
    z = _npy_with_shape(tmp_path / "z.npy", shape, np.ones(8, np.float32).tobytes())
    run_cpp(vae_sample, "--model", model, "--z-file", z, "--out", tmp_path / "x.npy")
    assert np.load(tmp_path / "x.npy").shape == (2, 1, 2, 2)


def test_threads_are_bounded(vae_sample, tmp_path):
    model = tiny_decoder(tmp_path / "ok")
    r = run_cpp(vae_sample, "--model", model, "--threads", 100000, ok=False)
    limit = min(4 * (os.cpu_count() or 1), 256)
    assert (
        r.returncode == 2 and f"--threads needs an integer >= 0 and <= {limit}, got '100000'" in r.stderr
    ), r.stderr
    run_cpp(vae_sample, "--model", model, "--threads", limit, "--n", 2)


def test_huge_n_is_refused_before_allocating(vae_sample, cpp_exports):
    line = _one_error_line(
        run_cpp(vae_sample, "--model", cpp_exports["conv"], "--n", 1_000_000_000, ok=False)
    )
    assert "--n 1000000000 needs" in line and "GiB" in line and "bad_alloc" not in line


# --- memory --------------------------------------------------------------------------------------


@pytest.mark.slow  # about 12 s: ONNX Runtime's own start-up dominates under memcheck
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_no_definite_leaks_under_valgrind(vae_sample, cpp_exports, tmp_path):
    # both sessions, .npy in and out, the grid: the whole program once
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32))
    cmd = [
        "valgrind", f"--suppressions={CPP / 'valgrind.supp'}", "--leak-check=full",
        "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite", "--error-exitcode=99",
        str(vae_sample), "--model", str(cpp_exports["conv"]), "--x-file", str(tmp_path / "x.npy"),
        "--out", str(tmp_path / "mu.npy"), "--recon-out", str(tmp_path / "r.npy"),
        "--grid", str(tmp_path / "r.png"), "--threads", "1",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "definitely lost: 0 bytes" in r.stderr or "no leaks are possible" in r.stderr, r.stderr[-4000:]
    assert (tmp_path / "r.png").is_file()
