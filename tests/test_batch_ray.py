"""Batch jobs on a local Ray cluster: two workers give Runtime.encode's rows, a killed worker or
driver loses no row and duplicates none, and sampling does not depend on the number of workers.

The kill tests run the CLI as a child process in its own session (a driver with its own local
cluster), slow its workers with the hidden --shard-delay hook, wait until shards are recorded
in the manifest, then kill by pid. Each test stays under ~60 s on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vae_deploy
from vae_deploy.cli import main
from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.batch import read_outputs, recorded_shards, run_batch

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'vae-deploy[ray]') is not installed")
pytestmark = pytest.mark.slow

ROOT = Path(vae_deploy.__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """Ray workers import vae_deploy: make this checkout importable for them and for children."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="module")
def ray_local():
    """One two-CPU local cluster for this module's in-process jobs (run_batch joins it)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def x_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("batch_ray") / "x.npy"
    np.save(p, np.random.default_rng(11).random((2000, 1, 8, 8), dtype=np.float32))
    return p


def _manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def _every_row_once(out: Path, n: int) -> None:
    shards = recorded_shards(out)
    rows = np.concatenate([np.arange(e["start"], e["stop"]) for e in shards])
    assert np.array_equal(rows, np.arange(n))  # sorted by index, no gap, no repeat


def _start_job(args: list[str], out: Path, *, min_shards: int) -> tuple[subprocess.Popen, list[dict]]:
    """The CLI in its own session; returns once ``min_shards`` shards are recorded."""
    proc = subprocess.Popen([sys.executable, "-m", "vae_deploy", "batch", *args, "--out", str(out)],
                            env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 50
    while time.monotonic() < deadline and proc.poll() is None:
        shards = recorded_shards(out)
        if len(shards) >= min_shards:
            return proc, shards
        time.sleep(0.05)
    _kill_session(proc)
    out_text, err = proc.communicate()
    pytest.fail(f"the job did not record {min_shards} shards in time (rc {proc.returncode}): {err[-2000:]}")


def _kill_session(proc: subprocess.Popen) -> None:
    """Clean up what the child started (its driver, raylet and Ray workers: one session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_two_workers_encode_equals_runtime_encode_row_for_row(ray_local, exports, x_file, tmp_path):
    s = run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=250, batch_size=100,
                  workers=2)
    assert (s.rows, s.shards, s.workers, s.failures_retried) == (2000, 8, 2, 0)
    mu, logvar = Runtime.load(exports["mlp"]).encode(np.load(x_file))
    got = read_outputs(tmp_path / "out")
    np.testing.assert_array_equal(got["mu"], mu)
    np.testing.assert_array_equal(got["logvar"], logvar)
    _every_row_once(tmp_path / "out", 2000)
    assert len({e["worker"] for e in _manifest(tmp_path / "out")["shards"]}) == 2  # both workers did shards


def test_sample_gives_identical_shards_with_one_and_two_workers(ray_local, exports, tmp_path):
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        res = CliRunner().invoke(main, ["batch", "sample", str(exports["mlp"]), "-n", "10000", "--seed", "3",
                                        "--shard-rows", "1000", "--workers", str(workers), "--out", str(out),
                                        "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["workers"] == workers
        outs[workers] = out
    names = sorted(p.name for p in outs[1].glob("shard-*"))
    assert len(names) == 10 and names == sorted(p.name for p in outs[2].glob("shard-*"))
    for name in names:
        assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes(), name
    assert [e["files"] for e in _manifest(outs[1])["shards"]] == [e["files"] for e in _manifest(outs[2])["shards"]]


def test_a_killed_worker_loses_and_duplicates_no_row(exports, x_file, tmp_path):
    out = tmp_path / "out"
    args = ["encode", str(exports["mlp"]), str(x_file), "--shard-rows", "200", "--workers", "2",
            "--shard-delay", "0.4", "--json"]
    proc, shards = _start_job(args, out, min_shards=1)
    try:
        victim = int(shards[0]["worker"].split("@")[0])
        os.kill(victim, signal.SIGKILL)  # a worker process dies mid-job
        stdout, stderr = proc.communicate(timeout=55)
    finally:
        _kill_session(proc)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["rows"] == 2000 and summary["failures_retried"] >= 1 and summary["workers_replaced"] == 1
    assert str(victim) in " ".join(summary["worker_ids"])
    _every_row_once(out, 2000)
    mu, logvar = Runtime.load(exports["mlp"]).encode(np.load(x_file))
    got = read_outputs(out)
    np.testing.assert_array_equal(got["mu"], mu)
    np.testing.assert_array_equal(got["logvar"], logvar)


def test_a_killed_driver_resumes_with_an_identical_result(ray_local, exports, x_file, tmp_path):
    ref = tmp_path / "ref"
    run_batch("encode", exports["mlp"], ref, input_path=x_file, shard_rows=200)  # in process: the reference
    out = tmp_path / "out"
    args = ["encode", str(exports["mlp"]), str(x_file), "--shard-rows", "200", "--workers", "2",
            "--shard-delay", "0.4"]
    proc, _ = _start_job(args, out, min_shards=2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-job
    proc.wait(timeout=10)
    _kill_session(proc)  # and what it had started with it
    before = recorded_shards(out)
    done = {e["index"] for e in before}
    assert not _manifest(out)["complete"] and 2 <= len(done) < 10
    stamps = {e["index"]: (out / e["files"]["mu"]["path"]).stat().st_mtime_ns for e in before}

    res = CliRunner().invoke(main, ["batch", *args[:-2], "--out", str(out), "--json"])  # rerun, same options
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["shards_resumed"] == len(done) and summary["rows_computed"] == 2000 - 200 * len(done)
    for e in _manifest(out)["shards"]:
        if e["index"] in stamps:  # resumed shards were verified, not recomputed
            assert (out / e["files"]["mu"]["path"]).stat().st_mtime_ns == stamps[e["index"]]
    _every_row_once(out, 2000)
    for f in sorted(ref.glob("shard-*")):
        assert f.read_bytes() == (out / f.name).read_bytes(), f.name


def test_joins_a_cluster_started_with_ray_start(exports, x_file, tmp_path):
    """The multi-machine recipe on one machine: `ray start --head`, then --ray-address HOST:PORT
    (with Ray's token authentication on, as a real cluster has it)."""
    import socket
    import uuid

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(_env(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        res = subprocess.run([sys.executable, "-m", "vae_deploy", "batch", "encode", str(exports["mlp"]), str(x_file),
                              "--out", str(tmp_path / "out"), "--shard-rows", "500", "--workers", "2",
                              "--ray-address", f"127.0.0.1:{port}", "--json"],
                             env=env, capture_output=True, text=True, timeout=55)
    finally:
        head.terminate()  # `ray start --block` stops the node's processes on SIGTERM
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        _kill_session(head)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["workers"] == 2
    mu, _ = Runtime.load(exports["mlp"]).encode(np.load(x_file))
    np.testing.assert_array_equal(read_outputs(tmp_path / "out")["mu"], mu)
