"""Exact graph rewrites that make onnxruntime's CPU provider faster (the ``fp32-fast`` variant).

Two rewrites, both exact up to float32 summation order (checked at export against eager
at the fp32 tolerance, 1e-5):

1. **Affine folding.** ``Gemm -> Reshape -> ConvTranspose`` with nothing non-linear in
   between is one affine map of the Gemm's input; it becomes one ``Gemm -> Reshape``. The
   folded weight is computed in float64 by torch's own ``conv_transpose2d``, so the
   transposed-convolution semantics are torch's, not ours. Applied only when the folded
   Gemm does no more multiply-adds than the two layers it replaces.

2. **Sub-pixel decomposition of strided transposed convolutions.** A ConvTranspose with
   stride ``s`` and kernel ``k = s * J`` is ``s*s`` ordinary ``J x J`` convolutions, one per
   output phase, whose outputs interleave into the result. onnxruntime's ConvTranspose is a
   GEMM followed by a scatter-add (col2im); its Conv runs in the blocked NCHWc layout at
   ``ORT_ENABLE_ALL``, which is much faster. Unary element-wise ops that follow (ReLU, ...)
   commute with the interleave, so they move onto each phase, where onnxruntime fuses them
   into the convolution. When the (activated) result feeds another ConvTranspose that is not
   worth decomposing itself (few output channels, e.g. the image layer), the interleave is
   not materialised at all: the phases are concatenated on the channel axis and the second
   ConvTranspose is rewritten to read that layout directly (stride ``s1*s2``, kernel
   ``k2 + s2*(s1-1)``, weights placed per phase). Otherwise the phases are interleaved with
   Unsqueeze/Concat/Reshape (copies only; DepthToSpace and Transpose forms measured slower).

Decomposition only pays for layers with enough channels: measured on this project's 2-core
AVX2 machine (one thread, CPU time, batch 512), 64->32 channels at 7x7 ran 1.15-1.6x faster
decomposed, 32->16 broke even, 32->8 was 0.9x and 32->1 or 32->3 were 2-4x *slower*
(NCHWc pads the output channels to blocks of 8). Hence ``min_out_channels`` and
``min_channel_product``.

Hand-written over ``onnx.helper`` rather than a rewriter framework: the patterns are
straight chains, and what matters (the weight algebra) has to be written either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vae_deploy.errors import ExportError

# Unary element-wise ops that commute with any permutation of elements: they can move
# across the phase interleave. (Extra inputs, e.g. Clip's bounds, must be constants.)
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Gelu", "Mish", "Clip", "Identity",
})
MIN_OUT_CHANNELS = 16
MIN_CHANNEL_PRODUCT = 2048
MAX_FOLDED_WEIGHTS = 1 << 24  # 64 MiB of float32: beyond this a fold bloats the file


@dataclass
class RewriteResult:
    model: onnx.ModelProto
    applied: list[str] = field(default_factory=list)  # one line per rewrite, for the manifest

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def optimize_for_cpu(
    model: onnx.ModelProto,
    *,
    fold: bool = True,
    decompose: bool = True,
    min_out_channels: int = MIN_OUT_CHANNELS,
    min_channel_product: int = MIN_CHANNEL_PRODUCT,
    chain: bool = True,
) -> RewriteResult:
    """Apply the exact rewrites to a copy of ``model``; the input is not modified.

    ``chain=False`` always materialises the interleave (for measuring the alternative)."""
    g = _Graph(model)
    applied: list[str] = []
    if fold:
        applied += fold_affine_conv_transpose(g)
    if decompose:
        applied += decompose_conv_transpose(g, min_out_channels=min_out_channels,
                                            min_channel_product=min_channel_product, chain=chain)
    return RewriteResult(g.finish(), applied)


# --- graph helper ---------------------------------------------------------------------------
class _Graph:
    """A mutable view of a model's main graph: constants, producers, consumers, shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        try:
            m = onnx.shape_inference.infer_shapes(m)
        except Exception as e:  # a graph onnx cannot type is not one we rewrite
            raise ExportError(f"shape inference failed before the CPU rewrite: {e}") from e
        self.model = m
        self.nodes: list[onnx.NodeProto] = list(m.graph.node)
        self.inits: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        self.new_inits: dict[str, np.ndarray] = {}
        self.outputs = {o.name for o in m.graph.output}
        self.shapes: dict[str, list[int | None]] = {}
        for v in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
            t = v.type.tensor_type
            if t.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        self._names = {n for node in self.nodes for n in [*node.input, *node.output]} | set(self.inits)
        self._counter = 0

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self.inits[name]
        if name in self.new_inits:
            return self.new_inits[name]
        p = self.producer(name)
        if p is not None and p.op_type == "Constant" and p.attribute and p.attribute[0].name == "value":
            return numpy_helper.to_array(p.attribute[0].t)
        return None

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if name in n.output), None)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if name in n.input]

    def single_use(self, name: str) -> onnx.NodeProto | None:
        """The only consumer of ``name``, if it has exactly one and is not a graph output."""
        users = self.consumers(name)
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def fresh(self, stem: str) -> str:
        while True:
            self._counter += 1
            name = f"{stem}_{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def add_const(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.new_inits[name] = value
        return name

    def replace(self, old: Iterable[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
        """Drop ``old`` nodes and put ``new`` where the first of them was (its inputs are
        produced earlier, its outputs consumed later, so topological order holds)."""
        old_ids = {id(n) for n in old}
        at = min(i for i, n in enumerate(self.nodes) if id(n) in old_ids)
        kept = [n for n in self.nodes if id(n) not in old_ids]
        self.nodes = kept[:at] + new + kept[at:]

    def finish(self) -> onnx.ModelProto:
        m = self.model
        used = {i for n in self.nodes for i in n.input}
        inits = [numpy_helper.from_array(v, k) for k, v in {**self.inits, **self.new_inits}.items() if k in used]
        del m.graph.node[:]
        m.graph.node.extend(self.nodes)
        del m.graph.initializer[:]
        m.graph.initializer.extend(inits)
        del m.graph.value_info[:]  # stale after the rewrite; consumers re-infer
        return m


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass(frozen=True)
class _ConvT:
    """A plain 2-D ConvTranspose: constant weights, no groups, dilations, output padding."""

    node: onnx.NodeProto
    w: np.ndarray  # [Cin, Cout, kh, kw]
    b: np.ndarray | None
    strides: tuple[int, int]
    pads: tuple[int, int]  # symmetric (top=bottom, left=right)

    @property
    def cin(self) -> int:
        return int(self.w.shape[0])

    @property
    def cout(self) -> int:
        return int(self.w.shape[1])


def _plain_conv_transpose(g: _Graph, node: onnx.NodeProto) -> _ConvT | None:
    if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx"):
        return None
    a = _attrs(node)
    w = g.const(node.input[1])
    b = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if w is None or w.ndim != 4 or (len(node.input) > 2 and node.input[2] and b is None):
        return None
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if (a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1]))
            or any(a.get("output_padding", [0, 0])) or "output_shape" in a
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]):
        return None
    ks = a.get("kernel_shape", list(w.shape[2:]))
    if list(ks) != list(w.shape[2:]):
        return None
    strides = tuple(a.get("strides", [1, 1]))
    return _ConvT(node, w.astype(np.float32), None if b is None else b.astype(np.float32),
                  (int(strides[0]), int(strides[1])), (int(pads[0]), int(pads[1])))


