"""Image folders keep 16-bit precision (or refuse, one line), refuse decompression bombs in one
line, and say which entries they skipped."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_deploy.errors import DataError
from vae_deploy.runtime.core import Runtime
from vae_deploy.serving.batch import read_outputs, run_batch
from vae_deploy.training.data import load_dataset, load_image_folder


def write_png16(path: Path, a: np.ndarray) -> Path:
    """A 16-bit PNG (grey, RGB or RGBA) written from its specification: Pillow cannot write
    16-bit colour PNGs, which is the case the loader must not read clipped."""
    a = np.asarray(a, dtype=">u2")
    h, w = a.shape[:2]
    colour = 0 if a.ndim == 2 else {2: 4, 3: 2, 4: 6}[a.shape[2]]
    raw = b"".join(b"\0" + a[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def gradient16(seed: int = 0) -> np.ndarray:
    """8x8 16-bit values whose low bytes matter (no two share their high byte pattern)."""
    return np.random.default_rng(seed).integers(0, 65536, (8, 8)).astype(np.uint16)


@pytest.mark.parametrize("writer", ["pillow", "spec"])
def test_16bit_grayscale_png_keeps_its_precision(tmp_path, writer):
    a = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)
    if writer == "pillow":
        Image.fromarray(a).save(tmp_path / "g.png")
    else:
        write_png16(tmp_path / "g.png", a)
    got = load_image_folder(tmp_path)
    assert got.dtype == np.uint16 and np.array_equal(got[0, 0], a)  # not [0 255 255 ...]
    assert np.array_equal(load_image_folder(tmp_path, channels=3)[0], np.stack([a] * 3))


def test_8bit_images_beside_16bit_ones_share_the_scale(tmp_path):
    a16, a8 = gradient16(1), np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(a16).save(tmp_path / "a.png")
    Image.fromarray(a8).save(tmp_path / "b.png")
    got = load_image_folder(tmp_path)
    assert got.dtype == np.uint16
    assert np.array_equal(got[0, 0], a16) and np.array_equal(got[1, 0], a8.astype(np.uint16) * 257)


def test_resizing_16bit_images_stays_16bit(tmp_path):
    a = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)
    Image.fromarray(a).save(tmp_path / "g.png")
    got = load_image_folder(tmp_path, image_size=(16, 16))[0, 0]
    ref = np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(got, np.clip(np.rint(ref), 0, 65535).astype(np.uint16))
    assert len(np.unique(got)) > 64 and np.any(got % 257)  # values 8 bits could not hold


def test_training_data_from_16bit_images_is_scaled_by_65535(tmp_path):
    imgs = [gradient16(s) for s in range(4)]
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    ds = load_dataset(str(tmp_path), seed=0, test_fraction=0.25)
    both = np.concatenate([ds.train, ds.test])
    want = np.stack(imgs)[:, None].astype(np.float32) / 65535
    assert sorted(map(bytes, both.reshape(4, -1))) == sorted(map(bytes, want.reshape(4, -1)))


def test_batch_encode_of_16bit_images_equals_runtime_encode(exports, tmp_path):
    imgs = [gradient16(s) for s in range(3)]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(folder / f"{i}.png")
    run_batch("encode", exports["mlp"], tmp_path / "out", input_path=folder, shard_rows=2)
    mu, _ = Runtime.load(exports["mlp"]).encode(np.stack(imgs)[:, None].astype(np.float32) / 65535)
    np.testing.assert_allclose(read_outputs(tmp_path / "out")["mu"], mu, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels, kind", [(2, "grayscale+alpha"), (3, "RGB"), (4, "RGBA")])
def test_16bit_colour_or_alpha_png_is_refused_not_clipped(tmp_path, channels, kind):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    write_png16(tmp_path / "c.png", np.stack([gradient16(i) for i in range(channels)], -1))
    with pytest.raises(DataError, match=rf"c\.png.* is a 16-bit {re.escape(kind)} PNG.*clipped to 8 bits") as e:
        load_image_folder(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("limit", [3000, 1000])  # 64*64 = 4096 pixels: Pillow's warning, then its error
def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch, limit):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match=f"more pixels than Pillow's limit of {limit:,}") as e:
        load_image_folder(tmp_path)
    assert "\n" not in str(e.value)


def test_skipped_entries_are_reported_in_one_line(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dir.png").mkdir()
    notes: list[str] = []
    got = load_image_folder(tmp_path, notes=notes)
    assert got.shape == (1, 1, 8, 8)
    assert len(notes) == 1 and "skipped 2 entries" in notes[0]
    assert "pipe.png (a FIFO)" in notes[0] and "dir.png (a folder)" in notes[0]
    load_image_folder(tmp_path)  # no notes list: the same line on stderr
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: skipped 2 entries")
