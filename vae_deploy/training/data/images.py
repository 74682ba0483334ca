"""A folder of images (PNG, JPEG, BMP; searched recursively) as one ``uint8 [N, C, H, W]`` array,
or ``uint16`` when any image has 16-bit samples (8-bit ones are then scaled by 257, so every
value still means ``v / 65535``): 16-bit PNGs are not clipped to 8 bits.

Pillow reads 16-bit grayscale PNGs as mode ``I;16`` (kept), but 16-bit RGB(A) PNGs as 8-bit
``RGB`` without a word; those are refused with one line (the PNG header says their depth).
Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is kept and its warning is a
refusal here. Entries named like images that are not regular files (a FIFO, a folder called
``x.png``) are skipped and reported in one summary line.

The order is the sorted list of paths relative to the folder (POSIX separators), so the same
folder gives the same array, and the same train/test split, on every machine. Headers are
read first (size and mode, no decoding) so that a mixed-size folder or an unreadable file is
refused before any pixel is decoded, and the array is allocated once.
"""

from __future__ import annotations

import contextlib
import hashlib
import stat
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.artifacts import file_sha256
from vae_deploy.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")


def image_files(path: str | Path, notes: list[str] | None = None) -> list[Path]:
    """The image files under ``path``, sorted by their relative POSIX path. Entries with an
    image suffix that are not regular files are skipped and named in one line: appended to
    ``notes`` when given, else printed to stderr."""
    from vae_deploy.files import MAX_BYTES

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist or is not a folder")
    files, skipped = [], []
    for p in root.rglob("*"):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            st = p.stat()
        except OSError:  # a dangling symlink
            skipped.append(f"{p.relative_to(root).as_posix()} (unreadable link)")
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(f"{p.relative_to(root).as_posix()} ({_kind(st.st_mode)})")
            continue
        if st.st_size > MAX_BYTES["image"]:
            raise DataError(f"image {str(p)!r} is {st.st_size:,} bytes; an image is at most {MAX_BYTES['image']:,}")
        files.append(p)
    if skipped:
        shown = ", ".join(sorted(skipped)[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        note = f"skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} in {str(root)!r} that are not image files: {shown}"
        if notes is None:
            print(f"note: {note}", file=sys.stderr)
        else:
            notes.append(note)
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
        h.update(bytes.fromhex(file_sha256(p)))
    return h.hexdigest()


@contextlib.contextmanager
def open_image(p: Path) -> Iterator[Any]:
    """``Image.open`` with the decompression-bomb check as one ``DataError`` (Pillow's warning
    included) and unreadable files as one line."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(p)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"image {str(p)!r} has more pixels than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} "
                            "(Image.MAX_IMAGE_PIXELS): refused as a possible decompression bomb") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"image {str(p)!r} cannot be read as an image: {e}") from None
    with im:
        yield im


def png_depth(p: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None for another format: Pillow does not
    say when it narrowed a 16-bit RGB PNG to 8 bits."""
    with p.open("rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24], head[25]
    return None


def _is_16bit(p: Path, mode: str) -> bool:
    """True for a 16-bit grayscale image (kept); a 16-bit PNG with colour or alpha is refused
    (Pillow narrows those to 8 bits)."""
    depth = png_depth(p)
    if depth is not None and depth[0] == 16 and depth[1] in (2, 4, 6):
        kind = {2: "RGB", 4: "grayscale+alpha", 6: "RGBA"}[depth[1]]
        raise DataError(f"image {str(p)!r} is a 16-bit {kind} PNG, which Pillow can "
                        "only read clipped to 8 bits; expected 8-bit images or 16-bit grayscale PNGs (or save "
                        "the pixels as a .npy array)")
    return mode in SIXTEEN_BIT_MODES and (depth is None or depth[0] == 16)


def _pixels(im: Any, channels: int, size: tuple[int, int], sixteen: bool) -> np.ndarray:
    """[H, W] or [H, W, 3] of uint8, or of uint16 (``v / 65535``) when ``sixteen``."""
    from PIL import Image

    if not sixteen:
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.float32)  # I;16*: uint16 as stored; I: int32
    else:  # an 8-bit image in a 16-bit folder: the same scale, v * 257
        a = np.asarray(im.convert("L" if channels == 1 else "RGB")).astype(np.float32) * 257.0
    if a.shape[:2] != (size[1], size[0]):
        planes = a[..., None] if a.ndim == 2 else a
        a = np.stack([np.asarray(Image.fromarray(planes[..., c], mode="F").resize(size, Image.Resampling.BILINEAR))
                      for c in range(planes.shape[-1])], -1)
        a = a[..., 0] if planes.shape[-1] == 1 and a.ndim == 3 else a
    if channels == 1 and a.ndim == 3:  # ITU-R 601-2 luma, as Pillow's convert("L")
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    elif channels == 3 and a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    return np.clip(np.rint(a), 0, 65535).astype(np.uint16)


def load_image_folder(
    path: str | Path, *, image_size: tuple[int, int] | None = None, channels: int | None = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Every image under ``path`` as ``uint8 [N, C, H, W]`` (``uint16`` when any image is a 16-bit
    grayscale PNG), in sorted relative-path order.

    ``image_size=(H, W)`` resizes every image (bilinear); without it all images must share one
    size. ``channels`` 1 converts to grayscale, 3 to RGB (alpha dropped); ``None`` picks 1 when
    every image is grayscale and 3 otherwise. ``notes`` receives the skipped-entries line.
    """
    root = Path(path)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise DataError(f"image size must be two positive sizes H,W, got {image_size}")
    files = image_files(root, notes)
    headers: list[tuple[tuple[int, int], str]] = []  # (W, H), mode
    sixteen = False
    for p in files:
        with open_image(p) as im:
            headers.append((im.size, im.mode))
            sixteen = _is_16bit(p, im.mode) or sixteen
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
    out = np.empty((len(files), channels, h, w), np.uint16 if sixteen else np.uint8)
    for i, p in enumerate(files):
        try:
            with open_image(p) as im:
                a = _pixels(im, channels, (w, h), sixteen)
        except (OSError, ValueError) as e:
            raise DataError(f"image {str(p)!r} cannot be decoded: {e}") from None
        out[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return out
