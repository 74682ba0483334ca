"""Every subcommand, given bad arguments, answers with one ``Error:`` line and exit 1 (2 for
usage), never a traceback, and before any long work.

To cover a new command, add rows to ``CASES``: (id, argv, exit code, text the error must
contain). ``{export}``, ``{ckpt}`` and ``{tmp}`` are filled in: a valid export folder, a valid
checkpoint, and a folder with the bad inputs ``_bad_inputs`` writes (``afile`` is a plain
file, so ``afile/x`` can never be created).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vae_deploy.cli import main

CASES: list[tuple[str, list[str], int, str]] = [
    # train
    ("train-zero-axis", ["train", "--data", "{tmp}/zero.npy", "--epochs", "1"], 1, "positive size"),
    ("train-one-example", ["train", "--data", "{tmp}/one.npy", "--epochs", "1"], 1, "at least 2"),
    ("train-out-unwritable", ["train", "--epochs", "1", "--out", "{tmp}/afile/ckpt.pt"], 2, "is a file"),
    ("train-bad-data-name", ["train", "--data", "nonsense", "--epochs", "1"], 1, "unknown dataset"),
    ("train-negative-seed", ["train", "--seed", "-3", "--epochs", "1"], 2, "--seed"),
    ("train-lr-zero", ["train", "--lr", "0"], 2, "--lr"),
    ("train-hidden-text", ["train", "--hidden", "a,b"], 2, "comma-separated integers"),
    # info
    ("info-broken-onnx", ["info", "{tmp}/bad.onnx"], 1, "cannot be parsed as ONNX"),
    ("info-not-a-checkpoint", ["info", "{tmp}/afile"], 1, "not a PyTorch file"),
    ("info-manifest-missing-model", ["info", "{tmp}/no_model"], 1, "lacks ['model']"),
    ("info-manifest-missing-files", ["info", "{tmp}/no_files"], 1, "lacks ['files']"),
    ("info-missing", ["info", "{tmp}/nothing"], 2, "does not exist"),
    # export
    ("export-opset-99", ["export", "{ckpt}", "--out", "{tmp}/e", "--opset", "99"], 1, "opset must be"),
    ("export-opset-low", ["export", "{ckpt}", "--out", "{tmp}/e", "--opset", "7"], 2, "--opset"),
    ("export-out-under-file", ["export", "{ckpt}", "--out", "{tmp}/afile/x"], 2, "is a file"),
    ("export-out-cwd", ["export", "{ckpt}", "--out", "."], 1, "current folder"),
    ("export-out-root", ["export", "{ckpt}", "--out", "/"], 1, "filesystem root"),
    ("export-out-fifo", ["export", "{ckpt}", "--out", "{tmp}/with_fifo"], 1, "FIFO"),
    ("export-out-busy", ["export", "{ckpt}", "--out", "{tmp}/busy"], 1, "does not look like an export folder"),
    ("export-not-a-checkpoint", ["export", "{tmp}/afile", "--out", "{tmp}/e"], 1, "not a PyTorch file"),
    ("export-bad-format", ["export", "{ckpt}", "--format", "pickle"], 2, "--format"),
    ("export-bad-precision", ["export", "{ckpt}", "--precision", "int3"], 2, "--precision"),
    ("export-no-source", ["export"], 2, "CHECKPOINT"),
    # sample
    ("sample-negative-seed", ["sample", "{export}", "--seed", "-5"], 2, "--seed"),
    ("sample-huge-n", ["sample", "{export}", "-n", "100000000000"], 2, "more than this machine"),
    ("sample-zero-n", ["sample", "{export}", "-n", "0"], 2, "-n"),
    ("sample-no-cuda", ["sample", "{export}", "--provider", "cuda", "-n", "1"], 1, "cannot run here"),
    ("sample-bad-precision", ["sample", "{export}", "--precision", "int4"], 2, "--precision"),
    ("sample-absent-precision", ["sample", "{export}", "--precision", "int8"], 1, "no decoder ONNX file"),
    ("sample-out-unwritable", ["sample", "{export}", "--out", "{tmp}/afile/x.npy"], 2, "is a file"),
    ("sample-grid-unwritable", ["sample", "{export}", "--grid", "{tmp}/afile/x.png"], 2, "is a file"),
    ("sample-not-an-export", ["sample", "{tmp}"], 1, "no manifest.json"),
    ("sample-manifest-missing-model", ["sample", "{tmp}/no_model"], 1, "lacks ['model']"),
    # reconstruct
    ("reconstruct-other-size", ["reconstruct", "{export}", "{tmp}/other.npy"], 1, "expected shape"),
    ("reconstruct-not-numpy", ["reconstruct", "{export}", "{tmp}/afile"], 1, "expected a .npy or .npz"),
    ("reconstruct-nan", ["reconstruct", "{export}", "{tmp}/nan.npy"], 1, "NaN"),
    ("reconstruct-negative-seed", ["reconstruct", "{export}", "{tmp}/one.npy", "--seed", "-1"], 2, "--seed"),
    ("reconstruct-out-unwritable", ["reconstruct", "{export}", "{tmp}/one.npy", "--out", "{tmp}/afile/x"], 2,
     "is a file"),
    # verify
    ("verify-atol-negative", ["verify", "{export}", "--atol", "-1"], 2, "--atol"),
    ("verify-atol-nan", ["verify", "{export}", "--atol", "nan"], 2, "--atol"),
    ("verify-rtol-inf", ["verify", "{export}", "--rtol", "inf"], 2, "--rtol"),
    ("verify-huge-batch", ["verify", "{export}", "--batch-sizes", "100000000000"], 2, "at most"),
    ("verify-json-unwritable", ["verify", "{export}", "--json", "{tmp}/afile/r.json"], 2, "is a file"),
    ("verify-bad-backend", ["verify", "{export}", "--backends", "bogus"], 1, "unknown or unavailable backend"),
    ("verify-not-an-export", ["verify", "{tmp}"], 1, "no manifest.json"),
    ("verify-missing-checkpoint", ["verify", "{export}", "--checkpoint", "{tmp}/nothing.pt"], 1, "does not exist"),
    # triton-repo
    ("triton-out-is-file", ["triton-repo", "{export}", "--out", "{tmp}/afile"], 2, "is a file"),
    ("triton-out-busy", ["triton-repo", "{export}", "--out", "{tmp}/busy"], 1, "not this tool's models"),
    ("triton-not-an-export", ["triton-repo", "{tmp}/nothing", "--out", "{tmp}/r"], 1, "does not exist"),
    ("triton-manifest-missing-files", ["triton-repo", "{tmp}/no_files", "--out", "{tmp}/r"], 1, "lacks ['files']"),
    ("triton-zero-batch", ["triton-repo", "{export}", "--max-batch", "0"], 2, "--max-batch"),
    # serve (every case fails before a server starts)
    ("serve-not-an-export", ["serve", "{tmp}/nothing"], 1, "does not exist"),
    ("serve-same-ports", ["serve", "{export}", "--http-port", "8000", "--grpc-port", "8000"], 1, "distinct"),
    ("serve-bad-port", ["serve", "{export}", "--http-port", "70000"], 2, "--http-port"),
    ("serve-no-cuda", ["serve", "{export}", "--provider", "cuda"], 1, "cannot run here"),
    # bench
    ("bench-bogus-backend", ["bench", "{export}", "--backends", "bogus", "--quick"], 2, "match no backend"),
    ("bench-huge-batch", ["bench", "{export}", "--batch-sizes", "100000000000", "--quick"], 2, "at most"),
    ("bench-out-is-file", ["bench", "{export}", "--out", "{tmp}/afile", "--quick"], 2, "--out"),
    ("bench-bad-ops", ["bench", "{export}", "--ops", "train", "--quick", "--out", "{tmp}/b"], 1, "unknown op"),
    # the group itself
    # tune (engines)
    ("tune-not-an-export", ["tune", "{tmp}/nothing"], 1, "does not exist"),
    ("tune-zero-batch", ["tune", "{export}", "--batch-sizes", "0"], 2, "--batch-sizes"),
    ("tune-negative-max-error", ["tune", "{export}", "--max-error", "-1"], 2, "--max-error"),
    # web page
    ("web-not-an-export", ["web", "{tmp}/nothing", "--out", "{tmp}/site"], 1, "does not exist"),
    ("web-no-manifest", ["web", "{tmp}", "--out", "{tmp}/site"], 1, "no manifest.json"),
    # batch jobs
    ("batch-encode-not-an-export", ["batch", "encode", "{tmp}/nothing", "{tmp}/one.npy", "--out", "{tmp}/o"], 1,
     "does not exist"),
    ("batch-sample-zero-n", ["batch", "sample", "{export}", "-n", "0", "--out", "{tmp}/o"], 2, "-n"),
    ("batch-negative-seed", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/o", "--seed", "-1"], 2,
     "--seed"),
    ("batch-zero-workers", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/o", "--workers", "0"], 2,
     "--workers"),
    # latent-diffusion options
    ("export-diffusers-missing", ["export", "--diffusers", "{tmp}/nothing", "--out", "{tmp}/e"], 1, "not a folder"),
    ("sample-tile-not-multiple-of-4", ["sample", "{export}", "--tile", "3", "-n", "1"], 1, "tile"),
    ("unknown-command", ["frobnicate"], 2, "No such command"),
    # round 3: ranges, output places, user files, images (issue #24)
    ("batch-threads-huge", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/o", "--threads", "100000"], 2,
     "--threads"),
    ("batch-runtime-option-threads-huge", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/o",
                                           "--runtime-option", "threads=100000"], 1, "threads must be an integer in 1.."),
    ("batch-runtime-option-unknown", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/o",
                                      "--runtime-option", "foo=1"], 1, "takes no option foo;"),
    ("tune-threads-huge", ["tune", "{export}", "--threads", "100000"], 2, "--threads"),
    ("train-threads-huge", ["train", "--threads", "100000"], 2, "--threads"),
    ("bench-threads-huge", ["bench", "{export}", "--threads", "100000", "--quick"], 2, "--threads"),
    ("train-lr-nan", ["train", "--lr", "nan"], 2, "not a finite number"),
    ("train-beta-inf", ["train", "--beta", "inf"], 2, "--beta"),
    ("verify-time-budget-nan", ["verify", "{export}", "--time-budget", "nan"], 2, "not a finite number"),
    ("batch-cpus-inf", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/o", "--cpus-per-worker", "inf"],
     2, "--cpus-per-worker"),
    ("sample-seed-2-63", ["sample", "{export}", "--seed", str(2**63)], 2, "--seed"),
    ("batch-seed-2-63", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/o", "--seed", str(2**63)], 2,
     "--seed"),
    ("batch-n-huge", ["batch", "sample", "{export}", "-n", str(2**41), "--out", "{tmp}/o"], 2, "-n"),
    ("batch-too-many-shards", ["batch", "sample", "{export}", "-n", "1000000000", "--shard-rows", "1", "--out",
                               "{tmp}/o"], 1, "raise --shard-rows"),
    ("batch-shard-rows-huge", ["batch", "sample", "{export}", "-n", "5", "--shard-rows", str(2**30), "--out",
                               "{tmp}/o"], 2, "--shard-rows"),
    ("serve-delay-huge", ["serve", "{export}", "--max-delay-us", str(10**9)], 2, "--max-delay-us"),
    ("triton-instances-huge", ["triton-repo", "{export}", "--instances", "100000"], 2, "--instances"),
    ("export-opset-huge", ["export", "{ckpt}", "--out", "{tmp}/e", "--opset", "1000"], 2, "--opset"),
    ("train-hidden-huge", ["train", "--hidden", str(2**30)], 2, "at most"),
    ("batch-out-under-file", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/afile/o"], 2, "is a file"),
    ("batch-out-uncreatable", ["batch", "sample", "{export}", "-n", "5", "--out", "/proc/vae-deploy-o"], 2,
     "cannot create"),
    ("batch-out-name-too-long", ["batch", "sample", "{export}", "-n", "5", "--out", "{tmp}/" + "o" * 300], 2,
     "at most 255"),
    ("sample-out-uncreatable", ["sample", "{export}", "-n", "2", "--out", "/proc/vae-deploy/x.npy"], 2,
     "cannot create"),
    ("sample-grid-uncreatable", ["sample", "{export}", "-n", "2", "--grid", "/proc/x.png"], 2, "cannot create"),
    ("train-out-uncreatable", ["train", "--epochs", "1", "--out", "/proc/vae-deploy/c.pt"], 2, "cannot create"),
    ("train-json-uncreatable", ["train", "--epochs", "1", "--json", "/proc/r.json"], 2, "cannot create"),
    ("web-out-uncreatable", ["web", "{export}", "--out", "/proc/vae-deploy-site"], 2, "cannot create"),
    ("triton-out-uncreatable", ["triton-repo", "{export}", "--out", "/proc/vae-deploy-repo"], 2, "cannot create"),
    ("train-bomb-png", ["train", "--data", "{tmp}/bomb", "--epochs", "1"], 1, "decompression bomb"),
    ("batch-encode-bomb-png", ["batch", "encode", "{export}", "{tmp}/bomb", "--out", "{tmp}/o"], 1,
     "decompression bomb"),
    ("train-png16-rgb", ["train", "--data", "{tmp}/rgb16", "--epochs", "1"], 1, "16-bit RGB PNG"),
    ("train-npy-fifo", ["train", "--data", "{tmp}/fifo.npy", "--epochs", "1"], 1, "must be a regular file, got a FIFO"),
    ("reconstruct-npy-fifo", ["reconstruct", "{export}", "{tmp}/fifo.npy"], 1, "must be a regular file"),
    ("batch-encode-npy-fifo", ["batch", "encode", "{export}", "{tmp}/fifo.npy", "--out", "{tmp}/o"], 1,
     "must be a regular file"),
    ("train-npy-truncated", ["train", "--data", "{tmp}/truncated.npy", "--epochs", "1"], 1, "is truncated"),
    ("batch-encode-npy-truncated", ["batch", "encode", "{export}", "{tmp}/truncated.npy", "--out", "{tmp}/o"], 1,
     "is truncated"),
    ("train-npy-declares-terabytes", ["train", "--data", "{tmp}/huge.npy", "--epochs", "1"], 1,
     "more than this machine"),
    ("train-npz-declares-terabytes", ["train", "--data", "{tmp}/huge.npz", "--epochs", "1"], 1,
     "more than this machine"),
    ("sample-manifest-fifo", ["sample", "{tmp}/fifo_manifest"], 1, "must be a regular file"),
]


def _huge_npy_bytes() -> bytes:
    """A .npy header declaring 2**40 float32 rows of 8 (32 TiB) in front of no data."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 8)})
    return buf.getvalue()


