"""Write samples for people and programs: ``.npy`` arrays and PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vae_deploy.checkpoint import atomic_write_bytes


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p


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


def grid_image(x: np.ndarray, cols: int | None = None, pad: int = 1, scale: int | None = None) -> np.ndarray:
    imgs = to_images(x)
    n, h, w, c = imgs.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = imgs[i]
    scale = scale or max(1, 256 // max(canvas.shape[:2]))
    return canvas.repeat(scale, 0).repeat(scale, 1)


def save_grid(path: str | Path, x: np.ndarray, cols: int | None = None) -> Path:
    """A PNG grid a person can look at (upscaled so 8x8 digits are visible)."""
    import io

    from PIL import Image

    canvas = grid_image(x, cols=cols)
    img = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p
