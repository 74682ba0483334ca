"""The Triton model repository: configs parse with Triton's own schema, shapes come from the
contract metadata, the files are the checked ONNX graphs, and the sampler's model.py works
(run here with a stand-in for Triton's Python-backend module whose BLS call runs the
repository's decoder on onnxruntime)."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import spatial_toy_export
from vae_deploy.errors import ArtifactError, ConfigError
from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.triton import DECODER_MODEL, ENCODER_MODEL, SAMPLER_MODEL, write_triton_repo

text_format = pytest.importorskip("google.protobuf.text_format")
json_format = pytest.importorskip("google.protobuf.json_format")
model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient (the serve extra) carries Triton's config schema"
)


@pytest.fixture(scope="module")
def all_exports(exports, tmp_path_factory) -> dict[str, Path]:
    """The session's mlp and conv exports (flat latents) plus a conv model with a (2, 4, 4) latent."""
    spatial = spatial_toy_export(tmp_path_factory.mktemp("spatial") / "export", channels=1, family="spatial")
    return {**exports, "spatial": spatial}


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dims(t) -> list[int]:
    return list(t.dims)


@pytest.mark.parametrize("family, latent", [("mlp", [4]), ("conv", [4]), ("spatial", [2, 4, 4])])
def test_repository_configs_parse_and_match_the_contract(all_exports, tmp_path, family, latent):
    exports = all_exports
    repo = write_triton_repo(exports[family], tmp_path / "repo", max_batch=64, instances=2, kind="gpu",
                             max_delay_us=250)
    assert sorted(p.name for p in repo.iterdir()) == sorted([ENCODER_MODEL, DECODER_MODEL, SAMPLER_MODEL])
    enc, dec, smp = (parse(repo / m / "config.pbtxt") for m in (ENCODER_MODEL, DECODER_MODEL, SAMPLER_MODEL))

    for cfg, name in ((enc, ENCODER_MODEL), (dec, DECODER_MODEL)):
        assert cfg.name == name and cfg.backend == "onnxruntime" and cfg.max_batch_size == 64
        assert cfg.HasField("dynamic_batching")
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
        assert list(cfg.dynamic_batching.preferred_batch_size) == [32, 64]
        (group,) = cfg.instance_group
        assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
        assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in [*cfg.input, *cfg.output])
    # dims never include the batch axis (max_batch_size > 0 adds it)
    assert [(t.name, dims(t)) for t in enc.input] == [("x", [1, 8, 8])]
    assert [(t.name, dims(t)) for t in enc.output] == [("mu", latent), ("logvar", latent)]
    assert [(t.name, dims(t)) for t in dec.input] == [("z", latent)]
    assert [(t.name, dims(t)) for t in dec.output] == [("x_hat", [1, 8, 8])]

    assert smp.backend == "python" and smp.max_batch_size == 0
    assert [(t.name, t.data_type, dims(t), t.optional) for t in smp.input] == [
        ("n", model_config_pb2.TYPE_INT64, [1], False), ("seed", model_config_pb2.TYPE_INT64, [1], True)]
    assert [(t.name, dims(t)) for t in smp.output] == [("x_hat", [-1, 1, 8, 8])]
    assert smp.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    params = {k: v.string_value for k, v in smp.parameters.items()}
    assert params["decoder_model"] == DECODER_MODEL and params["decoder_max_batch"] == "64"
    assert params["latent_shape"] == ",".join(map(str, latent))

    for model, onnx_file in ((ENCODER_MODEL, "encoder.onnx"), (DECODER_MODEL, "decoder.onnx")):
        assert (repo / model / "1" / "model.onnx").read_bytes() == (exports[family] / onnx_file).read_bytes()
    py_compile.compile(str(repo / SAMPLER_MODEL / "1" / "model.py"), doraise=True)


def test_cpu_kind_and_batching_off(exports, tmp_path):
    repo = write_triton_repo(exports["mlp"], tmp_path / "repo", kind="cpu", dynamic_batching=False)
    enc = parse(repo / ENCODER_MODEL / "config.pbtxt")
    assert enc.max_batch_size == 256 and not enc.HasField("dynamic_batching")
    assert enc.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert enc.instance_group[0].count == 1


