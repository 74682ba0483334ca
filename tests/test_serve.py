"""A real Triton server (PyTriton) on loopback ports, queried with tritonclient over HTTP and
gRPC: answers equal the local Runtime's, concurrent load completes, bad requests get
errors and leave the server answering, and ``vae-deploy serve`` stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.triton import DECODER_MODEL, ENCODER_MODEL, SAMPLER_MODEL

pytest.importorskip(
    "pytriton.triton",
    reason="PyTriton is not installed: the serve extra needs Linux x86_64/aarch64 with glibc >= 2.35 and numpy < 2",
)
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from vae_deploy.errors import ConfigError  # noqa: E402
from vae_deploy.serving.serve import ServeError, ServeOptions, VaeTritonServer  # noqa: E402

HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def export_dir(exports) -> Path:
    return exports["mlp"]


@pytest.fixture(scope="module")
def runtime(export_dir) -> Runtime:
    return Runtime.load(export_dir, provider="cpu")


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    rt = Runtime.load(export_dir, provider="cpu", max_batch=64, check_finite=False)
    opts = ServeOptions(host=HOST, http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=64,
                        max_delay_us=200, log_file=tmp_path_factory.mktemp("triton") / "tritonserver.log")
    srv = VaeTritonServer(rt, opts).start()
    try:
        yield srv
    finally:
        start = time.monotonic()
        srv.stop()
        took = time.monotonic() - start
    assert took < 10, f"the server took {took:.1f} s to stop"
    assert not srv.is_alive()


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    mod, url = (httpclient, server.http_url) if request.param == "http" else (grpcclient, server.grpc_url)
    c = mod.InferenceServerClient(url)
    c.mod = mod
    yield c
    c.close()


def infer(client, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    tensors = []
    for name, a in inputs.items():
        t = client.mod.InferInput(name, list(a.shape), {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64"}[
            a.dtype.type])
        t.set_data_from_numpy(a)
        tensors.append(t)
    result = client.infer(model, tensors)
    return [result.as_numpy(o) for o in outputs]


def test_models_are_ready_with_the_repository_names(client):
    for model in (ENCODER_MODEL, DECODER_MODEL, SAMPLER_MODEL):
        assert client.is_model_ready(model)


def test_encode_decode_equal_the_local_runtime(client, runtime):
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    mu, logvar = infer(client, ENCODER_MODEL, {"x": x}, ["mu", "logvar"])
    ref_mu, ref_logvar = runtime.encode(x)
    assert np.abs(mu - ref_mu).max() <= 1e-5 and np.abs(logvar - ref_logvar).max() <= 1e-5
    (x_hat,) = infer(client, DECODER_MODEL, {"z": ref_mu}, ["x_hat"])
    assert x_hat.shape == (5, 1, 8, 8) and np.abs(x_hat - runtime.decode(ref_mu)).max() <= 1e-5


def test_sample_shapes_and_seeded_reproducibility(client, runtime):
    n = np.array([6], np.int64)
    (x,) = infer(client, SAMPLER_MODEL, {"n": n, "seed": np.array([3], np.int64)}, ["x_hat"])
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.float32
    assert np.abs(x - runtime.sample(6, seed=3)).max() <= 1e-5
    (unseeded,) = infer(client, SAMPLER_MODEL, {"n": n}, ["x_hat"])
    assert unseeded.shape == (6, 1, 8, 8)


def test_bad_requests_get_errors_and_the_server_keeps_answering(client, runtime):
    bad = {
        "wrong shape": (ENCODER_MODEL, {"x": np.zeros((2, 1, 8, 7), np.float32)}, "shape"),
        "wrong dtype": (DECODER_MODEL, {"z": np.zeros((2, 4), np.float64)}, "FP64"),
        "wrong rank": (DECODER_MODEL, {"z": np.zeros((4,), np.float32)}, "shape"),
        "wrong name": (DECODER_MODEL, {"w": np.zeros((2, 4), np.float32)}, ""),
        "zero n": (SAMPLER_MODEL, {"n": np.array([0], np.int64)}, "n must be"),
        "negative n": (SAMPLER_MODEL, {"n": np.array([-1], np.int64)}, "n must be"),
    }
    for what, (model, inputs, needle) in bad.items():
        with pytest.raises(InferenceServerException) as e:
            infer(client, model, inputs, [])
        assert needle in str(e.value), what
    assert client.is_server_live() and client.is_server_ready()
    z = np.zeros((1, 4), np.float32)
    (x_hat,) = infer(client, DECODER_MODEL, {"z": z}, ["x_hat"])
    assert np.abs(x_hat - runtime.decode(z)).max() <= 1e-5


@pytest.mark.parametrize("inputs, needle", [
    ({"n": np.array([0], np.int64)}, "n must be one integer in [1, "),
    ({"n": np.array([10**9], np.int64)}, "n must be one integer in [1, "),
    ({"n": np.array([2], np.int64), "seed": np.array([-1], np.int64)}, "seed must be one non-negative integer"),
], ids=["n-zero", "n-huge", "seed-negative"])
def test_a_bad_sampler_request_is_a_client_error_in_one_line(client, inputs, needle):
    """HTTP 400 / gRPC INVALID_ARGUMENT, the reason alone: no traceback, no server path."""
    with pytest.raises(InferenceServerException) as e:
        infer(client, SAMPLER_MODEL, inputs, [])
    status, text = str(e.value.status()), str(e.value)
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, text)
    assert needle in text and "Traceback" not in text and "/tmp" not in text and "\n" not in text.strip(), text
    assert client.is_server_ready()


def test_a_data_length_that_does_not_match_the_shape_is_refused_in_one_line(server):
    """Triton's HTTP front end refuses JSON ``data`` of the wrong length before any model code
    runs, with one line; its status is Triton's choice (see docs/reliability.md). Over gRPC the
    same mistake is INVALID_ARGUMENT."""
    import json
    import urllib.error
    import urllib.request

    body = {"inputs": [{"name": "z", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 5}]}
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/{DECODER_MODEL}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    text = e.value.read().decode()
    assert e.value.code in (400, 500) and "Shape does not match" in text and "Traceback" not in text, text
    from tritonclient.grpc import service_pb2

    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        request = service_pb2.ModelInferRequest(model_name=DECODER_MODEL)
        t = request.inputs.add(name="z", datatype="FP32")
        t.shape.extend([2, 4])
        request.raw_input_contents.append(np.zeros(5, np.float32).tobytes())
        import grpc

        with pytest.raises(grpc.RpcError) as g:
            c._client_stub.ModelInfer(request)
    assert g.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "byte size mismatch" in g.value.details()


def test_a_killed_servers_temporary_folder_is_swept_at_the_next_start(tmp_path):
    """Only folders whose recorded owner is dead go; a live owner's and unrecorded ones stay."""
    from vae_deploy.serving.serve_cleanup import PREFIX, claim, sweep_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live, unknown = (tmp_path / f"{PREFIX}{k}" for k in ("stale", "live", "unknown"))
    for folder in (stale, live, unknown):
        (folder / "workspace").mkdir(parents=True)
    claim(live)
    claim(stale)
    (stale / "owner").write_text(f"{dead.pid} 1\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(60)", str(stale / "workspace")])
    cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
    deadline = time.monotonic() + 10
    while str(stale).encode() not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)  # a loaded machine: the child's command line is there once it has exec'd
    try:
        assert sweep_stale(tmp_path) == [stale]
        assert sleeper.wait(timeout=10) == -signal.SIGKILL  # a process still running from the folder ended
    finally:
        sleeper.kill()
    assert not stale.exists() and live.is_dir() and unknown.is_dir()


