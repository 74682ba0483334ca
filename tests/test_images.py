"""PNG grids people can read (upscaled, captioned) and files that respect the umask."""

from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image

from vae_deploy.files import atomic_write_bytes
from vae_deploy.images import CAPTION_H, MIN_TILE, SEPARATOR, SEPARATOR_H, save_grid, save_labelled_grid


def test_small_images_are_upscaled_by_nearest_neighbour(tmp_path):
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    img = np.asarray(Image.open(save_grid(tmp_path / "g.png", x)))
    assert min(img.shape[:2]) >= 8 * MIN_TILE  # 8 tiles of >= 64 px per side, not 219 px
    tile = img[2:2 + MIN_TILE, 2:2 + MIN_TILE]
    block = tile[: MIN_TILE // 8, : MIN_TILE // 8]
    assert (block == block[0, 0]).all()  # nearest neighbour: one source pixel, one flat block
    assert block[0, 0] == int(x[0, 0, 0, 0] * 255 + 0.5)


def test_labelled_sections_have_captions_and_a_separator(tmp_path):
    x = np.zeros((16, 1, 8, 8), np.float32)
    y = np.ones((16, 1, 8, 8), np.float32)
    img = np.asarray(Image.open(save_labelled_grid(tmp_path / "r.png", [("input", x), ("reconstruction", y)], cols=16)))
    body = 8 * MIN_TILE // 8 + 2 * 2
    assert img.shape == (2 * (CAPTION_H + body) + SEPARATOR_H, 16 * (MIN_TILE + 2) + 2)
    assert (img[CAPTION_H + body: CAPTION_H + body + SEPARATOR_H] == SEPARATOR).all()
    assert (img[:CAPTION_H] > 200).any()  # the caption's text is drawn
    assert (img[CAPTION_H + 2: CAPTION_H + 10, 2:10] == 0).all()  # inputs (zeros) above
    second = CAPTION_H + body + SEPARATOR_H + CAPTION_H
    assert (img[second + 2: second + 10, 2:10] == 255).all()  # reconstructions (ones) below


def test_written_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644  # not mkstemp's 0600
        os.umask(0o077)
        q = atomic_write_bytes(tmp_path / "b.bin", b"x")
        assert stat.S_IMODE(q.stat().st_mode) == 0o600
    finally:
        os.umask(old)
