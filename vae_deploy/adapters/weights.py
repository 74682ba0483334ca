"""The one rule for weights a user brings (``--model`` + ``--weights`` and ``--diffusers``): the
file must hold exactly the tensors the model defines, each of the model's shape and of the
same kind of dtype. Anything else is refused with one line naming the tensors, because every
lenient alternative exports a wrong model that still passes its checks: a missing tensor keeps
its random (or, in diffusers, uninitialised) values, an int8 tensor is a quantised model whose
scales were dropped, an unexpected one means the config built a different architecture.

Shapes and dtypes are compared as :class:`TensorInfo` records, so the check runs on a
safetensors header (no data read) against a model built on the meta device (no memory
allocated) before anything large exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vae_deploy.errors import CheckpointError

#: safetensors' dtype names by kind ("f": floating, "i": integer, "b": bool).
_ST_KINDS = {"F64": "f", "F32": "f", "F16": "f", "BF16": "f", "F8_E4M3": "f", "F8_E5M2": "f",
             "I64": "i", "I32": "i", "I16": "i", "I8": "i", "U8": "i", "U16": "i", "U32": "i", "U64": "i",
             "BOOL": "b"}
#: safetensors' name -> torch's, for messages that read the same whichever file format it was.
_ST_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
             "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
             "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}
#: Floating dtypes a float32 model loads without losing what the file says (float8 would need
#: the scales a quantised checkpoint keeps elsewhere).
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
SHOWN = 5


@dataclass(frozen=True)
class TensorInfo:
    """What the check needs of one tensor: its shape and dtype name (torch's spelling)."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def info_of(t: Any) -> TensorInfo:
    """A torch tensor's (real or meta) record."""
    return TensorInfo(tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch."))


def info_from_safetensors(dtype: str, shape: list[int]) -> TensorInfo:
    return TensorInfo(tuple(int(d) for d in shape), _ST_NAMES.get(dtype, dtype.lower()))


def _kind(dtype: str) -> str:
    if dtype == "bool":
        return "b"
    if dtype.startswith(("float", "bfloat")):
        return "f"
    return "i" if dtype.startswith(("int", "uint")) else "?"


def _listed(label: str, items: list[str]) -> str:
    more = f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{label} ({len(items)}): {', '.join(items[:SHOWN])}{more}"


def check_fit(expected: Mapping[str, TensorInfo], found: Mapping[str, TensorInfo], *, source: str,
              target: str) -> None:
    """Raise one ``CheckpointError`` when ``found`` (the file) is not exactly ``expected`` (the
    model): missing, unexpected, mis-shaped tensors, and dtypes of another kind (the model's
    floating tensors must come as float16/bfloat16/float32/float64; its integer buffers, such as
    BatchNorm's ``num_batches_tracked``, as integers). Each problem names its first tensors and
    how many there are."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes, dtypes = [], []
    for k, want in expected.items():
        got = found.get(k)
        if got is None:
            continue
        if got.shape != want.shape:
            shapes.append(f"{k}: file {list(got.shape)}, model {list(want.shape)}")
        kind = _kind(want.dtype)
        if (kind == "f" and got.dtype not in FLOAT_DTYPES) or (kind != "f" and _kind(got.dtype) != kind):
            what = "float16/bfloat16/float32/float64" if kind == "f" else want.dtype
            dtypes.append(f"{k}: file {got.dtype}, model expects {what}")
    parts = [_listed(label, items) for label, items in (("missing", missing), ("unexpected", unexpected),
                                                         ("shape mismatch", shapes), ("dtype", dtypes)) if items]
    if parts:
        raise CheckpointError(f"the {source} do not fit the {target}: " + "; ".join(parts))