def test_a_nan_request_does_not_fail_requests_batched_with_it(server, runtime):
    with httpclient.InferenceServerClient(server.http_url) as c:
        c.mod = httpclient
        z = np.full((1, 4), np.nan, np.float32)
        (x_hat,) = infer(c, DECODER_MODEL, {"z": z}, ["x_hat"])
    assert np.isnan(x_hat).all()


def test_concurrent_load(server, runtime, capsys):
    """16 clients x 50 single-example requests: no errors, every answer right; throughput reported."""
    clients, per_client = 16, 50
    rng = np.random.default_rng(1)
    xs = rng.random((clients, 1, 1, 8, 8), dtype=np.float32)
    ref = runtime.encode(xs[:, 0])[0]
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    server.stats[ENCODER_MODEL].reset()

    def worker(i: int) -> None:
        with httpclient.InferenceServerClient(server.http_url) as c:
            c.mod = httpclient
            for _ in range(per_client):
                t = time.perf_counter()
                try:
                    (mu,) = infer(c, ENCODER_MODEL, {"x": xs[i]}, ["mu"])
                    if np.abs(mu[0] - ref[i]).max() > 1e-5:
                        raise AssertionError(f"client {i}: wrong answer")
                except Exception as e:  # collected, reported below
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    wall = time.perf_counter() - start
    assert not any(t.is_alive() for t in threads), "load test did not finish within 60 s"
    assert not errors, errors[:3]
    assert len(latencies) == clients * per_client
    stats = server.stats[ENCODER_MODEL].snapshot()
    assert stats["rows"] == clients * per_client and stats["mean_batch"] >= 1
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    with capsys.disabled():
        print(f"\n[serve load] {clients}x{per_client} requests in {wall:.2f} s: {clients * per_client / wall:.0f} "
              f"req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, mean batch {stats['mean_batch']:.1f}")


