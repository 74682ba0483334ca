"""Winograd-transformed 3x3 convolutions inside the ONNX graph: fewer multiplications past the
dense fp32 limit.

Where every fp32 engine already runs a conv decoder at the CPU's GEMM ceiling (AVX2-only CPUs,
issue #27), only fewer multiplications make it faster. Winograd's minimal filtering F(m x m, 3x3)
computes an m x m output tile from an (m+2) x (m+2) input tile with (m+2)^2 multiplications per
input/output channel pair instead of 9 m^2: 2.25x fewer for F(2x2,3x3), 4x for F(4x4,3x3). Each
3x3 stride-1 convolution becomes, in plain ONNX ops every engine runs:

1. input transform ``V = B^T d B`` of every overlapping tile: a depthwise ``Conv`` with fixed
   0/+-1 (F4: small integer) kernels, stride m, one output channel per tile position;
2. the channel mixing: one batched ``MatMul`` over the (m+2)^2 tile positions,
   ``U[xi] (Cout x Cin) @ V[xi] (Cin x tiles)``, with ``U = G g G^T`` precomputed from the weights;
3. output transform ``Y = A^T M A``: a depthwise ``ConvTranspose`` with kernel = stride = m
   (non-overlapping output tiles), plus the bias; a ``Slice`` crops sizes that are not a
   multiple of m.

Not exact: the transforms reassociate sums (F(2x2,3x3) loses ~1-2 bits, F(4x4,3x3) ~4, because its
matrices hold 4, 5 and 1/24). So, like every variant, the graph is verified against eager at
export and dropped with the reason when it fails; it is held to the *fp32* tolerance (it is an
fp32 variant: ``tolerance_for`` falls back to fp32's bound for it), which makes it a candidate
``auto`` may pick under the default budget only where it really agrees with eager.
"""

from __future__ import annotations

from fractions import Fraction as Fr

import numpy as np
import onnx
from onnx import helper

from vae_deploy.errors import ExportError
from vae_deploy.exporters.rewrite import RewriteResult, _attrs, _Graph

# Convolutions narrower than this (either side) are left alone: the transforms cost memory
# traffic per channel while the saving is per channel *pair* (conv_in with 4 latent channels,
# conv_out with 3 colours would get slower).
MIN_CHANNELS = 32
TILES = (2, 4)


def _f(rows: list[list[object]]) -> np.ndarray:
    return np.array([[float(Fr(str(v))) for v in r] for r in rows], dtype=np.float64)


# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): correlation form,
# y = A^T [(G g) * (B^T d)].
MATRICES: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (_f([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        _f([[1, 0, 0], ["1/2", "1/2", "1/2"], ["1/2", "-1/2", "1/2"], [0, 0, 1]]),
        _f([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (_f([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        _f([["1/4", 0, 0], ["-1/6", "-1/6", "-1/6"], ["-1/6", "1/6", "-1/6"], ["1/24", "1/12", "1/6"],
            ["1/24", "-1/12", "1/6"], [0, 0, 1]]),
        _f([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}


def multiplication_saving(m: int) -> float:
    """How many times fewer multiplications the channel mixing of F(m x m, 3x3) does."""
    return 9.0 * m * m / (m + 2) ** 2


def transformed_weights(w: np.ndarray, m: int) -> np.ndarray:
    """``U = G g G^T`` for every (out, in) pair of a [Cout, Cin, 3, 3] kernel, as
    [(m+2)^2, Cout, Cin] float32 (computed in float64, rounded once)."""
    _, g, _ = MATRICES[m]
    u = np.einsum("pi,oaij,qj->pqoa", g, w.astype(np.float64), g)
    a = m + 2
    return np.ascontiguousarray(u.reshape(a * a, w.shape[0], w.shape[1]), dtype=np.float32)


def input_kernels(cin: int, m: int) -> np.ndarray:
    """Depthwise kernels [Cin*(m+2)^2, 1, m+2, m+2] whose outputs are the tile transform
    ``B^T d B``, channel ``ci*(m+2)^2 + p*(m+2) + q``."""
    bt, _, _ = MATRICES[m]
    k = np.einsum("pi,qj->pqij", bt, bt).reshape(-1, 1, m + 2, m + 2)
    return np.ascontiguousarray(np.tile(k, (cin, 1, 1, 1)), dtype=np.float32)


def output_kernels(cout: int, m: int) -> np.ndarray:
    """ConvTranspose kernels [Cout*(m+2)^2, 1, m, m] (group Cout) applying ``A^T M A``."""
    _, _, at = MATRICES[m]
    k = np.einsum("rp,sq->pqrs", at, at).reshape(-1, 1, m, m)
    return np.ascontiguousarray(np.tile(k, (cout, 1, 1, 1)), dtype=np.float32)


def _eligible(g: _Graph, node: onnx.NodeProto, min_channels: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(weights, bias) of a plain 3x3, stride-1, pad-1, ungrouped 2-D Conv with constant
    weights and both channel counts >= ``min_channels``; None for any other node."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    w = g.const(node.input[1])
    if w is None or w.ndim != 4 or w.shape[2:] != (3, 3) or w.dtype != np.float32:
        return None
    b = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and b is None:
        return None
    a = _attrs(node)
    if (a.get("group", 1) != 1 or list(a.get("strides", [1, 1])) != [1, 1]
            or list(a.get("dilations", [1, 1])) != [1, 1] or list(a.get("pads", [0] * 4)) != [1, 1, 1, 1]
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    if min(w.shape[0], w.shape[1]) < min_channels:
        return None
    return w, b


def _rewrite_conv(g: _Graph, node: onnx.NodeProto, w: np.ndarray, b: np.ndarray | None, m: int) -> None:
    cout, cin = int(w.shape[0]), int(w.shape[1])
    a2 = (m + 2) ** 2
    x, y = node.input[0], node.output[0]
    n = g.fresh
    v, v4, vt, mm, mt, mr, s_v, hw, tgt = (n(f"wino{m}_{s}") for s in
                                            ("v", "v4", "vt", "m", "mt", "mr", "shape", "hw", "target"))
    nodes = [
        helper.make_node("Conv", [x, g.add_const("wino_bt", input_kernels(cin, m))], [v], group=cin,
                         kernel_shape=[m + 2, m + 2], strides=[m, m], pads=[1, 1, m, m]),
        helper.make_node("Reshape", [v, g.add_const("wino_shape", np.array([0, cin, a2, -1], np.int64))], [v4]),
        helper.make_node("Transpose", [v4], [vt], perm=[0, 2, 1, 3]),  # [N, a2, Cin, tiles]
        helper.make_node("MatMul", [g.add_const("wino_u", transformed_weights(w, m)), vt], [mm]),  # [N, a2, Cout, tiles]
        helper.make_node("Transpose", [mm], [mt], perm=[0, 2, 1, 3]),  # [N, Cout, a2, tiles]
        helper.make_node("Shape", [v], [s_v], start=2, end=4),
        helper.make_node("Concat", [g.add_const("wino_lead", np.array([0, cout * a2], np.int64)), s_v], [tgt], axis=0),
        helper.make_node("Reshape", [mt, tgt], [mr]),  # [N, Cout*a2, tiles_h, tiles_w]
    ]
    ct_in = [mr, g.add_const("wino_at", output_kernels(cout, m))]
    if b is not None:
        ct_in.append(g.add_const("wino_bias", b.astype(np.float32)))
    shape = g.shapes.get(x)
    exact = shape is not None and len(shape) == 4 and all(d is not None and d > 0 and d % m == 0 for d in shape[2:])
    full = y if exact else n(f"wino{m}_full")
    nodes.append(helper.make_node("ConvTranspose", ct_in, [full], group=cout, kernel_shape=[m, m], strides=[m, m]))
    if not exact:  # crop the last partial tile: sizes not known to be multiples of m
        s_x = n(f"wino{m}_xhw")
        nodes += [helper.make_node("Shape", [x], [s_x], start=2, end=4),
                  helper.make_node("Slice", [full, g.add_const("wino_zero", np.zeros(2, np.int64)), s_x,
                                             g.add_const("wino_axes", np.array([2, 3], np.int64))], [y])]
    g.replace([node], nodes)


def winograd_rewrite(model: onnx.ModelProto, m: int = 2, *, min_channels: int = MIN_CHANNELS) -> RewriteResult:
    """Rewrite every eligible 3x3 convolution of a copy of ``model`` into F(m x m, 3x3) form."""
    if m not in MATRICES:
        raise ExportError(f"Winograd tile must be one of {list(MATRICES)}, got {m}")
    g = _Graph(model)
    applied: list[str] = []
    for node in list(g.nodes):
        found = _eligible(g, node, min_channels)
        if found is None:
            continue
        w, b = found
        _rewrite_conv(g, node, w, b, m)
        applied.append(f"Conv {node.name or node.output[0]} ({w.shape[1]}->{w.shape[0]} ch, 3x3) -> Winograd "
                       f"F({m}x{m},3x3), {multiplication_saving(m):.2f}x fewer multiplications")
    model_out = g.finish()
    if model_out.opset_import and all(o.version < 13 for o in model_out.opset_import if o.domain in ("", "ai.onnx")):
        raise ExportError("the Winograd rewrite needs ONNX opset >= 13 (Shape start/end needs 15)")
    return RewriteResult(model_out, applied)