# --- 1. affine folding -----------------------------------------------------------------------
def fold_affine_conv_transpose(g: _Graph) -> list[str]:
    """Fold every ``Gemm -> Reshape -> ConvTranspose`` (no non-linearity) into one Gemm."""
    applied = []
    changed = True
    while changed:
        changed = False
        for gemm in list(g.nodes):
            note = _try_fold(g, gemm)
            if note:
                applied.append(note)
                changed = True
                break
    return applied


def _gemm_affine(g: _Graph, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(W [in, out], c [out]) with Gemm(x) = x @ W + c, or None if not a constant affine map."""
    if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
        return None
    a = _attrs(node)
    if a.get("transA", 0):
        return None
    b = g.const(node.input[1])
    if b is None or b.ndim != 2:
        return None
    w = (b.T if a.get("transB", 0) else b).astype(np.float64) * float(a.get("alpha", 1.0))
    c = np.zeros(w.shape[1])
    if len(node.input) > 2 and node.input[2]:
        cc = g.const(node.input[2])
        if cc is None:
            return None
        c = np.broadcast_to(cc.astype(np.float64) * float(a.get("beta", 1.0)), (1, w.shape[1]))[0].copy()
    return w, c


def _try_fold(g: _Graph, gemm: onnx.NodeProto) -> str | None:
    import torch
    import torch.nn.functional as F

    aff = _gemm_affine(g, gemm)
    if aff is None:
        return None
    reshape = g.single_use(gemm.output[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    ct_node = g.single_use(reshape.output[0])
    ct = _plain_conv_transpose(g, ct_node) if ct_node is not None else None
    shape_in = g.shapes.get(reshape.output[0])
    if ct is None or shape_in is None or len(shape_in) != 4 or any(d is None for d in shape_in[1:]):
        return None
    w, c = aff
    n_in, m = w.shape
    cin, h, wd = shape_in[1], shape_in[2], shape_in[3]
    if cin * h * wd != m or cin != ct.cin:
        return None
    sh, sw = ct.strides
    ph, pw = ct.pads
    kh, kw = ct.w.shape[2:]
    h2, w2 = (h - 1) * sh - 2 * ph + kh, (wd - 1) * sw - 2 * pw + kw
    m2 = ct.cout * h2 * w2
    before = n_in * m + ct.cin * ct.cout * kh * kw * h * wd
    if n_in * m2 > before or n_in * m2 > MAX_FOLDED_WEIGHTS:
        return None
    wt = torch.from_numpy(ct.w.astype(np.float64))
    with torch.no_grad():
        w_new = F.conv_transpose2d(torch.from_numpy(np.ascontiguousarray(w).reshape(n_in, cin, h, wd)), wt,
                                   stride=(sh, sw), padding=(ph, pw))
        bias = None if ct.b is None else torch.from_numpy(ct.b.astype(np.float64))
        c_new = F.conv_transpose2d(torch.from_numpy(c.reshape(1, cin, h, wd).copy()), wt, bias=bias,
                                   stride=(sh, sw), padding=(ph, pw))
    w_new = w_new.reshape(n_in, m2).numpy()
    c_new = c_new.reshape(m2).numpy()
    wn = g.add_const("folded_weight", np.ascontiguousarray(w_new.T, dtype=np.float32))
    cn = g.add_const("folded_bias", c_new.astype(np.float32))
    sn = g.add_const("folded_shape", np.array([-1, ct.cout, h2, w2], np.int64))
    flat = g.fresh("folded_gemm")
    new = [
        helper.make_node("Gemm", [gemm.input[0], wn, cn], [flat], name=flat, transB=1),
        helper.make_node("Reshape", [flat, sn], [ct.node.output[0]], name=g.fresh("folded_reshape")),
    ]
    g.replace([gemm, reshape, ct.node], new)
    g.shapes[ct.node.output[0]] = [None, ct.cout, h2, w2]
    return (f"folded {gemm.name or 'Gemm'} + {ct.node.name or 'ConvTranspose'} into one Gemm "
            f"({n_in}x{m2}; {before:,} -> {n_in * m2:,} multiply-adds per example)")


# --- 2. sub-pixel decomposition ---------------------------------------------------------------
@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a decomposable ConvTranspose: kernel k = s * taps."""

    k: int
    s: int
    p: int

    @property
    def taps(self) -> int:
        return self.k // self.s

    def phase(self, r: int) -> tuple[list[int], int, int]:
        """For output phase ``r``: kernel indices (in correlation order) and (pad_begin, pad_end).

        Output ``o = s*m + r`` collects input ``i`` through kernel tap ``t = o + p - s*i``;
        the taps with ``t = (r + p) mod s + s*j`` read ``i = m + (r + p)//s - j``.
        """
        a, c = (r + self.p) % self.s, (r + self.p) // self.s
        j = self.taps
        begin = j - 1 - c
        end = (self.k - 2 * self.p) // self.s + j - 2 - begin
        return [a + self.s * (j - 1 - u) for u in range(j)], begin, end

    def decomposable(self) -> bool:
        if self.s < 2 or self.k % self.s or (self.k - 2 * self.p) % self.s:
            return False
        return all(b >= 0 and e >= 0 for _, b, e in (self.phase(r) for r in range(self.s)))


def _axes(ct: _ConvT) -> tuple[_Axis, _Axis]:
    return (_Axis(int(ct.w.shape[2]), ct.strides[0], ct.pads[0]),
            _Axis(int(ct.w.shape[3]), ct.strides[1], ct.pads[1]))


def phase_weights(ct: _ConvT) -> dict[tuple[int, int], tuple[np.ndarray, list[int]]]:
    """Per output phase (r, q): Conv weights ``[Cout, Cin, Jh, Jw]`` and ONNX pads."""
    ah, aw = _axes(ct)
    out = {}
    for r in range(ah.s):
        rows, rb, re = ah.phase(r)
        for q in range(aw.s):
            cols, cb, ce = aw.phase(q)
            k = ct.w[:, :, rows][:, :, :, cols].transpose(1, 0, 2, 3)
            out[(r, q)] = (np.ascontiguousarray(k), [rb, cb, re, ce])
    return out


def chained_weights(second: _ConvT, s1: tuple[int, int]) -> np.ndarray:
    """Weights of ``second`` rewritten to read the phase-concatenated (not interleaved) input.

    With ``y[s1*a + i] = P_i[a]`` (per axis), ``ConvT_{s2,k2,p2}(y)`` equals a ConvTranspose
    of the channel-stacked phases with stride ``s1*s2``, kernel ``k2 + s2*(s1 - 1)`` and the
    same padding, whose weight for phase ``i`` is ``w2`` shifted by ``s2*i``.
    """
    c, co, kh, kw = second.w.shape
    (s1h, s1w), (s2h, s2w) = s1, second.strides
    out = np.zeros((s1h, s1w, c, co, kh + s2h * (s1h - 1), kw + s2w * (s1w - 1)), np.float32)
    for i in range(s1h):
        for j in range(s1w):
            out[i, j, :, :, s2h * i:s2h * i + kh, s2w * j:s2w * j + kw] = second.w
    return out.reshape(s1h * s1w * c, co, out.shape[-2], out.shape[-1])


def _worth_decomposing(ct: _ConvT, min_out: int, min_prod: int) -> bool:
    return ct.cout >= min_out and ct.cin * ct.cout >= min_prod and all(a.decomposable() for a in _axes(ct))


def _elementwise_run(g: _Graph, name: str) -> tuple[list[onnx.NodeProto], str]:
    """Single-use unary element-wise ops after ``name``: (ops, the last one's output)."""
    run: list[onnx.NodeProto] = []
    while True:
        nxt = g.single_use(name)
        if (nxt is None or nxt.op_type not in ELEMENTWISE or nxt.domain not in ("", "ai.onnx")
                or nxt.input[0] != name or any(g.const(i) is None for i in nxt.input[1:] if i)):
            return run, name
        run.append(nxt)
        name = nxt.output[0]


def decompose_conv_transpose(
    g: _Graph, *, min_out_channels: int = MIN_OUT_CHANNELS, min_channel_product: int = MIN_CHANNEL_PRODUCT,
    chain: bool = True,
) -> list[str]:
    applied = []
    for node in list(g.nodes):
        if not any(node is n for n in g.nodes):
            continue  # absorbed by an earlier rewrite
        ct = _plain_conv_transpose(g, node)
        if ct is None or not _worth_decomposing(ct, min_out_channels, min_channel_product):
            continue
        note = _decompose(g, ct, min_out_channels, min_channel_product, chain)
        if note:
            applied.append(note)
    return applied


def _decompose(g: _Graph, ct: _ConvT, min_out: int, min_prod: int, allow_chain: bool) -> str | None:
    acts, last = _elementwise_run(g, ct.node.output[0])
    nxt_node = g.single_use(last)
    nxt = _plain_conv_transpose(g, nxt_node) if nxt_node is not None else None
    chain = (allow_chain and nxt is not None and nxt.cin == ct.cout
             and not _worth_decomposing(nxt, min_out, min_prod))
    shape = g.shapes.get(ct.node.output[0])
    if not chain and (shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None):
        return None  # the interleave's Reshape needs the static output size: leave this layer alone
    x = ct.node.input[0]
    bias = g.add_const("phase_bias", ct.b) if ct.b is not None else ""
    new: list[onnx.NodeProto] = []
    phases: dict[tuple[int, int], str] = {}
    for (r, q), (k, pads) in phase_weights(ct).items():
        wn = g.add_const(f"phase{r}{q}_weight", k)
        out = g.fresh(f"phase{r}{q}")
        new.append(helper.make_node("Conv", [x, wn, bias] if bias else [x, wn], [out], name=out,
                                    kernel_shape=list(k.shape[2:]), pads=pads))
        for act in acts:
            a_out = g.fresh(f"phase{r}{q}_{act.op_type.lower()}")
            new.append(helper.make_node(act.op_type, [out, *act.input[1:]], [a_out], name=a_out,
                                        domain=act.domain, **_attrs(act)))
            out = a_out
        phases[(r, q)] = out
    sh, sw = ct.strides
    what = f"{ct.node.name or 'ConvTranspose'} ({ct.cin}->{ct.cout}, stride {sh}x{sw})"
    if chain:
        assert nxt is not None
        stacked = g.fresh("phases")
        new.append(helper.make_node("Concat", [phases[(r, q)] for r in range(sh) for q in range(sw)], [stacked],
                                    name=stacked, axis=1))
        w2 = chained_weights(nxt, ct.strides)
        wn = g.add_const("chained_weight", w2)
        ins = [stacked, wn] + ([nxt.node.input[2]] if len(nxt.node.input) > 2 and nxt.node.input[2] else [])
        p2h, p2w = nxt.pads
        new.append(helper.make_node(
            "ConvTranspose", ins, [nxt.node.output[0]], name=g.fresh("chained_conv_transpose"),
            kernel_shape=list(w2.shape[2:]), strides=[sh * nxt.strides[0], sw * nxt.strides[1]],
            pads=[p2h, p2w, p2h, p2w]))
        g.replace([ct.node, *acts, nxt.node], new)
        return (f"decomposed {what} into {sh * sw} phase convolutions; the next "
                f"{nxt.node.name or 'ConvTranspose'} ({nxt.cin}->{nxt.cout}) reads the phases directly")
    assert shape is not None
    ax_last, ax3 = g.add_const("axis_last", np.array([-1], np.int64)), g.add_const("axis3", np.array([3], np.int64))
    rows = []
    for r in range(sh):
        cols = []
        for q in range(sw):
            u = g.fresh(f"phase{r}{q}_unsq")
            new.append(helper.make_node("Unsqueeze", [phases[(r, q)], ax_last], [u], name=u))
            cols.append(u)
        row, row_u = g.fresh(f"phase_row{r}"), g.fresh(f"phase_row{r}_unsq")
        new.append(helper.make_node("Concat", cols, [row], name=row, axis=-1))
        new.append(helper.make_node("Unsqueeze", [row, ax3], [row_u], name=row_u))
        rows.append(row_u)
    grid = g.fresh("phase_grid")
    new.append(helper.make_node("Concat", rows, [grid], name=grid, axis=3))  # [N, C, Mh, sh, Mw, sw]
    sn = g.add_const("interleaved_shape", np.array([-1, ct.cout, shape[2], shape[3]], np.int64))
    new.append(helper.make_node("Reshape", [grid, sn], [last], name=g.fresh("interleave")))
    g.replace([ct.node, *acts], new)
    return f"decomposed {what} into {sh * sw} phase convolutions, interleaved by Concat/Reshape"
