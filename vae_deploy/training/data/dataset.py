"""The split dataset and its JSON description (``DataSpec``), stored in every checkpoint.

Examples stay in memory in their stored dtype (``uint8`` images take a quarter of the space
of float32) and are scaled to [0, 1] per batch; ``Dataset.train``/``.test`` give float32
copies for code that wants the whole split at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vae_deploy.errors import DataError


@dataclass(frozen=True)
class DataSpec:
    """Where the data came from and how it was split; JSON-able."""

    name: str  # a bundled name ("digits", "mnist") or a file/folder path, as the user gave it
    seed: int = 0
    test_fraction: float = 0.2
    sha256: str | None = None  # of a user file or folder, to notice when it changed
    # How a user's data was read; None: not applicable (bundled data, or a vector array).
    layout: str | None = None  # "nchw" or "nhwc", as given or detected
    image_size: tuple[int, int] | None = None  # image folders: resized to (H, W)
    channels: int | None = None  # image folders: 1 (grayscale) or 3 (RGB)
    path: str | None = None  # a user file's or folder's absolute path: resolves from any working folder

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["image_size"] is not None:
            d["image_size"] = list(d["image_size"])
        return d


def to_float(x: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] for ``uint8`` (scaled by 1/255) and ``uint16`` (by 1/65535), float32 as
    stored otherwise."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.uint16:
        return x.astype(np.float32) / np.float32(65535.0)
    return np.asarray(x, dtype=np.float32)


@dataclass
class Dataset:
    train_raw: np.ndarray  # uint8 (scaled by 1/255 when used) or float32, [N, *input_shape]
    test_raw: np.ndarray
    spec: DataSpec
    notes: list[str] = field(default_factory=list)  # one-line notices for the user (e.g. a transposed layout)

    @property
    def train(self) -> np.ndarray:
        """The training split as float32 (a copy for uint8 data)."""
        return to_float(self.train_raw)

    @property
    def test(self) -> np.ndarray:
        """The test split as float32 (a copy for uint8 data)."""
        return to_float(self.test_raw)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_raw.shape[1:])


def split(arr: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded permutation split (numpy's PCG64, stable across versions)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = arr.shape[0]
    n_test = max(1, int(round(n * test_fraction)))
    if n - n_test < 1:
        raise DataError(
            f"{n} examples are too few to split into train and test with test fraction {test_fraction} "
            f"(expected at least 2 examples and a train split of at least 1)"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return arr[perm[n_test:]], arr[perm[:n_test]]
