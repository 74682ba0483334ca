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


def test_reconstruct_and_sample_grids_from_the_cli(exports, digits, tmp_path):
    from click.testing import CliRunner

    from vae_deploy.cli import main

    np.save(tmp_path / "x.npy", digits.test[:20])
    res = CliRunner().invoke(main, ["reconstruct", str(exports["mlp"]), str(tmp_path / "x.npy"),
                                    "--grid", str(tmp_path / "r.png")])
    assert res.exit_code == 0, res.output
    img = Image.open(tmp_path / "r.png")
    body = MIN_TILE + 2 * 2  # one row of 16 upscaled tiles per section
    assert img.size == (16 * (MIN_TILE + 2) + 2, 2 * (CAPTION_H + body) + SEPARATOR_H)  # was 145x19
    res = CliRunner().invoke(main, ["sample", str(exports["mlp"]), "-n", "64", "--grid", str(tmp_path / "s.png")])
    assert res.exit_code == 0 and Image.open(tmp_path / "s.png").size == (8 * (MIN_TILE + 2) + 2,) * 2  # was 219
    assert stat.S_IMODE((tmp_path / "s.png").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    from vae_deploy.files import current_umask

    return current_umask()