def test_refuses_a_tampered_export_and_a_foreign_folder(exports, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exports["mlp"], bad)
    with open(bad / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="checksum"):
        write_triton_repo(bad, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()

    with pytest.raises(ArtifactError, match="no manifest.json"):
        write_triton_repo(tmp_path, tmp_path / "repo")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not this tool's models"):
        write_triton_repo(exports["mlp"], foreign)
    assert (foreign / "notes.txt").read_text() == "mine"

    with pytest.raises(ConfigError, match="kind"):
        write_triton_repo(exports["mlp"], tmp_path / "repo", kind="tpu")


def test_rewrites_its_own_repository(exports, tmp_path):
    repo = write_triton_repo(exports["mlp"], tmp_path / "repo", max_batch=8)
    write_triton_repo(exports["conv"], repo, max_batch=16)
    assert parse(repo / ENCODER_MODEL / "config.pbtxt").max_batch_size == 16
    assert (repo / ENCODER_MODEL / "1" / "model.onnx").read_bytes() == (exports["conv"] / "encoder.onnx").read_bytes()


def test_copies_external_weight_files(exports, tmp_path):
    """Large models keep their weights beside the graph; the repository must carry them."""
    import onnx

    from vae_deploy.training.checkpoint import file_sha256

    src = tmp_path / "export"
    shutil.copytree(exports["mlp"], src)
    model = onnx.load(str(src / "decoder.onnx"))
    onnx.save(model, str(src / "decoder.onnx"), save_as_external_data=True, location="decoder.weights")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"].update(sha256=file_sha256(src / "decoder.onnx"),
                                             size=(src / "decoder.onnx").stat().st_size)
    (src / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not listed in the manifest"):  # unchecksummed weights
        write_triton_repo(src, tmp_path / "repo")
    manifest["files"]["decoder.weights"] = {"sha256": file_sha256(src / "decoder.weights"), "role": "decoder",
                                            "size": (src / "decoder.weights").stat().st_size, "format": "data"}
    (src / "manifest.json").write_text(json.dumps(manifest))
    repo = write_triton_repo(src, tmp_path / "repo")
    version = repo / DECODER_MODEL / "1"
    assert (src / "decoder.weights").stat().st_size > 1000
    assert (version / "decoder.weights").read_bytes() == (src / "decoder.weights").read_bytes()
    import onnxruntime as ort

    z = np.zeros((2, 4), np.float32)
    out = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"z": z})
    np.testing.assert_allclose(out[0], Runtime.load(exports["mlp"], provider="cpu").decode(z), atol=1e-6)


# --- the sampler's model.py, with a stand-in for triton_python_backend_utils -------------------
class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Error:
    INTERNAL, INVALID_ARG = 13, 3  # the codes of Triton's TritonError

    def __init__(self, msg: str, code: int = 13) -> None:
        self._msg, self.code = msg, code

    def message(self) -> str:
        return self._msg


class _Response:
    def __init__(self, output_tensors, error=None) -> None:
        self.output_tensors, self.error_ = list(output_tensors), error

    def has_error(self) -> bool:
        return self.error_ is not None

    def error(self):
        return self.error_


