"""Runtime: parity with eager for every API, chunking, seeds, bad input, tampering, threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import copy_export
from vae_deploy.cli import main
from vae_deploy.errors import ArtifactError
from vae_deploy.runtime.backends import TorchBackend
from vae_deploy.runtime.core import Runtime
from vae_deploy.training.checkpoint import load_checkpoint

BATCHES = [1, 7, 64, 300]


@pytest.fixture(scope="module", params=["mlp", "conv"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def eager(tiny_ckpts, family):
    return load_checkpoint(tiny_ckpts[family]).build_model()


@pytest.fixture(scope="module")
def rt(exports, family):
    return Runtime.load(exports[family], provider="cpu", max_batch=5)  # smaller than most batches


@pytest.mark.parametrize("n", BATCHES)
def test_every_api_matches_eager(rt, eager, n):
    rng = np.random.default_rng(n)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    z = rng.standard_normal((n, 4), dtype=np.float32)
    with torch.no_grad():
        emu, elogvar = (t.numpy() for t in eager.encode(torch.from_numpy(x)))
        ex = eager.decode(torch.from_numpy(z)).numpy()
        erec = eager.decode(eager.encode(torch.from_numpy(x))[0]).numpy()
    mu, logvar = rt.encode(x)
    np.testing.assert_allclose(mu, emu, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logvar, elogvar, atol=1e-5, rtol=0)
    np.testing.assert_allclose(rt.decode(z), ex, atol=1e-5, rtol=0)
    np.testing.assert_allclose(rt.reconstruct(x), erec, atol=1e-5, rtol=0)
    s = rt.sample(n, seed=11)
    zs = np.random.default_rng(11).standard_normal((n, 4), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(s, eager.decode(torch.from_numpy(zs)).numpy(), atol=1e-5, rtol=0)
    assert s.shape == (n, 1, 8, 8) and s.dtype == np.float32


def test_seed_determinism_and_stochastic_reconstruct(rt):
    assert np.array_equal(rt.sample(9, seed=3), rt.sample(9, seed=3))
    assert not np.array_equal(rt.sample(9, seed=3), rt.sample(9, seed=4))
    assert not np.array_equal(rt.sample(4), rt.sample(4))
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    a, b = rt.reconstruct(x, sample=True, seed=1), rt.reconstruct(x, sample=True, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, rt.reconstruct(x))


def test_single_example_and_casts(rt):
    x = np.random.default_rng(0).random((1, 8, 8))  # float64, no batch axis
    mu, logvar = rt.encode(x)
    assert mu.shape == (4,) and logvar.shape == (4,)
    np.testing.assert_allclose(mu, rt.encode(x[None].astype(np.float32))[0][0], atol=1e-6)
    assert rt.decode(np.zeros(4, np.float16)).shape == (1, 8, 8)
    assert rt.decode(np.zeros((2, 4), np.int64)).shape == (2, 1, 8, 8)
    assert rt.decode([[0.0, 0.0, 0.0, 0.0]]).shape == (1, 1, 8, 8)
    assert rt.sample(0).shape == (0, 1, 8, 8) and rt.encode(np.zeros((0, 1, 8, 8), np.float32))[0].shape == (0, 4)
    nc = np.asfortranarray(np.random.default_rng(0).random((3, 4), dtype=np.float32))
    np.testing.assert_allclose(rt.decode(nc), rt.decode(np.ascontiguousarray(nc)), atol=1e-7)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda rt: rt.encode(np.zeros((3, 64), np.float32)), r"x: expected shape \[N, 1, 8, 8\] .*got \[3, 64\]"),
        (lambda rt: rt.decode(np.zeros((2, 5), np.float32)), r"z: expected shape \[N, 4\] .*got \[2, 5\]"),
        (lambda rt: rt.decode(np.array([["a", "b", "c", "d"]])), "expected a real numeric array"),
        (lambda rt: rt.decode(np.zeros((1, 4), np.complex64)), "got dtype complex64"),
        (lambda rt: rt.decode(np.array([[0, np.nan, 0, 0]], np.float32)), r"1 NaN/Inf \(first at index \(0, 1\)"),
        (lambda rt: rt.encode(np.full((1, 1, 8, 8), np.inf, np.float32)), "expected finite values"),
        (lambda rt: rt.decode(np.array([[1e300, 0, 0, 0]])), "NaN/Inf"),  # float64 overflow on cast
        (lambda rt: rt.sample(-1), "non-negative"),
    ],
)
def test_bad_input_names_expected_and_received(rt, call, message):
    with pytest.raises(ValueError, match=message):
        call(rt)


def test_finite_check_can_be_disabled(exports):
    rt = Runtime.load(exports["mlp"], provider="cpu", check_finite=False)
    assert np.isnan(rt.decode(np.full((1, 4), np.nan, np.float32))).all()


def test_tampered_or_truncated_artifacts_refused(tmp_path, exports):
    folder = copy_export(exports["mlp"], tmp_path / "t")
    p = folder / "decoder.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="decoder.onnx: sha256 .*modified after export"):
        Runtime.load(folder)
    folder2 = copy_export(exports["mlp"], tmp_path / "t2")
    (folder2 / "encoder.onnx").write_bytes((folder2 / "encoder.onnx").read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="encoder.onnx: size 1000 bytes"):
        Runtime.load(folder2)
    with pytest.raises(ArtifactError, match="does not exist"):
        Runtime.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Runtime.load(tmp_path)


def test_provider_selection(exports):
    from vae_deploy.runtime.providers import provider_works

    rt = Runtime.load(exports["mlp"], provider="auto")
    assert rt.provider in ("cpu", "cuda")
    assert rt.describe()["provider"] == rt.provider
    if not provider_works("cuda"):
        with pytest.raises(RuntimeError, match="'cuda' was requested but cannot run here"):
            Runtime.load(exports["mlp"], provider="cuda")
        assert rt.provider == "cpu"
    with pytest.raises(ValueError, match="provider must be one of"):
        Runtime.load(exports["mlp"], provider="tpu")


def test_no_onnxruntime_spam_when_cuda_absent(exports, capfd):
    Runtime.load(exports["mlp"], provider="auto").sample(2)
    err = capfd.readouterr().err
    assert "Failed to load library" not in err and "CUDAExecutionProvider" not in err


def test_optimised_model_cache(tmp_path, exports):
    a = Runtime.load(exports["conv"], provider="cpu", cache_dir=tmp_path / "cache")
    cached = sorted((tmp_path / "cache").glob("*.opt.onnx"))
    assert len(cached) == 2
    b = Runtime.load(exports["conv"], provider="cpu", cache_dir=tmp_path / "cache")
    z = np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    np.testing.assert_allclose(a.decode(z), b.decode(z), atol=1e-6)


def test_metadata_contract_mismatch_detected(tmp_path, exports):
    import onnx

    folder = copy_export(exports["mlp"], tmp_path / "m")
    m = onnx.load(str(folder / "decoder.onnx"))
    from vae_deploy.exporters.spec import ExportSpec

    spec = ExportSpec(input_shape=(1, 8, 8), latent_shape=(5,))
    with pytest.raises(ArtifactError, match="decoder input is declared as"):
        Runtime(folder / "encoder.onnx", folder / "decoder.onnx", spec, provider="cpu")
    assert m.graph.input[0].name == "z"


def test_sixteen_threads_mixed_calls(rt, eager):
    rng = np.random.default_rng(5)
    xs = rng.random((200, 3, 1, 8, 8), dtype=np.float32)
    zs = rng.standard_normal((200, 3, 4), dtype=np.float32)
    with torch.no_grad():
        want_mu = [eager.encode(torch.from_numpy(x))[0].numpy() for x in xs]
        want_x = [eager.decode(torch.from_numpy(z)).numpy() for z in zs]

    def work(i: int) -> bool:
        k = i % 200
        if i % 3 == 0:
            return np.allclose(rt.encode(xs[k])[0], want_mu[k], atol=1e-5)
        if i % 3 == 1:
            return np.allclose(rt.decode(zs[k]), want_x[k], atol=1e-5)
        return np.array_equal(rt.sample(3, seed=k), rt.sample(3, seed=k))

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(work, range(16 * 200)))


def test_torchscript_backend_same_interface(exports, eager):
    ts = TorchBackend.from_torchscript(exports["conv"] if eager.config.family == "conv" else exports["mlp"])
    z = np.random.default_rng(0).standard_normal((7, 4), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ts.decode(z), eager.decode(torch.from_numpy(z)).numpy(), atol=1e-6)
    assert ts.sample(3, seed=1).shape == (3, 1, 8, 8)


def test_cli_sample_writes_png_and_npy(tmp_path, exports):
    from PIL import Image

    res = CliRunner().invoke(main, ["sample", str(exports["conv"]), "-n", "16", "--seed", "0", "--provider", "cpu",
                                    "--out", str(tmp_path / "s.npy"), "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    img = Image.open(tmp_path / "g.png")
    img.verify()
    assert img.format == "PNG" and min(img.size) >= 32
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (16, 1, 8, 8) and np.array_equal(s, Runtime.load(exports["conv"]).sample(16, seed=0))


def test_cli_reconstruct(tmp_path, exports, digits):
    np.savez(tmp_path / "x.npz", x=digits.test[:10])
    res = CliRunner().invoke(main, ["reconstruct", str(exports["mlp"]), str(tmp_path / "x.npz"),
                                    "--out", str(tmp_path / "r.npy"), "--grid", str(tmp_path / "r.png")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "r.npy").shape == (10, 1, 8, 8) and (tmp_path / "r.png").stat().st_size > 100
    res = CliRunner().invoke(main, ["sample", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_thread_safety_of_unseeded_noise(rt):
    seen: list[np.ndarray] = []
    lock = threading.Lock()

    def draw() -> None:
        for _ in range(50):
            s = rt.noise((2, 4))
            with lock:
                seen.append(s)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({a.tobytes() for a in seen}) == len(seen)  # no two threads got the same draw


def test_runtime_needs_no_torch(exports):
    """DESIGN: nothing downstream of export/ needs torch; a service imports only the runtime."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from vae_deploy import Runtime\n"
        "from vae_deploy.runtime.batcher import MicroBatcher\n"
        "assert 'onnx' not in sys.modules, 'importing the runtime must stay cheap'\n"
        f"Runtime.load({str(exports['conv'])!r}, provider='cpu').sample(2, seed=0)\n"
        # onnx (a core dependency) parses the graphs once at load for the contract scan
        "bad = [m for m in ('torch', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
