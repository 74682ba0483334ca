"""Every file a user can name is a regular file under its kind's size limit, checked before a
byte is read; .npy headers are read first; the Runtime refuses thread counts out of range."""

from __future__ import annotations

import io
import os
import shutil
import zipfile

import numpy as np
import pytest

from vae_deploy.adapters.user_code import load_state_dict
from vae_deploy.artifacts import load_manifest
from vae_deploy.errors import ArtifactError, CheckpointError, DataError
from vae_deploy.files import MAX_BYTES
from vae_deploy.limits import max_threads
from vae_deploy.runtime.core import Runtime
from vae_deploy.training.checkpoint import load_checkpoint
from vae_deploy.training.data.arrays import check_array_file, load_array_file


def _header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("loader, error", [(load_checkpoint, CheckpointError), (load_state_dict, CheckpointError),
                                           (load_array_file, DataError)])
def test_a_fifo_is_refused_before_it_is_opened(tmp_path, loader, error):
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(error, match="must be a regular file, got a FIFO"):
        loader(fifo)


def test_an_oversized_manifest_is_refused_unread(exports, tmp_path):
    folder = shutil.copytree(exports["mlp"], tmp_path / "e")
    with (folder / "manifest.json").open("r+b") as f:
        f.truncate(MAX_BYTES["manifest"] + 1)  # sparse: no disk used
    with pytest.raises(ArtifactError, match="a manifest is at most"):
        load_manifest(folder)


@pytest.mark.parametrize("shape, needle", [((2**40, 8), "more than this machine"), ((100, 8), "is truncated")])
@pytest.mark.parametrize("container", ["npy", "npz"])
def test_npy_headers_are_checked_before_loading(tmp_path, shape, needle, container):
    data = _header(shape) + b"\0" * 64
    if container == "npy":
        path = tmp_path / "x.npy"
        path.write_bytes(data)
    else:
        path = tmp_path / "x.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", data)
    with pytest.raises(DataError, match=needle):
        load_array_file(path)


def test_a_sound_npy_passes_the_header_check(tmp_path):
    np.save(tmp_path / "ok.npy", np.zeros((4, 8), np.float32))
    check_array_file(tmp_path / "ok.npy")
    np.savez_compressed(tmp_path / "ok.npz", x=np.zeros((4, 8), np.float32))
    check_array_file(tmp_path / "ok.npz")


@pytest.mark.parametrize("threads", [0, -1, max_threads() + 1, 100000, 2.0, True])
def test_runtime_refuses_threads_out_of_range(exports, threads):
    with pytest.raises(ValueError, match=rf"threads must be an integer in 1\.\.{max_threads()}"):
        Runtime.load(exports["mlp"], threads=threads)


def test_runtime_takes_threads_in_range(exports):
    assert Runtime.load(exports["mlp"], threads=max_threads()).decode(np.zeros((1, 4), np.float32)).shape[0] == 1
