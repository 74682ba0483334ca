"""Batch inputs read by row range: a ``.npy`` (memory-mapped), a ``.npz``, a folder of ``.npy``
shards (memory-mapped, concatenated in sorted file-name order) or a folder of images.

Only the rows of one shard are read at a time for ``.npy`` inputs, so a data set larger than
memory streams through. Rows are returned as stored (e.g. uint8); ``tasks.to_model_rows``
turns them into float32 model inputs in the worker, so the raw (smaller) rows travel.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.artifacts import file_sha256
from vae_deploy.errors import DataError, VaeDeployError
from vae_deploy.training.data.arrays import check_array_file, npz_key
from vae_deploy.training.data.images import IMAGE_SUFFIXES  # the loader's list: one list


@dataclass
class InputSource:
    """Rows of one or more arrays, addressed as one sequence."""

    path: Path
    kind: str  # "npy", "npz", "npy-folder", "image-folder"
    parts: list[np.ndarray]
    names: list[str] = field(default_factory=list)  # the files behind the parts (for the fingerprint)
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.offsets = [0]
        for p in self.parts:
            self.offsets.append(self.offsets[-1] + int(p.shape[0]))

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.parts[0].shape[1:])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as one in-memory array (copied out of any memory map)."""
        chunks = []
        for part, lo in zip(self.parts, self.offsets):
            hi = lo + part.shape[0]
            if hi <= start or lo >= stop:
                continue
            chunks.append(np.asarray(part[max(start, lo) - lo: min(stop, hi) - lo]))
        if len(chunks) == 1:
            return np.array(chunks[0], copy=True)
        dtype = np.result_type(*chunks)
        return np.concatenate([c.astype(dtype, copy=False) for c in chunks])

    def fingerprint(self) -> dict[str, Any]:
        """The input's identity: each file's name, size and sha256 (streamed in 1 MiB blocks).
        Not the mtime: ``cp -p``, ``rsync -a`` and ``tar`` keep it, and a fixed-shape ``.npy``
        keeps its size, so only the content tells a changed input. Hashing reads each byte once,
        cheap next to encoding it; a resumed job refuses an input that changed under it."""
        files = []
        for name in self.names:
            p = self.path / name if self.path.is_dir() else self.path
            files.append([name, p.stat().st_size, file_sha256(p)])
        return {"path": str(self.path.resolve()), "kind": self.kind, "rows": self.n_rows,
                "item_shape": list(self.item_shape), "files": files}


def _load_npy(path: Path) -> np.ndarray:
    check_array_file(path, in_memory=False)  # memory-mapped: only the file's own size must agree
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{str(path)!r} holds pickled objects or is not a numpy file: {e}") from None
    except Exception as e:
        raise DataError(f"{str(path)!r} could not be read as a .npy array: {e}") from None
    return _checked(arr, str(path))


def _load_npz(path: Path) -> np.ndarray:
    check_array_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arr = z[npz_key(list(z.keys()), repr(str(path)))]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{str(path)!r} could not be read as a .npz archive without pickle: {e}") from None
    return _checked(arr, str(path))


def _checked(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise DataError(f"{source}: expected rows of examples [N, ...], got shape {list(arr.shape)}")
    return arr


def _job_output_npys(folder: Path) -> list[str] | None:
    """The ``.npy`` shards of one output when ``folder`` is a batch job's output: an encode job
    writes ``mu`` and ``logvar`` shards side by side, and decoding both as latents would give
    twice the rows. ``mu`` (the posterior mean) is what a decode of encoded data wants; a folder
    of several other outputs is refused, naming them."""
    from vae_deploy.serving.batch.output import _read_manifest, find_manifest

    found = find_manifest(folder)
    if found is None:
        return None
    try:
        doc = _read_manifest(found)
    except (OSError, ValueError, VaeDeployError) as e:
        raise DataError(f"input folder {str(folder)!r}: its batch manifest is not readable ({e})") from None
    if not doc.get("complete"):
        raise DataError(f"input folder {str(folder)!r} is an unfinished batch job (rerun it to finish it first)")
    by_key: dict[str, list[str]] = {}
    for entry in doc.get("shards", []):
        for key, f in entry.get("files", {}).items():
            name = str(f.get("path", ""))
            if name.endswith(".npy"):
                if Path(name).name != name or name.startswith("."):
                    raise DataError(f"input folder {str(folder)!r}: its batch manifest names {name!r}; expected "
                                    "a file name inside the folder")
                by_key.setdefault(key, []).append(name)
    if not by_key:
        raise DataError(f"input folder {str(folder)!r} is a batch job's output without .npy shards "
                        "(written with --format parquet/png?); expected .npy shards")
    key = "mu" if "mu" in by_key else next(iter(by_key)) if len(by_key) == 1 else None
    if key is None:
        raise DataError(f"input folder {str(folder)!r} holds several outputs per row ({sorted(by_key)}); "
                        "expected one, or mu from an encode job")
    if len(by_key) > 1:
        print(f"note: {folder}: decoding the {key!r} shards of the encode job (not {sorted(set(by_key) - {key})})",
              file=sys.stderr)
    return by_key[key]


def open_input(path: str | Path, *, item_shape: tuple[int, ...] | None = None) -> InputSource:
    """Pick the reader by what ``path`` is; every problem is a ``DataError`` before any work.

    ``item_shape`` (the export's ``[C, H, W]``) sizes the images of an image folder."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"input {str(p)!r} does not exist (expected a .npy/.npz file, a folder of .npy "
                        "shards or a folder of images)")
    if not p.is_dir():  # a FIFO or device would hang the reader: a regular file or a folder
        from vae_deploy.errors import InputError
        from vae_deploy.files import check_user_file

        try:
            check_user_file(p, "array")
        except InputError as e:
            raise DataError(str(e)) from None
        if p.suffix == ".npy":
            return InputSource(p, "npy", [_load_npy(p)], [p.name])
        if p.suffix == ".npz":
            return InputSource(p, "npz", [_load_npz(p)], [p.name])
        raise DataError(f"input {str(p)!r}: expected a .npy or .npz file or a folder, got suffix {p.suffix!r}")
    npys = _job_output_npys(p) or sorted(f.name for f in p.iterdir() if f.suffix == ".npy" and f.is_file())
    if npys:
        parts = [_load_npy(p / n) for n in npys]
        shapes = {tuple(a.shape[1:]) for a in parts}
        if len(shapes) > 1:
            raise DataError(f"input folder {str(p)!r}: its .npy shards disagree on the row shape "
                            f"({sorted(list(s) for s in shapes)}); expected one shape")
        return InputSource(p, "npy-folder", parts, npys)
    from vae_deploy.training.data import (
        load_image_folder,  # the training loader: same files, order and decoding
    )
    from vae_deploy.training.data.images import image_files

    notes: list[str] = []
    try:
        images = [f.relative_to(p).as_posix() for f in image_files(p, notes)]
    except DataError:
        raise DataError(f"input folder {str(p)!r} holds no .npy files and no images "
                        f"({', '.join(IMAGE_SUFFIXES)})") from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    kwargs: dict[str, Any] = {"notes": []}  # already reported
    if item_shape is not None and len(item_shape) == 3 and all(d > 0 for d in item_shape):
        kwargs.update(channels=item_shape[0], image_size=tuple(item_shape[1:]))
    arr = load_image_folder(p, **kwargs)
    if arr.dtype == np.uint16:  # 16-bit images: scaled as training scales them (a uint16 .npy is not)
        from vae_deploy.training.data import to_float

        arr = to_float(arr)
    return InputSource(p, "image-folder", [_checked(arr, str(p))], images)
