"""A folder of images (PNG, JPEG, BMP; searched recursively) as one ``uint8 [N, C, H, W]`` array.

The order is the sorted list of paths relative to the folder (POSIX separators), so the same
folder gives the same array, and the same train/test split, on every machine. Headers are
read first (size and mode, no decoding) so that a mixed-size folder or an unreadable file is
refused before any pixel is decoded, and the array is allocated once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vae_deploy.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_files(path: str | Path) -> list[Path]:
    """The image files under ``path``, sorted by their relative POSIX path."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist or is not a folder")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(
            f"image folder {str(root)!r} holds no images (expected files ending in {', '.join(IMAGE_SUFFIXES)}, "
            f"searched recursively)"
        )
    return files


def folder_sha256(path: str | Path) -> str:
    """One digest over every image's relative path and bytes: it changes when any image does."""
    root = Path(path)
    h = hashlib.sha256()
    for p in image_files(root):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def load_image_folder(
    path: str | Path, *, image_size: tuple[int, int] | None = None, channels: int | None = None
) -> np.ndarray:
    """Every image under ``path`` as ``uint8 [N, C, H, W]``, in sorted relative-path order.

    ``image_size=(H, W)`` resizes every image (bilinear); without it all images must share one
    size. ``channels`` 1 converts to grayscale, 3 to RGB (alpha dropped); ``None`` picks 1 when
    every image is grayscale and 3 otherwise.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise DataError(f"image size must be two positive sizes H,W, got {image_size}")
    files = image_files(root)
    headers: list[tuple[tuple[int, int], str]] = []  # (W, H), mode
    for p in files:
        try:
            with Image.open(p) as im:
                headers.append((im.size, im.mode))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"image {str(p)!r} cannot be read as an image: {e}") from None
    if image_size is None:
        sizes = {s for s, _ in headers}
        if len(sizes) > 1:
            (w0, h0), first = headers[0][0], files[0]
            other = next(i for i, (s, _) in enumerate(headers) if s != (w0, h0))
            w1, h1 = headers[other][0]
            raise DataError(
                f"images in {str(root)!r} differ in size: {first.relative_to(root)} is {h0}x{w0} (HxW), "
                f"{files[other].relative_to(root)} is {h1}x{w1}; pass --image-size H,W to resize them all"
            )
        w, h = headers[0][0]
    else:
        h, w = (int(v) for v in image_size)
    if channels is None:
        channels = 1 if all(mode in GRAYSCALE_MODES for _, mode in headers) else 3
    out = np.empty((len(files), channels, h, w), np.uint8)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(f"image {str(p)!r} cannot be decoded: {e}") from None
        out[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return out
