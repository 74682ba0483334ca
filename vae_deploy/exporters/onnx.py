"""ONNX exporter: one self-contained graph per half, dynamic batch axis, contract metadata.

We use torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``), the default
and maintained path in this torch; the TorchScript-based one is deprecated. Its graph
optimiser already folds constants, so the files are small and clean. Every file is run
through ``onnx.checker`` (full check) and strict shape inference, and refused if it holds
a random operator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from vae_deploy.contract import random_ops
from vae_deploy.errors import ExportError
from vae_deploy.exporters._exact_rewrites import exact_noop_rewrites
from vae_deploy.exporters._quiet import quiet_torch
from vae_deploy.exporters._registry_cache import cached_torchlib_registry

EXPORTER_NAME = "torch.onnx.export(dynamo=True)"
DEFAULT_OPSET = 18
MIN_OPSET = 14


def check_opset(opset: int) -> None:
    """Refuse, before any work, an opset this onnx does not know: the exporter would quietly
    write another one, and the manifest would claim a version the graphs do not have."""
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset must be an integer in [{MIN_OPSET}, {newest}] (onnx {onnx.__version__}), got {opset!r}")


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_names: Sequence[str],
    dynamic_dims: dict[int, str],
    metadata: dict[str, str],
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export ``module(example)`` to ``path`` and return the checked model.

    ``dynamic_dims`` maps input axes to names (``{0: "batch"}``); every output axis that
    depends on them becomes dynamic too. Every dynamic axis is ``Dim.DYNAMIC``: torch.export
    infers the range the graph is valid for (diffusers' VAEs need height/width >= 4 and branch
    on batch >= 64 for a no-op ``contiguous()``, so a fixed ``Dim(name, min=1)`` fails or
    makes torch.onnx trace twice), and refuses to specialise the axis to the example's size
    (``Dim.AUTO`` would, silently). The ONNX graph keeps no range; the names are put back
    afterwards. As a last guard, an input axis that still came out fixed is refused.
    """
    dims = {axis: torch.export.Dim.DYNAMIC for axis in dynamic_dims}
    with quiet_torch() as log, exact_noop_rewrites(), cached_torchlib_registry():
        try:
            torch.onnx.export(
                module.eval(),
                (example,),
                str(path),
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_shapes={input_name: dims} if dims else None,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many types; keep its log for the user
            tail = "\n".join(log.getvalue().strip().splitlines()[-8:])
            raise ExportError(f"ONNX export of the {metadata.get('vae_deploy.role', 'model')} failed: "
                              f"{type(e).__name__}: {e}" + (f"\nexporter log:\n{tail}" if tail else "")) from e
    model = onnx.load(str(path))
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"asked for ONNX opset {opset}, but torch's exporter wrote opset {written}; "
                          f"pick an opset it supports (default {DEFAULT_OPSET})")
    _require_dynamic(model, dynamic_dims, metadata.get("vae_deploy.role", "model"))
    _rename_dynamic_dims(model, dynamic_dims)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    from vae_deploy import __version__

    model.producer_name = "vae-deploy"
    model.producer_version = __version__
    model.doc_string = f"vae-deploy {metadata.get('vae_deploy.role', '')} (see export/README.md for the contract)"
    check_model(model, where=str(path))
    onnx.save(model, str(path))
    return model


def _require_dynamic(model: onnx.ModelProto, dynamic_dims: dict[int, str], role: str) -> None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    frozen = [f"{name} (axis {axis}) = {dims[axis].dim_value}" for axis, name in dynamic_dims.items()
              if axis < len(dims) and not dims[axis].dim_param]
    if frozen:
        raise ExportError(f"ONNX export of the {role}: the exporter fixed the dynamic axes {', '.join(frozen)} to the "
                          "example's size (the model's code depends on that size); export with a fixed size instead")


def _rename_dynamic_dims(model: onnx.ModelProto, dynamic_dims: dict[int, str]) -> None:
    """Give each dynamic axis its contract name on every input and output, also inside
    derived sizes (``(s53//2)`` becomes ``(height//2)``): the exporter's own symbols mean
    nothing to a consumer."""
    inp = model.graph.input[0].type.tensor_type.shape.dim
    renames = {inp[axis].dim_param: name for axis, name in dynamic_dims.items() if inp[axis].dim_param}
    if not renames:
        return
    symbol = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(renames, key=len, reverse=True)) + r")\b")
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = symbol.sub(lambda m: renames[m.group(1)], d.dim_param)


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    """onnx.checker (full), strict shape inference, and the no-randomness rule."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        raise ExportError(f"{where}: the exported ONNX graph is invalid: {e}") from e
    rnd = random_ops(model)
    if rnd:
        raise ExportError(
            f"{where}: the exported graph contains random operators {sorted(set(rnd))}; noise must be drawn "
            "in the host (z = mu + exp(0.5 * logvar) * eps), not inside a graph"
        )
