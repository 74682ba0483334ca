"""Write samples for people and programs: ``.npy`` arrays and PNG grids.

Only numpy and Pillow: ``sample``/``reconstruct`` run in the lean (torch-free) install.
Small images (8x8 digits) are upscaled by nearest neighbour so each tile is at least
``MIN_TILE`` pixels, and labelled sections (``input`` / ``reconstruction``) get a caption
strip and a separator line, so a reader knows which row is which.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vae_deploy.files import atomic_write_bytes

MIN_TILE = 64  # pixels: an 8x8 digit becomes 64x64
PAD = 2
CAPTION_H = 16
SEPARATOR_H = 3
BACKGROUND = 32  # caption strips
GAP = 96  # the lines between tiles: visible against black and white images
SEPARATOR = 160


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return atomic_write_bytes(Path(path), buf.getvalue())


def to_images(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] / [N, H, W] / [N, D] with D a square -> uint8 [N, H, W, C] with C 1 or 3."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"cannot show flat examples of size {x.shape[1]} as images (not a square)")
        x = x.reshape(-1, 1, side, side)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1|3, H, W], got shape {list(x.shape)}")
    lo, hi = (0.0, 1.0) if x.min() >= 0.0 and x.max() <= 1.0 else (float(x.min()), float(x.max()))
    x = (np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255 + 0.5).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def tile_scale(h: int, w: int) -> int:
    """The integer nearest-neighbour factor that makes a tile at least ``MIN_TILE`` pixels."""
    return max(1, math.ceil(MIN_TILE / max(h, w)))


def grid_image(x: np.ndarray, cols: int | None = None, pad: int = PAD, scale: int | None = None) -> np.ndarray:
    """Tiles on a dark background, each upscaled by nearest neighbour: uint8 [H, W, C]."""
    imgs = to_images(x)
    n, h, w, c = imgs.shape
    scale = scale or tile_scale(h, w)
    imgs = imgs.repeat(scale, 1).repeat(scale, 2)
    h, w = h * scale, w * scale
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), GAP, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = imgs[i]
    return canvas


def labelled_grid(sections: Sequence[tuple[str, np.ndarray]], cols: int | None = None) -> np.ndarray:
    """Grids stacked top to bottom, each under a caption strip, separated by a line."""
    from PIL import Image, ImageDraw

    parts = [(label, grid_image(x, cols=cols)) for label, x in sections]
    width = max(g.shape[1] for _, g in parts)
    channels = max(g.shape[2] for _, g in parts)
    blocks = []
    for i, (label, g) in enumerate(parts):
        if g.shape[2] != channels:
            g = np.repeat(g, channels, axis=2)
        if i:
            blocks.append(np.full((SEPARATOR_H, width, channels), SEPARATOR, np.uint8))
        caption = Image.new("L", (width, CAPTION_H), BACKGROUND)
        ImageDraw.Draw(caption).text((PAD + 2, 2), label, fill=255)
        blocks.append(np.repeat(np.asarray(caption)[..., None], channels, axis=2))
        body = np.full((g.shape[0], width, channels), BACKGROUND, np.uint8)
        body[:, : g.shape[1]] = g
        blocks.append(body)
    return np.concatenate(blocks, axis=0)


def _write_png(path: str | Path, canvas: np.ndarray) -> Path:
    from PIL import Image

    img = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())


def save_grid(path: str | Path, x: np.ndarray, cols: int | None = None) -> Path:
    """A PNG grid a person can look at (small images upscaled by nearest neighbour)."""
    return _write_png(path, grid_image(x, cols=cols))


def save_labelled_grid(path: str | Path, sections: Sequence[tuple[str, np.ndarray]], cols: int | None = None) -> Path:
    """A PNG of captioned sections, e.g. ``[("input", x), ("reconstruction", x_hat)]``."""
    return _write_png(path, labelled_grid(sections, cols=cols))