def test_a_busy_port_fails_at_once_with_a_clear_error(runtime):
    http, grpc, metrics = free_ports(3)
    with socket.socket() as busy:
        busy.bind((HOST, grpc))
        busy.listen()
        start = time.monotonic()
        opts = ServeOptions(http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=Path(os.devnull))
        with pytest.raises(ServeError, match=f"grpc port {grpc}"):
            VaeTritonServer(runtime, opts).start()
    assert time.monotonic() - start < 5
    with pytest.raises(ConfigError, match="distinct"):
        ServeOptions(http_port=http, grpc_port=http)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}: {proc.stdout.read()}")
        try:
            with httpclient.InferenceServerClient(url) as c:
                if c.is_server_ready() and c.is_model_ready(SAMPLER_MODEL):
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become ready")


@pytest.mark.slow  # a real server process started and stopped: about 18 s
def test_cli_serve_stops_cleanly_on_ctrl_c(export_dir):
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "vae_deploy", "serve", str(export_dir), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--no-dynamic-batching"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_ready(f"{HOST}:{http}", proc, timeout=60)
        with httpclient.InferenceServerClient(f"{HOST}:{http}") as c:
            c.mod = httpclient
            (x,) = infer(c, SAMPLER_MODEL, {"n": np.array([2], np.int64)}, ["x_hat"])
            assert x.shape == (2, 1, 8, 8)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "serving vae_encoder" in out and "stopped" in out
    assert took < 10, f"stop took {took:.1f} s"
    with socket.socket() as s:  # the port is free again
        s.bind((HOST, http))


@pytest.mark.slow  # about 15 s: a second Triton server in a subprocess
def test_sigterm_under_load_stops_cleanly_and_leaves_no_temporary_folders(export_dir, tmp_path):
    """SIGTERM while clients are sampling: exit 0, and PyTriton's workspace and the log folder
    are gone from the temporary directory."""
    import tempfile

    http, grpc, metrics = free_ports(3)
    # short: multiprocessing puts AF_UNIX sockets (at most 107 bytes of path) in TMPDIR
    tmp, home = Path(tempfile.mkdtemp(prefix="vt", dir="/tmp")), tmp_path / "pytriton_home"
    cmd = [sys.executable, "-m", "vae_deploy", "serve", str(export_dir), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    env = {**os.environ, "TMPDIR": str(tmp), "PYTRITON_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    from vae_deploy.serving.serve import _model_copies

    copies_before = _model_copies()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    stop = threading.Event()

    def load() -> None:
        with httpclient.InferenceServerClient(f"{HOST}:{http}") as c:
            c.mod = httpclient
            while not stop.is_set():
                try:
                    infer(c, SAMPLER_MODEL, {"n": np.array([64], np.int64)}, ["x_hat"])
                except Exception:
                    return  # the server went away: expected
    try:
        _wait_ready(f"{HOST}:{http}", proc, timeout=60)
        assert [p.name for p in tmp.iterdir() if p.name.startswith("vae-deploy-triton-")], "no temp folder used?"
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    # our log folder, PyTriton's workspace and Triton's python-backend model copies (folders*);
    # a hidden lock file a library may keep (.ses) is not a model folder
    left = [p.name for p in tmp.iterdir() if not p.name.startswith(".")]
    # and no Triton python-backend stub still running from it (orphaned when the server stops mid-request)
    running = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(tmp).encode() in (entry / "cmdline").read_bytes():
                running.append(entry.name)
        except OSError:
            continue
    shutil.rmtree(tmp, ignore_errors=True)
    assert not running, f"processes still running from the temporary directory: {running}"
    # nor the python backend's model copies, which it makes in /tmp whatever TMPDIR says
    assert not _model_copies() - copies_before, "Triton's /tmp/folder* model copies were left behind"
    assert not left, f"left behind in the temporary directory: {left}"
    assert not list(home.glob("workspace_*")) if home.exists() else True
