"""Images out: the one float -> uint8 conversion, ``.npy`` arrays and PNG grids.

Only numpy and Pillow: ``sample``/``reconstruct``/``decode`` run in the lean (torch-free) install.
:func:`to_uint8` is the conversion every image writer uses (``Runtime.decode(output=...)``,
``vae-deploy decode``, the grids, ``batch --format png``): the decoder's declared output range
mapped to 0..1, clipped, times 255, rounded half to even -- diffusers'
``VaeImageProcessor.postprocess`` step for step in float32, so a PNG equals the pipeline's image.
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

from vae_deploy.errors import InputError
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


OUTPUTS = ("float", "uint8", "pil")


def export_output_range(likelihood: str, family: str, data_spec: dict | None = None) -> tuple[float, ...]:
    """The range recorded at export: (-1, 1) for diffusers VAEs, (0, 1) for Bernoulli decoders and
    for Gaussian ones trained on bundled data or image folders (read as [0, 1]); () otherwise (a
    user's float array: its range is not known, so nothing is claimed)."""
    if family.startswith("diffusers."):
        return (-1.0, 1.0)
    if likelihood == "bernoulli":
        return (0.0, 1.0)
    data = data_spec or {}
    if data.get("name") in ("digits", "mnist") or data.get("image_size") is not None:
        return (0.0, 1.0)
    return ()


def resolve_output_range(spec: object) -> tuple[tuple[float, float] | None, str]:
    """(range, how it was found) for an export's spec: the declared ``output_range``, else (older
    exports) a fallback by family/likelihood that says so; (None, why) when nothing fits."""
    declared = tuple(getattr(spec, "output_range", ()) or ())
    if len(declared) == 2:
        return (float(declared[0]), float(declared[1])), "declared by the export"
    family, likelihood = str(getattr(spec, "family", "")), str(getattr(spec, "likelihood", ""))
    fallback = export_output_range(likelihood, family)
    if fallback:
        lo, hi = fallback
        why = f"family {family}" if family.startswith("diffusers.") else f"likelihood {likelihood}"
        return (lo, hi), (f"this export records no output range (exported before vae-deploy recorded one): "
                          f"assumed ({lo:g}, {hi:g}) for {why}")
    return None, (f"this export declares no output range (a {likelihood} VAE of family {family!r} trained on data "
                  "of unknown range)")


def to_uint8(x: np.ndarray, output_range: Sequence[float]) -> np.ndarray:
    """Decoder output [N, C, H, W] (or [N, H, W], or flat [N, D] with D a square) -> uint8 [N, H, W, C].

    Exactly diffusers' ``VaeImageProcessor.postprocess(..., output_type="pil")`` for the range
    (-1, 1): ``clip(x * 0.5 + 0.5, 0, 1) * 255`` in float32, rounded half to even. For (lo, hi)
    the scale and offset are ``1 / (hi - lo)`` and ``-lo / (hi - lo)``."""
    lo, hi = (float(v) for v in output_range)
    if not hi > lo:
        raise InputError(f"output range must be (low, high) with low < high, got {tuple(output_range)!r}")
    x = _as_nchw(x)
    if not np.isfinite(x).all():
        raise InputError("the decoder output holds NaN or infinite values; no image can be made from it")
    y = x * np.float32(1.0 / (hi - lo)) + np.float32(-lo / (hi - lo))
    y = np.clip(y, np.float32(0), np.float32(1))
    return (y.transpose(0, 2, 3, 1) * np.float32(255)).round().astype(np.uint8)


def to_pil(images: np.ndarray) -> list:
    """uint8 [N, H, W, C] -> PIL images ("L" for one channel, as diffusers' ``numpy_to_pil``)."""
    from PIL import Image

    return [Image.fromarray(im[..., 0], mode="L") if im.shape[-1] == 1 else Image.fromarray(im) for im in images]


def check_output(output: object) -> None:
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")


def convert_output(x: np.ndarray, output: str, output_range: Sequence[float] | None) -> object:
    """``Runtime.decode``'s ``output=``: "float" (as decoded), "uint8" (NHWC) or "pil" (a list)."""
    check_output(output)
    if output == "float":
        return x
    if output_range is None:
        raise InputError("images out need the decoder's output range; pass output_range=(low, high)")
    u8 = to_uint8(x, output_range)
    return u8 if output == "uint8" else to_pil(u8)


def _as_nchw(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise InputError(f"cannot show flat examples of size {x.shape[1]} as images (not a square)")
        x = x.reshape(-1, 1, side, side)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise InputError(f"expected images [N, 1|3|4, H, W], got shape {list(x.shape)}")
    return x


def to_images(x: np.ndarray, output_range: Sequence[float] | None = None) -> np.ndarray:
    """Like :func:`to_uint8`; without a range (a Gaussian VAE on data of unknown range) each call
    stretches its min..max to 0..255 instead (values already in [0, 1] are kept)."""
    if output_range is not None:
        return to_uint8(x, output_range)
    x = _as_nchw(x)
    lo, hi = (0.0, 1.0) if x.min() >= 0.0 and x.max() <= 1.0 else (float(x.min()), float(x.max()))
    x = (np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255 + 0.5).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def tile_scale(h: int, w: int) -> int:
    """The integer nearest-neighbour factor that makes a tile at least ``MIN_TILE`` pixels."""
    return max(1, math.ceil(MIN_TILE / max(h, w)))


def grid_image(x: np.ndarray, cols: int | None = None, pad: int = PAD, scale: int | None = None,
               output_range: Sequence[float] | None = None) -> np.ndarray:
    """Tiles on a dark background, each upscaled by nearest neighbour: uint8 [H, W, C]."""
    imgs = to_images(x, output_range)
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


def labelled_grid(sections: Sequence[tuple[str, np.ndarray]], cols: int | None = None,
                  output_range: Sequence[float] | None = None) -> np.ndarray:
    """Grids stacked top to bottom, each under a caption strip, separated by a line."""
    from PIL import Image, ImageDraw

    parts = [(label, grid_image(x, cols=cols, output_range=output_range)) for label, x in sections]
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
    return atomic_write_bytes(Path(path), png_bytes(canvas))


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 [H, W, C] image as PNG bytes (grayscale for one channel)."""
    from PIL import Image

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_grid(path: str | Path, x: np.ndarray, cols: int | None = None,
              output_range: Sequence[float] | None = None) -> Path:
    """A PNG grid a person can look at (small images upscaled by nearest neighbour)."""
    return _write_png(path, grid_image(x, cols=cols, output_range=output_range))


def save_labelled_grid(path: str | Path, sections: Sequence[tuple[str, np.ndarray]], cols: int | None = None,
                       output_range: Sequence[float] | None = None) -> Path:
    """A PNG of captioned sections, e.g. ``[("input", x), ("reconstruction", x_hat)]``."""
    return _write_png(path, labelled_grid(sections, cols=cols, output_range=output_range))


def save_pngs(folder: str | Path, images: np.ndarray, start: int = 0, digits: int | None = None) -> list[Path]:
    """One PNG per uint8 [H, W, C] image, ``{index:0{digits}d}.png`` (zero-padded: sorted names are
    in order), each written atomically."""
    digits = digits or max(5, len(str(start + len(images) - 1)))
    return [atomic_write_bytes(Path(folder) / f"{start + i:0{digits}d}.png", png_bytes(im))
            for i, im in enumerate(images)]
