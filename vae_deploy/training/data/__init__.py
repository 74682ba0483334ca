"""Datasets: bundled digits (8x8, or 28x28 MNIST with the ``mnist`` extra), or the user's own.

``--data`` takes a bundled name (:mod:`vae_deploy.training.data.bundled`), a ``.npy``/``.npz`` array
(:mod:`vae_deploy.training.data.arrays`) or a folder of images (:mod:`vae_deploy.training.data.images`). Every
dataset is split once, with a seed, into train and test; the split's description
(``DataSpec``) is stored in the checkpoint so that evaluation, parity and calibration can
rebuild exactly the same test set later.

Neither torch nor scikit-learn is imported here at module level: the lean runtime install
uses the array and image loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.artifacts import file_sha256
from vae_deploy.errors import DataError
from vae_deploy.training.data.arrays import LAYOUTS, load_array_file, resolve_layout, validate_array
from vae_deploy.training.data.bundled import (
    BUNDLED,
    load_bundled,
    load_digits_array,
    load_mnist_array,
    mnist_available,
)
from vae_deploy.training.data.dataset import Dataset, DataSpec, split, to_float
from vae_deploy.training.data.images import IMAGE_SUFFIXES, folder_sha256, load_image_folder

BUILTIN = BUNDLED  # older name

__all__ = [
    "BUILTIN", "BUNDLED", "IMAGE_SUFFIXES", "LAYOUTS", "DataSpec", "Dataset", "dataset_from_spec",
    "load_array_file", "load_dataset", "load_digits_array", "load_image_folder", "load_mnist_array",
    "mnist_available", "resolve_data_path", "resolve_layout", "split", "to_float", "validate_array",
]



def load_dataset(
    name: str = "digits", *, seed: int = 0, test_fraction: float = 0.2, bernoulli: bool = True,
    layout: str | None = None, image_size: tuple[int, int] | None = None, channels: int | None = None,
) -> Dataset:
    """Load a bundled dataset by name, a user array file or an image folder by path, and split it.

    ``layout`` applies to 4-D arrays; ``image_size`` and ``channels`` to image folders.
    """
    notes: list[str] = []
    path = Path(name)
    folder_opts = [n for n, v in (("--image-size", image_size), ("--channels", channels)) if v is not None]
    used_layout: str | None = None
    if name in BUNDLED:
        if layout or folder_opts:
            raise DataError(f"bundled data set {name!r} takes no {', '.join(folder_opts or ['--layout'])}")
        arr, sha = load_bundled(name), None
    elif path.is_dir():
        if layout is not None:
            raise DataError("--layout applies to .npy/.npz arrays, not to an image folder (always read as NCHW)")
        arr = load_image_folder(path, image_size=image_size, channels=channels, notes=notes)
        if arr.dtype == np.uint16:  # 16-bit images: float32 in [0, 1] (training scales only uint8 itself)
            arr = to_float(arr)
        sha, channels = folder_sha256(path), int(arr.shape[1])
        image_size = (int(arr.shape[2]), int(arr.shape[3]))
    elif path.suffix in (".npy", ".npz") or path.exists():
        if folder_opts:
            raise DataError(f"{', '.join(folder_opts)} apply to an image folder, not to the array file {name!r}")
        arr = load_array_file(path, bernoulli=bernoulli, layout=layout, keep_uint8=True, notes=notes)
        sha = file_sha256(path)
        used_layout = layout or ("nhwc" if notes else None)  # a detected NCHW is detected again
    else:
        raise DataError(
            f"unknown dataset {name!r}: expected one of {BUNDLED}, a .npy/.npz file or a folder of images"
        )
    train, test = split(arr, seed, test_fraction)
    where = None if name in BUNDLED else str(path.resolve())
    spec = DataSpec(name=name, seed=seed, test_fraction=test_fraction, sha256=sha, layout=used_layout,
                    image_size=image_size, channels=channels, path=where)
    return Dataset(train, test, spec, notes)


def resolve_data_path(spec: dict[str, Any]) -> str:
    """Where a recorded user file or folder is now: its absolute path when it still exists there,
    else the name as given (relative to the working folder, as in checkpoints written before the
    absolute path was recorded)."""
    recorded = spec.get("path")
    if recorded and Path(recorded).exists():
        return recorded
    return spec["name"]


def dataset_from_spec(spec: dict[str, Any], *, bernoulli: bool = True) -> Dataset:
    """Rebuild the dataset a checkpoint was trained on; refuses a user file or folder that changed."""
    size = spec.get("image_size")
    name = spec["name"] if spec["name"] in BUNDLED else resolve_data_path(spec)
    ds = load_dataset(
        name, seed=int(spec["seed"]), test_fraction=float(spec["test_fraction"]), bernoulli=bernoulli,
        layout=spec.get("layout"), image_size=tuple(size) if size else None, channels=spec.get("channels"),
    )
    if spec.get("sha256") and ds.spec.sha256 != spec["sha256"]:
        raise DataError(
            f"data {spec['name']!r} changed since training (sha256 {ds.spec.sha256[:12]}... "
            f"!= recorded {spec['sha256'][:12]}...)"
        )
    return ds
