"""One job per output folder, and a job identity that sees content: two different jobs started
at once into one --out cannot both report success, a resumed job refuses an input whose bytes
changed under an unchanged size and mtime, a dead job's lock passes to its successor, and a
full disk stops a job with one line and leaves it resumable."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vae_deploy.serving.batch import BatchError, read_outputs, run_batch
from vae_deploy.serving.batch import output as output_mod
from vae_deploy.serving.batch.lock import LOCK, FolderLock

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "vae_deploy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_two_different_jobs_into_one_new_folder_exactly_one_succeeds(exports, tmp_path, round_):
    """A soak over a few rounds: the loser fails at once naming the holder; every shard that
    the manifest lists matches its checksum and the winner's job."""
    out = tmp_path / "out"
    jobs = [_cli("batch", "sample", str(exports["mlp"]), "-n", "40", "--shard-rows", "8", "--seed", str(seed),
                 "--out", str(out), "--shard-delay", "0.4") for seed in (1, 2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in jobs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    rc, _, err = next(r for r in results if r[0] == 1)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # Usually the jobs overlap ("in use"); should one start after the other finished, the
    # folder holds a different job: refused as well.
    assert len(lines) == 1 and lines[0].startswith("Error:") and (
        "in use by another batch job (pid " in lines[0] or "holds a different job" in lines[0]), lines
    assert "Traceback" not in err
    winner = jobs[[r[0] for r in results].index(0)]
    seed = int(winner.args[winner.args.index("--seed") + 1])
    doc = json.loads((out / "_manifest.json").read_text())
    assert doc["complete"] and doc["job"]["seed"] == seed
    got = read_outputs(out)  # checks every shard's sha256
    run_batch("sample", exports["mlp"], tmp_path / "ref", n=40, seed=seed, shard_rows=8)
    assert np.array_equal(got["x"], read_outputs(tmp_path / "ref")["x"])
    assert not (out / LOCK).exists()


def test_a_second_job_on_a_locked_folder_fails_at_once(exports, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from vae_deploy.serving.batch.lock import FolderLock;"
        "from vae_deploy.serving.batch import BatchError; FolderLock(Path(sys.argv[1]), BatchError).acquire();"
        "print('locked', flush=True); time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(BatchError, match=rf"in use by another batch job \(pid {holder.pid}\)"):
            run_batch("sample", exports["mlp"], out, n=10, seed=0, shard_rows=5)
        assert time.monotonic() - t0 < 5
        holder.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock
        holder.wait(timeout=10)
        s = run_batch("sample", exports["mlp"], out, n=10, seed=0, shard_rows=5)
        assert s.rows == 10 and not (out / LOCK).exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_exclusive_in_one_process_and_released(tmp_path):
    a, b = FolderLock(tmp_path, BatchError), FolderLock(tmp_path, BatchError)
    a.acquire()
    with pytest.raises(BatchError, match=f"pid {os.getpid()}"):
        b.acquire()
    a.release()
    b.acquire()
    b.release()
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize("kind", ["npy", "npy-folder"])
def test_resume_refuses_changed_content_with_same_size_and_mtime(exports, tmp_path, kind):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    target = src / "a.npy"
    np.save(target, rng.random((30, 1, 8, 8), dtype=np.float32))
    inp = src if kind == "npy-folder" else target
    out = tmp_path / "out"

    def stop_after_one(p):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch("encode", exports["mlp"], out, input_path=inp, shard_rows=10, progress=stop_after_one)
    st = target.stat()
    np.save(target, rng.random((30, 1, 8, 8), dtype=np.float32))  # same shape: same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p / rsync -a / tar keep it
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(BatchError, match=r"different job \(differs in: input\)"):
        run_batch("encode", exports["mlp"], out, input_path=inp, shard_rows=10)


def test_a_full_disk_is_one_error_and_the_job_resumes(exports, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = output_mod.atomic_write, [0]

    def full_after_two(path, data):
        if path.name.startswith("shard-"):
            calls[0] += 1
            if calls[0] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(output_mod, "atomic_write", full_after_two)
    with pytest.raises(BatchError, match="out of disk space.*rerun the same command to resume") as e:
        run_batch("sample", exports["mlp"], out, n=40, seed=1, shard_rows=10)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(output_mod, "atomic_write", real)
    s = run_batch("sample", exports["mlp"], out, n=40, seed=1, shard_rows=10)
    assert (s.shards_resumed, s.rows_computed, s.rows) == (2, 20, 40)
    run_batch("sample", exports["mlp"], tmp_path / "ref", n=40, seed=1, shard_rows=10)
    assert np.array_equal(read_outputs(out)["x"], read_outputs(tmp_path / "ref")["x"])


def test_a_job_written_under_the_old_manifest_name_resumes(exports, tmp_path):
    out = tmp_path / "out"
    run_batch("sample", exports["mlp"], out, n=30, seed=2, shard_rows=10)
    doc = json.loads((out / "_manifest.json").read_text())
    doc["complete"], doc["shards"] = False, doc["shards"][:2]
    (out / "manifest.json").write_text(json.dumps(doc))  # as round 2 wrote it
    (out / "_manifest.json").unlink()
    (out / "shard-00002.x.npy").unlink()
    s = run_batch("sample", exports["mlp"], out, n=30, seed=2, shard_rows=10)
    assert (s.shards_resumed, s.rows_computed) == (2, 10)
    assert (out / "_manifest.json").is_file() and not (out / "manifest.json").exists()


def test_a_plan_of_too_many_shards_is_refused_before_it_is_built(exports, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BatchError, match="raise --shard-rows to at least"):
        run_batch("sample", exports["mlp"], tmp_path / "o", n=1_000_000_000, seed=0, shard_rows=1)
    assert time.monotonic() - t0 < 5 and not (tmp_path / "o").exists()


def test_cli_full_disk_is_one_error_line_and_the_rerun_resumes(exports, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vae_deploy.cli import main

    out = tmp_path / "out"
    real, calls = output_mod.atomic_write, [0]

    def full_after_one(path, data):
        if path.name.startswith("shard-"):
            calls[0] += 1
            if calls[0] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(output_mod, "atomic_write", full_after_one)
    args = ["batch", "sample", str(exports["mlp"]), "-n", "30", "--shard-rows", "10", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1 and "out of disk space" in errors[0], r.output
    assert "Traceback" not in r.output and not (out / LOCK).exists()
    monkeypatch.setattr(output_mod, "atomic_write", real)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "1 resumed" in r.output, r.output
