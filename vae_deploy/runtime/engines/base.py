"""What every engine provides: one validated float32 chunk in, numpy out.

``Backend`` (validation, chunking, sampling) and ``Runtime`` (manifest, checksums, contract) stay
the same whatever runs the graphs; an engine only opens the two ONNX files and runs one chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PRECISION_SUFFIX = {"fp32": ""}


def backend_label(engine: str, device: str, precision: str) -> str:
    """The project-wide backend name: ``ort-cpu``, ``ort-cpu-int8``, ``openvino-cpu-bf16``."""
    short = {"onnxruntime": "ort"}.get(engine, engine)
    return f"{short}-{device}" + ("" if precision == "fp32" else f"-{precision}")


class Engine:
    """Base class: subclasses open the graphs in ``__init__`` and implement the four methods."""

    name = "engine"
    device = "cpu"
    precision = "fp32"

    @property
    def label(self) -> str:
        return backend_label(self.name, self.device, self.precision)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def decode(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def declared_input(self, role: str) -> tuple[Any, ...]:
        """Per-example dims of the graph's input (ints; anything else means dynamic)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device, "precision": self.precision}

    def close(self) -> None:
        pass