def _bomb_png(path: Path) -> None:
    """A PNG whose header claims 20000 x 20000 pixels (twice Pillow's limit): Pillow refuses it
    from the header, before decoding, so the file itself can be a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, exports) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "afile").write_text("not a folder, not a checkpoint")
    (tmp / "bad.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff")
    np.save(tmp / "zero.npy", np.zeros((10, 0), np.float32))
    np.save(tmp / "one.npy", np.zeros((1, 1, 8, 8), np.float32))
    np.save(tmp / "other.npy", np.zeros((3, 1, 5, 5), np.float32))
    np.save(tmp / "nan.npy", np.full((2, 1, 8, 8), np.nan, np.float32))
    for name, key in (("no_model", "model"), ("no_files", "files")):
        shutil.copytree(exports["mlp"], tmp / name)
        m = json.loads((tmp / name / "manifest.json").read_text())
        del m[key]
        (tmp / name / "manifest.json").write_text(json.dumps(m))
    (tmp / "busy" / "photos").mkdir(parents=True)
    (tmp / "busy" / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    shutil.copytree(exports["mlp"], tmp / "with_fifo")
    import os

    os.mkfifo(tmp / "with_fifo" / "pipe")
    os.mkfifo(tmp / "fifo.npy")
    (tmp / "bomb").mkdir()
    _bomb_png(tmp / "bomb" / "big.png")
    from tests.test_data_images16 import write_png16

    (tmp / "rgb16").mkdir()
    for i in range(2):
        write_png16(tmp / "rgb16" / f"{i}.png", np.full((8, 8, 3), 1000 * i, np.uint16))
    np.save(tmp / "truncated.npy", np.zeros((10, 1, 8, 8), np.float32))
    (tmp / "truncated.npy").write_bytes((tmp / "truncated.npy").read_bytes()[:-100])
    (tmp / "huge.npy").write_bytes(_huge_npy_bytes())
    import zipfile

    with zipfile.ZipFile(tmp / "huge.npz", "w") as z:
        z.writestr("x.npy", _huge_npy_bytes())
    shutil.copytree(exports["mlp"], tmp / "fifo_manifest")
    (tmp / "fifo_manifest" / "manifest.json").unlink()
    os.mkfifo(tmp / "fifo_manifest" / "manifest.json")
    return tmp


@pytest.mark.parametrize("argv, code, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_arguments_give_one_error_line(bad_inputs, exports, tiny_ckpts, monkeypatch, argv, code, needle):
    if "cuda" in argv:
        from vae_deploy.runtime.providers import provider_works

        if provider_works("cuda"):
            pytest.skip("CUDA works on this machine: there is nothing to refuse")
    monkeypatch.chdir(bad_inputs)
    args = [a.format(export=exports["mlp"], ckpt=tiny_ckpts["mlp"], tmp=bad_inputs) for a in argv]
    before = sorted(p.name for p in bad_inputs.iterdir())
    t = time.perf_counter()
    r = CliRunner().invoke(main, args)
    took = time.perf_counter() - t
    out = r.output
    assert r.exit_code == code, out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in out and "EP Error" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, out
    assert needle in out, out
    assert took < 20, f"refused only after {took:.0f} s of work"
    assert sorted(p.name for p in bad_inputs.iterdir()) == before, "a bad command left files behind"


@pytest.mark.parametrize("argv, flag", [
    (["batch", "sample"], "--threads"), (["tune"], "--threads"), (["train"], "--threads"), (["bench"], "--threads"),
    (["sample"], "--seed"), (["batch", "sample"], "--shard-rows"), (["serve"], "--http-port"),
])
def test_numeric_ranges_are_shown_in_help(argv, flag):
    """The range each parser enforces is printed beside the option, so it is no surprise."""
    from vae_deploy.cli.options import MAX_SEED, SHARD_ROWS
    from vae_deploy.limits import max_threads

    r = CliRunner().invoke(main, [*argv, "--help"], terminal_width=400)
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.strip().startswith(flag))
    want = {"--threads": f"1<=x<={max_threads()}", "--seed": f"0<=x<={MAX_SEED}",
            "--shard-rows": f"1<=x<={SHARD_ROWS.max}", "--http-port": "1<=x<=65535"}[flag]
    assert want in line, line
