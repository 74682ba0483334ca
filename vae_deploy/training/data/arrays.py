"""A user's ``.npy``/``.npz`` arrays: read without pickle, validated, put into ``[N, C, H, W]``.

Image arrays come in two layouts. Channels-first ``[N, C, H, W]`` is what the models take;
channels-last ``[N, H, W, C]`` (what PIL, OpenCV and TensorFlow write) is detected when only
the last axis looks like a channel count (1, 3 or 4) and transposed with a notice. A shape where
both or neither axis looks like one is ambiguous and refused unless ``layout`` says which it is:
a model trained on a wrongly guessed layout trains without complaint and is useless.

No torch or scikit-learn here: the lean runtime install uses these loaders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vae_deploy.errors import DataError

LAYOUTS = ("nchw", "nhwc")
CHANNEL_COUNTS = (1, 3, 4)


def resolve_layout(shape: tuple[int, ...], layout: str | None, source: str) -> tuple[str, str | None]:
    """The layout of a 4-D ``shape`` and a one-line notice when it was detected as channels-last."""
    if layout is not None:
        if layout not in LAYOUTS:
            raise DataError(f"{source}: layout must be one of {LAYOUTS}, got {layout!r}")
        return layout, None
    first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
    if first and not last:
        return "nchw", None
    if last and not first:
        n, h, w, c = shape
        return "nhwc", (
            f"{source}: read shape {list(shape)} as channels-last [N, H, W, C] and transposed it to "
            f"[{n}, {c}, {h}, {w}] (pass --layout nchw if it is channels-first)"
        )
    what = "both could be" if first else "neither is"
    raise DataError(
        f"{source}: cannot tell the layout of shape {list(shape)}: of axis 1 ({shape[1]}) and axis 3 "
        f"({shape[3]}), {what} a channel count in {CHANNEL_COUNTS}; pass --layout nchw ([N, C, H, W]) "
        f"or --layout nhwc ([N, H, W, C])"
    )


def npz_key(keys: list[str], source: str) -> str:
    """The array of an ``.npz`` that holds the examples: the one named ``x``, or the only one."""
    if "x" in keys:
        return "x"
    if len(keys) == 1:
        return keys[0]
    raise DataError(f"{source}: expected an array named 'x' or a single array, found {keys}")


def physical_memory() -> int | None:
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def _declared(f, source: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data bytes) from an open ``.npy`` stream's header, nothing more read."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _, dtype = reader(f)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{source} is not a .npy array (its header: {e})") from None
    if dtype.hasobject:
        raise DataError(f"{source} holds pickled objects (dtype {dtype}); expected a numeric array")
    return tuple(shape), dtype, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def check_array_file(path: str | Path, *, in_memory: bool = True) -> None:
    """Before loading: a regular file under the array size limit whose ``.npy`` header(s)
    declare no more data than the file holds (a truncated file) and, when it is to be loaded
    into memory, no more than this machine's memory (an ``.npz`` member decompresses to its
    declared size, so a small archive can claim terabytes)."""
    import zipfile

    from vae_deploy.errors import InputError
    from vae_deploy.files import check_user_file

    p = Path(path)
    try:
        check_user_file(p, "array")
    except InputError as e:
        raise DataError(str(e)) from None
    memory = physical_memory() if in_memory else None
    members: list[tuple[str, int | None]] = []  # (source, bytes available for the data or None)
    declared: list[tuple[str, int]] = []
    if p.suffix == ".npz":
        try:
            with zipfile.ZipFile(p) as z:
                for info in z.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    source = f"{str(p)!r} member {info.filename!r}"
                    with z.open(info) as f:
                        shape, dtype, nbytes = _declared(f, source)
                        avail = info.file_size - f.tell()
                    members.append((source, avail))
                    declared.append((source, nbytes))
        except zipfile.BadZipFile as e:
            raise DataError(f"{str(p)!r} is not a .npz archive: {e}") from None
    else:
        with p.open("rb") as f:
            shape, dtype, nbytes = _declared(f, repr(str(p)))
            avail = p.stat().st_size - f.tell()
        members.append((repr(str(p)), avail))
        declared.append((repr(str(p)), nbytes))
    for (source, avail), (_, nbytes) in zip(members, declared):
        if memory is not None and nbytes > memory:
            raise DataError(f"{source} declares {nbytes:,} bytes of data, more than this machine's {memory:,} bytes "
                            "of memory")
        if avail is not None and nbytes > avail:
            raise DataError(f"{source} is truncated: its header declares {nbytes:,} bytes of data, the file holds "
                            f"{avail:,}")


def load_array_file(
    path: str | Path, *, bernoulli: bool = True, layout: str | None = None, keep_uint8: bool = False,
    notes: list[str] | None = None, min_examples: int = 2,
) -> np.ndarray:
    """Read and validate a user's ``.npy``/``.npz`` array of examples (see :func:`validate_array`)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {str(p)!r} does not exist (expected a .npy or .npz array file)")
    if p.suffix not in (".npy", ".npz"):
        raise DataError(f"data file {str(p)!r}: expected a .npy or .npz file, got suffix {p.suffix!r}")
    check_array_file(p)
    try:
        loaded = np.load(p, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused
        raise DataError(f"data file {str(p)!r} holds pickled objects or is not a numpy file: {e}") from None
    except Exception as e:
        raise DataError(f"data file {str(p)!r} could not be read as numpy data: {e}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        key = npz_key(list(loaded.keys()), f"data file {str(p)!r}")
        try:
            arr = loaded[key]
        except ValueError as e:
            raise DataError(f"data file {str(p)!r}: array {key!r} cannot be loaded without pickle: {e}") from None
    else:
        arr = loaded
    return validate_array(arr, source=str(p), bernoulli=bernoulli, layout=layout, keep_uint8=keep_uint8,
                          notes=notes, min_examples=min_examples)


def validate_array(
    arr: np.ndarray, *, source: str = "array", bernoulli: bool = True, layout: str | None = None,
    keep_uint8: bool = False, notes: list[str] | None = None, min_examples: int = 2,
) -> np.ndarray:
    """Check shape, dtype, finiteness and range; return ``[N, *input_shape]``, images as ``[N, C, H, W]``.

    Accepts ``[N, D]`` vectors, ``[N, H, W]`` images (given a channel axis) and 4-D images in
    either layout (see the module docstring). ``uint8`` data is scaled by 1/255, or kept as
    ``uint8`` with ``keep_uint8`` (training scales it per batch); other data becomes float32,
    and Bernoulli data must lie in [0, 1]. A layout notice is appended to ``notes``.
    ``min_examples``: 2 for training (a train and a test split), 1 to reconstruct.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3, 4):
        raise DataError(
            f"{source}: expected shape [N, D], [N, H, W], [N, C, H, W] or [N, H, W, C], got {list(arr.shape)}"
        )
    if layout is not None and arr.ndim != 4:
        raise DataError(f"{source}: --layout applies to 4-D image arrays, got shape {list(arr.shape)}")
    if 0 in arr.shape[1:]:
        raise DataError(f"{source}: every axis of an example needs a positive size, got shape {list(arr.shape)}")
    if arr.shape[0] < min_examples:
        raise DataError(f"{source}: need at least {min_examples} example{'s' if min_examples > 1 else ''}"
                        + (" to split into train and test" if min_examples == 2 else "") + f", got {arr.shape[0]}")
    if arr.ndim == 4:
        resolved, note = resolve_layout(tuple(arr.shape), layout, source)
        if resolved == "nhwc":
            arr = arr.transpose(0, 3, 1, 2)
        if note and notes is not None:
            notes.append(note)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr) if keep_uint8 else arr.astype(np.float32) / np.float32(255.0)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{source}: contains {int(bad.sum())} NaN/Inf values (first at index {idx})")
    if bernoulli and (arr.min() < 0.0 or arr.max() > 1.0):
        raise DataError(
            f"{source}: a Bernoulli likelihood needs values in [0, 1], got range "
            f"[{float(arr.min()):.4g}, {float(arr.max()):.4g}]; rescale the data or use --likelihood gaussian"
        )
    return arr