def _fake_pb_utils(decoder_onnx: Path, calls: list[int]) -> types.ModuleType:
    """What the sampler uses of Triton's module; BLS runs the decoder file on onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(decoder_onnx), providers=["CPUExecutionProvider"])
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.TritonError = _Error
    pb.InferenceResponse = _Response
    pb.TRITONSERVER_MEMORY_CPU = 0
    pb.PreferredMemory = lambda kind, device=0: (kind, device)

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, preferred_memory=None):
            assert model_name == DECODER_MODEL and preferred_memory == (0, 0)
            self.outputs, self.inputs = requested_output_names, {t.name(): t.as_numpy() for t in inputs}

        def exec(self):
            (z,) = self.inputs.values()
            calls.append(len(z))
            if not z.flags.c_contiguous or z.dtype != np.float32:
                return _Response([], _Error("bad z"))
            out = sess.run(self.outputs, {"z": z})
            return _Response([_Tensor(n, o) for n, o in zip(self.outputs, out)])

    pb.InferenceRequest = InferenceRequest

    def get_input_tensor_by_name(request, name):
        return _Tensor(name, request[name]) if name in request else None

    pb.get_input_tensor_by_name = get_input_tensor_by_name
    pb.get_output_tensor_by_name = lambda resp, name: next(t for t in resp.output_tensors if t.name() == name)
    return pb


@pytest.fixture
def sampler(exports, tmp_path, monkeypatch):
    """The repository's model.py, initialised from its own config as Triton would (JSON)."""
    repo = write_triton_repo(exports["mlp"], tmp_path / "repo", max_batch=4)
    calls: list[int] = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils",
                        _fake_pb_utils(repo / DECODER_MODEL / "1" / "model.onnx", calls))
    spec = importlib.util.spec_from_file_location("vae_sampler_model", repo / SAMPLER_MODEL / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToDict(parse(repo / SAMPLER_MODEL / "config.pbtxt"), preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(config), "model_instance_name": "vae_sampler_0"})
    return model, calls, module


def test_sampler_model_draws_like_the_runtime_and_chunks_bls_calls(sampler, exports):
    model, calls, module = sampler
    rt = Runtime.load(exports["mlp"], provider="cpu")
    (resp,) = model.execute([{"n": np.array([10], np.int64), "seed": np.array([7], np.int64)}])
    assert not resp.has_error()
    x_hat = resp.output_tensors[0].as_numpy()
    assert resp.output_tensors[0].name() == "x_hat" and x_hat.shape == (10, 1, 8, 8)
    assert calls == [4, 4, 2]  # decoder_max_batch rows per BLS call
    np.testing.assert_allclose(x_hat, rt.sample(10, seed=7), atol=1e-5, rtol=0)
    z = module.draw_latents(3, (4,), seed=7)
    np.testing.assert_array_equal(z, rt.noise((3, 4), seed=7))


def test_sampler_model_edge_cases_answer_with_errors_not_exceptions(sampler):
    model, calls, _ = sampler
    reqs = [
        {"n": np.array([0], np.int64)},
        {"n": np.array([3], np.int64)},  # unseeded
        {"n": np.array([-1], np.int64)},
        {"n": np.array([10**9], np.int64)},
        {"n": np.array([2], np.int64), "seed": np.array([-5], np.int64)},
    ]
    zero, unseeded, negative, huge, bad_seed = model.execute(reqs)
    assert unseeded.output_tensors[0].as_numpy().shape == (3, 1, 8, 8)
    for resp in (zero, negative, huge):
        assert "n must be one integer in [1, 65536]" in resp.error().message()
    assert "seed must be" in bad_seed.error().message()
    for resp in (zero, negative, huge, bad_seed):  # the client's mistake: 400 / INVALID_ARGUMENT, one line
        assert resp.error().code == _Error.INVALID_ARG and "\n" not in resp.error().message()
    assert calls == [3]


# --- the repository on a real Triton server ---------------------------------------------------
# PyTriton's wheel bundles a tritonserver with only the Python backend, so the ONNX Runtime
# models are stood in for by Python-backend models that run the same model.onnx on
# onnxruntime. Everything else is real: Triton parses every config.pbtxt, the dynamic
# batcher runs, and the sampler's model.py runs in the real Python-backend stub with real BLS.
_STAND_IN = '''
import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.inp, self.outs = cfg["input"][0]["name"], [o["name"] for o in cfg["output"]]
        path = os.path.join(os.path.dirname(__file__), "model.onnx")
        self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for r in requests:
            out = self.sess.run(self.outs, {self.inp: pb_utils.get_input_tensor_by_name(r, self.inp).as_numpy()})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, o) for n, o in zip(self.outs, out)]))
        return responses
'''


