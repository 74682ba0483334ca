"""Datasets: scikit-learn's bundled digits (no download), or the user's own arrays.

Every dataset is split once, with a seed, into train and test; the split's description
(``DataSpec``) is stored in the checkpoint so that evaluation, parity and calibration can
rebuild exactly the same test set later.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import DataError

BUILTIN = ("digits",)


@dataclass(frozen=True)
class DataSpec:
    """Where the data came from and how it was split; JSON-able."""

    name: str  # "digits" or a file path
    seed: int = 0
    test_fraction: float = 0.2
    sha256: str | None = None  # of a user file, to notice when it changed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Dataset:
    train: np.ndarray  # float32, [N, *input_shape], values in [0, 1] for Bernoulli data
    test: np.ndarray
    spec: DataSpec

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def load_digits_array() -> np.ndarray:
    """scikit-learn's 1,797 8x8 digits as float32 [N, 1, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return images[:, None, :, :]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_array_file(path: str | Path, *, bernoulli: bool = True, min_examples: int = 2) -> np.ndarray:
    """Read and validate a user's ``.npy``/``.npz`` array of examples.

    Accepts ``[N, D]`` vectors or ``[N, C, H, W]`` / ``[N, H, W]`` images (the latter gets a
    channel axis). ``uint8`` data is scaled by 1/255; Bernoulli data must lie in [0, 1].
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {str(p)!r} does not exist (expected a .npy or .npz array file)")
    if p.suffix not in (".npy", ".npz"):
        raise DataError(f"data file {str(p)!r}: expected a .npy or .npz file, got suffix {p.suffix!r}")
    try:
        loaded = np.load(p, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused
        raise DataError(f"data file {str(p)!r} holds pickled objects or is not a numpy file: {e}") from None
    except Exception as e:
        raise DataError(f"data file {str(p)!r} could not be read as numpy data: {e}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        if "x" in keys:
            key = "x"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise DataError(
                f"data file {str(p)!r}: expected an array named 'x' or a single array, found {keys}"
            )
        try:
            arr = loaded[key]
        except ValueError as e:
            raise DataError(f"data file {str(p)!r}: array {key!r} cannot be loaded without pickle: {e}") from None
    else:
        arr = loaded
    return validate_array(arr, source=str(p), bernoulli=bernoulli, min_examples=min_examples)


def validate_array(arr: np.ndarray, *, source: str = "array", bernoulli: bool = True,
                   min_examples: int = 2) -> np.ndarray:
    """Check shape, dtype, finiteness and range; return float32 ``[N, *input_shape]``.
    ``min_examples``: 2 for training (a train and a test split), 1 to reconstruct."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3, 4):
        raise DataError(
            f"{source}: expected shape [N, D], [N, H, W] or [N, C, H, W], got {list(arr.shape)}"
        )
    if 0 in arr.shape[1:]:
        raise DataError(f"{source}: every axis of an example needs a positive size, got shape {list(arr.shape)}")
    if arr.shape[0] < min_examples:
        raise DataError(f"{source}: need at least {min_examples} example{'s' if min_examples > 1 else ''}"
                        + (" to split into train and test" if min_examples == 2 else "") + f", got {arr.shape[0]}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{source}: contains {int(bad.sum())} NaN/Inf values (first at index {idx})")
    if bernoulli and (arr.min() < 0.0 or arr.max() > 1.0):
        raise DataError(
            f"{source}: a Bernoulli likelihood needs values in [0, 1], got range "
            f"[{float(arr.min()):.4g}, {float(arr.max()):.4g}]; rescale the data or use --likelihood gaussian"
        )
    if arr.ndim == 3:
        arr = arr[:, None]
    return np.ascontiguousarray(arr)


def split(arr: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded permutation split (numpy's PCG64, stable across versions)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = arr.shape[0]
    n_test = max(1, int(round(n * test_fraction)))
    perm = np.random.default_rng(seed).permutation(n)
    return arr[perm[n_test:]], arr[perm[:n_test]]


def load_dataset(
    name: str = "digits", *, seed: int = 0, test_fraction: float = 0.2, bernoulli: bool = True
) -> Dataset:
    """Load a bundled dataset by name or a user file by path, and split it."""
    if name == "digits":
        arr, sha = load_digits_array(), None
    elif name in BUILTIN:  # pragma: no cover - future built-ins
        raise DataError(f"unknown built-in dataset {name!r}")
    else:
        path = Path(name)
        if not path.suffix:
            raise DataError(f"unknown dataset {name!r}: expected one of {BUILTIN} or a .npy/.npz path")
        arr = load_array_file(path, bernoulli=bernoulli)
        sha = _sha256(path)
    train, test = split(arr, seed, test_fraction)
    return Dataset(train, test, DataSpec(name=name, seed=seed, test_fraction=test_fraction, sha256=sha))


def dataset_from_spec(spec: dict[str, Any], *, bernoulli: bool = True) -> Dataset:
    """Rebuild the dataset a checkpoint was trained on; refuses a user file that changed."""
    ds = load_dataset(
        spec["name"], seed=int(spec["seed"]), test_fraction=float(spec["test_fraction"]), bernoulli=bernoulli
    )
    if spec.get("sha256") and ds.spec.sha256 != spec["sha256"]:
        raise DataError(
            f"data file {spec['name']!r} changed since training (sha256 {ds.spec.sha256[:12]}... "
            f"!= recorded {spec['sha256'][:12]}...)"
        )
    return ds
