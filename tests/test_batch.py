"""Batch jobs in process (no Ray): sharding, exactly-once output, resume, formats, errors.
The Ray cluster tests (two workers, killed workers and drivers) are in test_batch_ray.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vae_deploy.cli import main
from vae_deploy.errors import DataError
from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.batch import BatchError, plan_shards, read_outputs, run_batch, shard_rng


@pytest.fixture(scope="module")
def x_rows() -> np.ndarray:
    return np.random.default_rng(7).random((250, 1, 8, 8), dtype=np.float32)


@pytest.fixture
def x_file(tmp_path: Path, x_rows: np.ndarray) -> Path:
    p = tmp_path / "x.npy"
    np.save(p, x_rows)
    return p


def test_plan_covers_every_row_once_and_seeds_are_spawn_children():
    shards = plan_shards(1001, 100)
    rows = np.concatenate([np.arange(s.start, s.stop) for s in shards])
    assert np.array_equal(rows, np.arange(1001)) and shards[-1].rows == 1
    child = np.random.default_rng(np.random.SeedSequence(3).spawn(5)[4])
    assert np.array_equal(shard_rng(3, 4).standard_normal(8), child.standard_normal(8))
    assert not np.array_equal(shard_rng(3, 4).standard_normal(8), shard_rng(3, 5).standard_normal(8))


def test_encode_in_process_equals_runtime_encode(exports, x_file, x_rows, tmp_path):
    s = run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=64, batch_size=32)
    assert (s.rows, s.shards, s.rows_computed, s.workers, s.failures_retried) == (250, 4, 250, 1, 0)
    mu, logvar = Runtime.load(exports["mlp"]).encode(x_rows)
    got = read_outputs(tmp_path / "out")
    np.testing.assert_allclose(got["mu"], mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["logvar"], logvar, rtol=1e-6, atol=1e-6)
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert m["complete"] and m["rows_written"] == 250 and [e["start"] for e in m["shards"]] == [0, 64, 128, 192]
    assert m["summary"]["rows"] == 250


def test_inputs_npz_npy_folder_flat_and_uint8_give_the_same_rows(exports, x_rows, tmp_path):
    ref = run_batch("encode", exports["mlp"], tmp_path / "ref", input_path=_save(tmp_path / "a.npy", x_rows),
                    shard_rows=100)
    assert ref.rows == 250
    want = read_outputs(tmp_path / "ref")["mu"]
    np.savez(tmp_path / "b.npz", x=x_rows, other=np.zeros(3))
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (lo, hi) in enumerate([(0, 70), (70, 71), (71, 250)]):  # shards straddle the files
        np.save(folder / f"part-{i:02d}.npy", x_rows[lo:hi].reshape(hi - lo, 64))  # flat rows
    for name, src in (("npz", tmp_path / "b.npz"), ("folder", folder)):
        run_batch("encode", exports["mlp"], tmp_path / name, input_path=src, shard_rows=100)
        np.testing.assert_array_equal(read_outputs(tmp_path / name)["mu"], want)
    u8 = (x_rows[:, 0] * 255).round().astype(np.uint8)  # [N, H, W] uint8: scaled by 1/255, channel added
    run_batch("encode", exports["mlp"], tmp_path / "u8", input_path=_save(tmp_path / "u8.npy", u8), shard_rows=100)
    mu, _ = Runtime.load(exports["mlp"]).encode(u8[:, None].astype(np.float32) / 255.0)
    np.testing.assert_allclose(read_outputs(tmp_path / "u8")["mu"], mu, rtol=1e-6, atol=1e-6)


def _save(p: Path, a: np.ndarray) -> Path:
    np.save(p, a)
    return p


def test_crash_midway_then_rerun_resumes_with_identical_output(exports, x_file, tmp_path):
    run_batch("encode", exports["mlp"], tmp_path / "clean", input_path=x_file, shard_rows=50)

    def crash(p):
        if p.shards_done == 2:
            raise KeyboardInterrupt  # the driver dies after two shards were written
    with pytest.raises(KeyboardInterrupt):
        run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=50, progress=crash)
    assert not json.loads((tmp_path / "out" / "_manifest.json").read_text())["complete"]
    with pytest.raises(BatchError, match="not finished"):
        read_outputs(tmp_path / "out")
    (tmp_path / "out" / ".shard-00002.mu.npy.abc.tmp").write_bytes(b"half")  # a write cut short
    with (tmp_path / "out" / "_shards.jsonl").open("a") as f:
        f.write('{"index": 2, "start": 100, "sto')  # and a journal line torn by the crash
    first = (tmp_path / "out" / "shard-00000.mu.npy").stat().st_mtime_ns
    s = run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=50)
    assert (s.shards_resumed, s.rows_computed, s.rows) == (2, 150, 250)
    assert (tmp_path / "out" / "shard-00000.mu.npy").stat().st_mtime_ns == first  # not recomputed
    assert not list((tmp_path / "out").glob(".*.tmp")) and not (tmp_path / "out" / "_shards.jsonl").exists()
    for f in sorted((tmp_path / "clean").glob("shard-*")):
        assert f.read_bytes() == (tmp_path / "out" / f.name).read_bytes()


def test_a_damaged_shard_is_recomputed_on_rerun(exports, x_file, tmp_path):
    run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=100)
    victim = tmp_path / "out" / "shard-00001.logvar.npy"
    good = victim.read_bytes()
    victim.write_bytes(good[:-4] + b"\0\0\0\0")
    s = run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=100)
    assert (s.shards_resumed, s.rows_computed) == (2, 100)
    assert victim.read_bytes() == good


def test_sample_is_seeded_per_shard(exports, tmp_path):
    run_batch("sample", exports["mlp"], tmp_path / "a", n=300, seed=3, shard_rows=128)
    x = read_outputs(tmp_path / "a")["x"]
    rt = Runtime.load(exports["mlp"])
    z2 = shard_rng(3, 2).standard_normal((300 - 256, *rt.latent_shape), dtype=np.float32)
    np.testing.assert_allclose(x[256:], rt.decode(z2), rtol=1e-6, atol=1e-6)
    run_batch("sample", exports["mlp"], tmp_path / "b", n=300, seed=4, shard_rows=128)
    assert not np.allclose(read_outputs(tmp_path / "b")["x"], x)


def test_decode_and_parquet_output(exports, tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow (the ray extra installs it)")
    z = np.random.default_rng(0).standard_normal((90, 4)).astype(np.float32)
    run_batch("decode", exports["mlp"], tmp_path / "pq", input_path=_save(tmp_path / "z.npy", z), shard_rows=40,
              fmt="parquet")
    got = read_outputs(tmp_path / "pq")
    assert np.array_equal(got["row"], np.arange(90)) and sorted(p.name for p in (tmp_path / "pq").iterdir()) == [
        "_manifest.json", "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    import pyarrow.parquet as pq  # the whole folder reads as one data set: the bookkeeping is skipped

    assert pq.read_table(tmp_path / "pq").column("row").to_pylist() == list(range(90))
    np.testing.assert_allclose(got["x"], Runtime.load(exports["mlp"]).decode(z), rtol=1e-6, atol=1e-6)


def test_refuses_a_foreign_or_different_output_folder_and_changes_nothing(exports, x_file, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BatchError, match="not empty and holds no _manifest.json"):
        run_batch("encode", exports["mlp"], foreign, input_path=x_file)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=100)
    before = (tmp_path / "out" / "_manifest.json").read_bytes()
    with pytest.raises(BatchError, match="different job .*shard_rows"):
        run_batch("encode", exports["mlp"], tmp_path / "out", input_path=x_file, shard_rows=50)
    assert (tmp_path / "out" / "_manifest.json").read_bytes() == before


def test_input_errors_come_before_any_work(exports, tmp_path):
    bad = _save(tmp_path / "bad.npy", np.zeros((5, 3, 4), np.float32))
    with pytest.raises(DataError, match=r"expected rows of shape \[N, 1, 8, 8\] \(or flat \[N, 64\]\).*got \[N, 3, 4\]"):
        run_batch("encode", exports["mlp"], tmp_path / "o", input_path=bad)
    assert not (tmp_path / "o").exists()
    nan = np.random.default_rng(0).random((20, 64), dtype=np.float32)
    nan[13, 5] = np.nan
    with pytest.raises(DataError, match="rows 10..19 .shard 1.*NaN"):
        run_batch("encode", exports["mlp"], tmp_path / "n", input_path=_save(tmp_path / "nan.npy", nan), shard_rows=10)
    with pytest.raises(DataError, match="does not exist"):
        run_batch("encode", exports["mlp"], tmp_path / "o", input_path=tmp_path / "missing.npy")


def test_image_folders_are_read_by_the_training_loader(exports, tmp_path):
    """A folder of real PNGs (different sizes, RGB among them): the job resizes them to the
    export's 8x8 grey input with the training loader, in sorted path order, and the output
    equals Runtime.encode on what that loader returns."""
    from PIL import Image

    from vae_deploy.training.data import load_image_folder

    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name, size, mode in (("b.png", (12, 10), "L"), ("a.png", (8, 8), "L"), ("sub/c.png", (16, 16), "RGB")):
        shape = size[::-1] + ((3,) if mode == "RGB" else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(imgs / name)
    s = run_batch("encode", exports["mlp"], tmp_path / "o", input_path=imgs)
    assert s.rows == 3
    m = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    assert [f[0] for f in m["job"]["input"]["files"]] == ["a.png", "b.png", "sub/c.png"]
    x = load_image_folder(imgs, image_size=(8, 8), channels=1).astype(np.float32) / 255.0
    mu, logvar = Runtime.load(exports["mlp"]).encode(x)
    out = read_outputs(tmp_path / "o")
    np.testing.assert_allclose(out["mu"], mu, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["logvar"], logvar, rtol=0, atol=1e-6)


def test_cli_summary_and_one_line_errors(exports, x_file, tmp_path, monkeypatch):
    res = CliRunner().invoke(main, ["batch", "encode", str(exports["mlp"]), str(x_file), "--out", str(tmp_path / "o"),
                                    "--shard-rows", "100", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["rows"], summary["shards"], summary["workers"]) == (250, 3, 1)
    res = CliRunner().invoke(main, ["batch", "sample", str(exports["mlp"]), "-n", "10", "--out", str(tmp_path / "s"),
                                    "--runtime-option", "no_such_option=1"])
    assert res.exit_code == 1 and "Error: --runtime-option: the Runtime takes no option no_such_option;" in res.output
    assert "max_batch" not in res.output  # the job sets it: not the user's business
    import vae_deploy.serving.batch.job as job

    monkeypatch.setattr(job, "ray_available", lambda: False)
    res = CliRunner().invoke(main, ["batch", "sample", str(exports["mlp"]), "-n", "10", "--out", str(tmp_path / "r"),
                                    "--workers", "2"])
    assert res.exit_code == 1 and "pip install 'vae-deploy[ray]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_batch_workers_need_no_torch(exports, x_file, tmp_path):
    """What a Ray worker (or the in-process path) imports stays on the runtime side: no torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from vae_deploy.serving.batch import run_batch\n"
        f"run_batch('encode', {str(exports['mlp'])!r}, {str(tmp_path / 'o')!r}, input_path={str(x_file)!r})\n"
        "bad = [m for m in ('torch', 'sklearn', 'ray') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_tampered_export_is_refused_before_a_cluster_starts(exports, x_file, tmp_path, monkeypatch):
    import vae_deploy.serving.batch.job as job
    from tests.conftest import copy_export
    from vae_deploy.errors import ArtifactError

    exp = copy_export(exports["mlp"], tmp_path / "exp")
    onnx_file = next(p for p in exp.glob("*.onnx") if "decoder" in p.name)
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(job, "ray_available", lambda: True)
    monkeypatch.setattr(job, "RayPool", None)  # reaching the pool would fail the test with a TypeError
    with pytest.raises(ArtifactError, match="checksum"):
        run_batch("encode", exp, tmp_path / "o", input_path=x_file, workers=2)
    assert not (tmp_path / "o").exists()


def test_decode_of_an_encode_jobs_folder_reads_its_mu_shards(exports, x_file, x_rows, tmp_path, capsys):
    """An encode job writes mu and logvar shards side by side: decoding that folder decodes mu,
    one row per input (not both outputs as twice the rows)."""
    run_batch("encode", exports["mlp"], tmp_path / "enc", input_path=x_file, shard_rows=64)
    s = run_batch("decode", exports["mlp"], tmp_path / "dec", input_path=tmp_path / "enc", shard_rows=100)
    assert s.rows == len(x_rows)
    rt = Runtime.load(exports["mlp"])
    np.testing.assert_allclose(read_outputs(tmp_path / "dec")["x"], rt.decode(rt.encode(x_rows)[0]),
                               rtol=1e-5, atol=1e-5)
    assert "decoding the 'mu' shards" in capsys.readouterr().err