def _start_bundled_tritonserver(repo: Path, workdir: Path, port: int):
    """Run PyTriton's bundled tritonserver binary on ``repo`` (HTTP on loopback only)."""
    import os
    import subprocess

    pytriton = pytest.importorskip("pytriton", reason="PyTriton (the serve extra) bundles the tritonserver binary")
    from pytriton.utils.distribution import get_libs_path, get_stub_path

    from vae_deploy.serving.serve import libpython_dir

    server = workdir / "tritonserver"
    shutil.copytree(Path(pytriton.__file__).parent / "tritonserver", server,
                    ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"),
                server / "backends" / "python" / "triton_python_backend_stub")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libpython_dir(), str(get_libs_path()),
                                                           env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # the stub finds this venv
    cmd = [str(server / "bin" / "tritonserver"), "--model-repository", str(repo),
           "--backend-directory", str(server / "backends"), "--http-address", "127.0.0.1", "--http-port", str(port),
           "--allow-grpc", "false", "--allow-metrics", "false", "--exit-timeout-secs", "3",
           "--log-file", str(workdir / "tritonserver.log")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_generated_repository_runs_on_a_real_triton_server(exports, tmp_path):
    import socket

    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    repo = write_triton_repo(exports["mlp"], tmp_path / "repo", max_batch=4, kind="cpu", max_delay_us=500)
    for model in (ENCODER_MODEL, DECODER_MODEL):
        cfg = repo / model / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('backend: "onnxruntime"', 'backend: "python"'))
        (repo / model / "1" / "model.py").write_text(_STAND_IN)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _start_bundled_tritonserver(repo, tmp_path, port)
    try:
        with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if all(c.is_model_ready(m) for m in (ENCODER_MODEL, DECODER_MODEL, SAMPLER_MODEL)):
                        break
                except Exception:
                    pass
                time.sleep(0.2)
            else:
                pytest.fail(f"tritonserver did not load the repository:\n{(tmp_path / 'tritonserver.log').read_text()}")

            def infer(model, **inputs):
                tensors = []
                for name, a in inputs.items():
                    t = httpclient.InferInput(name, list(a.shape), "INT64" if a.dtype == np.int64 else "FP32")
                    t.set_data_from_numpy(a)
                    tensors.append(t)
                return c.infer(model, tensors)

            rt = Runtime.load(exports["mlp"], provider="cpu")
            x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
            assert np.abs(infer(ENCODER_MODEL, x=x).as_numpy("mu") - rt.encode(x)[0]).max() <= 1e-5
            samples = infer(SAMPLER_MODEL, n=np.array([10], np.int64), seed=np.array([7], np.int64)).as_numpy("x_hat")
            assert samples.shape == (10, 1, 8, 8)
            assert np.abs(samples - rt.sample(10, seed=7)).max() <= 1e-5
            assert infer(SAMPLER_MODEL, n=np.array([3], np.int64)).as_numpy("x_hat").shape == (3, 1, 8, 8)
            with pytest.raises(InferenceServerException, match=r"n must be one integer in \[1, 65536\]"):
                infer(SAMPLER_MODEL, n=np.array([0], np.int64))
            with pytest.raises(InferenceServerException, match="shape"):
                infer(ENCODER_MODEL, x=np.zeros((2, 1, 8, 7), np.float32))
            # 13 rows reached the decoder through BLS, in chunks of at most max_batch = 4. Triton
            # updates its statistics after the responses go out: poll until the count settles
            # (on a loaded machine the first read saw 10), never past a deadline.
            deadline, count = time.monotonic() + 30, -1
            while time.monotonic() < deadline:
                count = int(c.get_inference_statistics(DECODER_MODEL)["model_stats"][0]["inference_count"])
                if count >= 13:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # and no more arrive after it: an over-count is a failure too
            count = int(c.get_inference_statistics(DECODER_MODEL)["model_stats"][0]["inference_count"])
            assert count == 13
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=20)
        except Exception:
            proc.kill()
            proc.wait()
