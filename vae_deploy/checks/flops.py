"""Achieved GFLOP/s needs the work per sample: multiply-accumulates counted in the ONNX graph
(or a torch module), and the fp32 matmul ceiling measured in the same run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAC_OPS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Conv", "ConvInteger",
           "QLinearConv", "ConvTranspose")


def onnx_flops(path: str | Path, item_shape: Sequence[int] | None = None) -> float | None:
    """FLOPs per example of an ONNX graph: 2 x the MACs of Gemm/MatMul/Conv/ConvTranspose
    (and their integer/quantised forms). Shapes come from ONNX shape inference with the batch
    axis set to 1 and other dynamic input axes taken from ``item_shape`` (the example shape the
    harness feeds); where inference cannot tell (data-dependent reshapes, e.g. attention), from
    one onnxruntime run at batch 1. None when neither gives the shapes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    feeds_shape: dict[str, list[int]] = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if not d.HasField("dim_value"):
                if axis == 0:
                    d.dim_value = 1
                elif item_shape is not None and axis - 1 < len(item_shape) and item_shape[axis - 1] > 0:
                    d.dim_value = int(item_shape[axis - 1])
        feeds_shape[inp.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = _count_macs(model, shapes)
    if macs is None and all(all(d > 0 for d in s) for s in feeds_shape.values()):
        shapes.update(_shapes_by_running(model, feeds_shape))
        macs = _count_macs(model, shapes)
    return None if macs is None else 2.0 * macs


def _count_macs(model: Any, shapes: dict[str, list[int]]) -> int | None:
    import onnx

    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(d > 0 for d in s) else None

    macs = 0
    for node in model.graph.node:
        op = node.op_type
        if op not in MAC_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
            a_name = node.input[0]
            b_name = node.input[3] if op == "QLinearMatMul" else node.input[1]
            a, b, out = known(a_name), known(b_name), known(node.output[0])
            if a is None or b is None or out is None:
                return None
            if op == "Gemm":
                k = a[0] if attrs.get("transA", 0) else a[-1]
            else:
                k = a[-1]
            macs += math.prod(out) * k
        elif op in ("Conv", "ConvInteger", "QLinearConv"):
            w_name = node.input[3] if op == "QLinearConv" else node.input[1]
            w, out = known(w_name), known(node.output[0])
            if w is None or out is None:
                return None
            macs += math.prod(out) * math.prod(w[1:])  # per output: Cin/groups * prod(kernel)
        else:  # ConvTranspose
            x, w = known(node.input[0]), known(node.input[1])
            if x is None or w is None:
                return None
            macs += math.prod(x) * math.prod(w[1:])  # per input element: Cout/groups * prod(kernel)
    return macs


def _shapes_by_running(model: Any, feeds_shape: dict[str, list[int]]) -> dict[str, list[int]]:
    """Concrete shapes of the tensors around the MAC ops, from one unoptimised onnxruntime run
    on zeros (the graph is copied with those tensors added as outputs)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.initializer} | set(feeds_shape)
    wanted = []
    for node in m.graph.node:
        if node.op_type in MAC_OPS:
            for name in [*node.input[:4], node.output[0]]:
                if name and name not in have:
                    have.add(name)
                    wanted.append(name)
    for name in wanted:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        types = {i.name: i.type for i in sess.get_inputs()}
        feeds = {n: np.zeros(s, dtype=np.float16 if "float16" in types.get(n, "") else np.float32)
                 for n, s in feeds_shape.items()}
        names = [o.name for o in sess.get_outputs()]
        return {n: list(v.shape) for n, v in zip(names, sess.run(names, feeds))}
    except Exception:
        return {}


def torch_flops(module: Any, example: Any) -> float:
    """FLOPs per example of a torch module, analytically from its Linear/Conv layers (a
    cross-check of :func:`onnx_flops`)."""
    import torch
    from torch import nn

    total = [0]

    def hook(mod: Any, inputs: Any, output: Any) -> None:
        if isinstance(mod, nn.Linear):
            total[0] += output.numel() * mod.in_features
        elif isinstance(mod, nn.ConvTranspose2d):
            total[0] += inputs[0].numel() * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Conv2d):
            total[0] += output.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            module(example[:1])
    finally:
        for h in handles:
            h.remove()
    return 2.0 * total[0]

