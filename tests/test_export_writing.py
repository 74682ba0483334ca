"""export's output folder: refused targets, what is kept, permissions, stale temp folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_deploy import output_folders as writing
from vae_deploy.errors import ExportError
from vae_deploy.exporters import export


def _export(ckpt: Path, out: Path, **kw):
    return export(ckpt, out, formats=("onnx",), verify=False, **kw)


@pytest.fixture
def fast(monkeypatch):
    """Skip the (seconds-long) graph export: these tests are about the folder, not the graphs."""
    import vae_deploy.exporters as ex
    from vae_deploy.exporters.manifest import file_entry

    def write(exp, folder, formats, opset, *progress):
        files = {}
        for role in ("encoder", "decoder"):
            (folder / f"{role}.onnx").write_bytes(f"new {role}".encode())
            files[f"{role}.onnx"] = file_entry(folder / f"{role}.onnx", role=role, fmt="onnx")
        return files

    monkeypatch.setattr(ex, "_write_graphs", write)


@pytest.fixture
def old_export(exports, tmp_path) -> Path:
    """A previous export in tmp_path/export (a copy of the session's, ONNX + TorchScript)."""
    import shutil

    return Path(shutil.copytree(exports["mlp"], tmp_path / "export"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["cwd", "cwd_parent", "root", "home"])
def test_refuses_folders_that_cannot_be_an_export(tmp_path, monkeypatch, tiny_ckpts, where):
    project = tmp_path / "home" / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "code.py").write_text("x = 1\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(project)
    out = {"cwd": Path("."), "cwd_parent": Path(".."), "root": Path("/"), "home": Path("~").expanduser()}[where]
    before = _snapshot(tmp_path)
    t = time.perf_counter()
    with pytest.raises(ExportError, match="--out"):
        _export(tiny_ckpts["mlp"], out)
    assert time.perf_counter() - t < 5, "refused only after long work"
    assert _snapshot(tmp_path) == before
    assert not [p for p in tmp_path.rglob(".*tmp-*")]


def test_refuses_a_folder_of_other_things_a_file_and_a_symlink(tmp_path, tiny_ckpts):
    busy = tmp_path / "busy"
    (busy / "photos").mkdir(parents=True)
    (busy / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ExportError, match="does not look like an export folder"):
        _export(tiny_ckpts["mlp"], busy)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(writing.MAX_LOOSE_FILES + 1):
        (many / f"f{i}.txt").write_text("x")
    with pytest.raises(ExportError, match="does not look like an export folder"):
        writing.check_target(many)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ExportError, match="not a folder"):
        writing.check_target(tmp_path / "file")
    (tmp_path / "link").symlink_to(busy)
    with pytest.raises(ExportError, match="symlink"):
        writing.check_target(tmp_path / "link")
    assert (busy / "photos" / "a.jpg").read_bytes() == b"\xff\xd8" and (tmp_path / "file").read_text() == "mine"


def test_refuses_a_folder_holding_a_fifo(old_export, tiny_ckpts):
    out = old_export
    os.mkfifo(out / "pipe")  # copying it would block forever
    before = _snapshot(out)
    with pytest.raises(ExportError, match="FIFO"):
        _export(tiny_ckpts["mlp"], out)
    assert _snapshot(out) == before and (out / "pipe").exists()


def test_readme_only_folder_is_a_fine_target(tmp_path, tiny_ckpts, fast):
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n")
    _export(tiny_ckpts["mlp"], out)
    assert (out / "README.md").read_text() == "# my notes\n" and (out / "manifest.json").is_file()


def test_keeps_everything_the_old_manifest_did_not_list(old_export, tiny_ckpts, fast):
    out = old_export
    listed = set(json.loads((out / "manifest.json").read_text())["files"])
    assert listed == {"encoder.onnx", "decoder.onnx", "encoder.ts", "decoder.ts"}
    # user files, some named like artifacts the old manifest never listed
    (out / "decoder.int8.onnx").write_bytes(b"my own experiment")
    (out / "encoder.fp16.onnx").write_bytes(b"not yours")
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("keep me")
    os.chmod(out, 0o750)
    _export(tiny_ckpts["conv"], out)  # ONNX only now
    files = set(json.loads((out / "manifest.json").read_text())["files"])
    assert files == {"encoder.onnx", "decoder.onnx"} and (out / "decoder.onnx").read_bytes() == b"new decoder"
    assert not (out / "decoder.ts").exists(), "the old export's own TorchScript file should go"
    assert (out / "decoder.int8.onnx").read_bytes() == b"my own experiment"
    assert (out / "encoder.fp16.onnx").read_bytes() == b"not yours"
    assert (out / "notes" / "todo.txt").read_text() == "keep me"
    assert (out.stat().st_mode & 0o777) == 0o750


def test_new_folder_gets_the_umask_mode(tmp_path, tiny_ckpts, fast):
    old = os.umask(0o027)
    try:
        out = _export(tiny_ckpts["mlp"], tmp_path / "fresh").out_dir
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o750


def test_sweeps_temp_folders_of_killed_exports(tmp_path, tiny_ckpts, fast):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".export.tmp-{dead_pid}-abcd"
    legacy = tmp_path / ".export.tmp-k3j4h5"  # the old naming, without a process id
    live = tmp_path / f".export.tmp-{os.getppid()}-efgh"  # a running process's: not ours to touch
    other = tmp_path / f".exports.tmp-{dead_pid}-ijkl"  # another target's
    for p in (stale, legacy, live, other):
        p.mkdir()
        (p / "encoder.onnx").write_bytes(b"partial")
    os.utime(legacy, (time.time() - 2 * writing.LEGACY_STALE_S,) * 2)
    _export(tiny_ckpts["mlp"], tmp_path / "export")
    assert not stale.exists() and not legacy.exists()
    assert live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export.")) == [live.name]


def test_failure_mid_export_leaves_the_old_folder_and_no_temp(old_export, tmp_path, tiny_ckpts, monkeypatch):
    import vae_deploy.exporters as ex

    out = old_export
    before = _snapshot(out)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "_write_graphs", boom)
    with pytest.raises(KeyboardInterrupt):
        _export(tiny_ckpts["mlp"], out)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_failed_rename_is_an_error_line_and_keeps_the_old_folder(old_export, tmp_path, tiny_ckpts, monkeypatch,
                                                                   fast):
    out = old_export
    before = _snapshot(out)
    real = os.replace

    def deny(src, dst):
        if ".export.tmp-" in str(src):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(writing.os, "replace", deny)
    with pytest.raises(ExportError, match="cannot move the new export"):
        _export(tiny_ckpts["mlp"], out)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so nothing is unwritable here")
def test_unwritable_parent_is_refused_before_work(tmp_path, tiny_ckpts):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(ExportError, match="cannot write"):
            _export(tiny_ckpts["mlp"], ro / "export")
    finally:
        os.chmod(ro, 0o755)


def test_opset_out_of_range_is_refused_before_work(tmp_path, tiny_ckpts):
    with pytest.raises(ExportError, match="opset must be an integer"):
        _export(tiny_ckpts["mlp"], tmp_path / "export", opset=99)
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_manifest_opset_is_the_graphs(tmp_path, tiny_ckpts):
    out = _export(tiny_ckpts["mlp"], tmp_path / "export", opset=17).out_dir
    import onnx

    assert json.loads((out / "manifest.json").read_text())["export"]["opset"] == 17
    assert {o.version for o in onnx.load(str(out / "decoder.onnx")).opset_import if o.domain == ""} == {17}
