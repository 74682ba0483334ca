"""Make onnxscript's "no-op" rewrites exact while torch's ONNX exporter optimises a graph.

torch.onnx (dynamo) runs onnxscript's default rewrite rules, which replace ``x + 0``,
``x - 0``, ``x * 1`` and ``x / 1`` by ``x``. Their constant patterns match with
``math.isclose(c, 0, abs_tol=1e-8)`` (``rel_tol=1e-5`` for the ones), so ``x + 1e-15`` is
removed too (onnxscript 0.7.2). That is not harmless: DC-AE's ReLU linear attention
(diffusers' ``SanaMultiscaleLinearAttention``) divides by ``sum + eps`` with ``eps = 1e-15``;
without the eps, a row whose keys all pass ReLU as 0 gives ``0 / 0 = NaN`` in the ONNX graph
where eager gives 0. Found by running the graph with every intermediate as an output and
comparing with eager: the first non-finite value is that ``Div``.

Inside :func:`exact_noop_rewrites` those patterns match only the exact constant, and the
tolerances are put back afterwards. If onnxscript's internals change, this does nothing and
the export-time parity check (NaN/Inf counted per case) still refuses a graph that diverges.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _constant_patterns() -> list[Any]:
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter import _pattern_ir
    except Exception:  # pragma: no cover - onnxscript is a dependency of torch.onnx's exporter
        return []
    found = []
    for entry in getattr(rewriter, "_DEFAULT_REWRITE_RULES", ()):
        for rule in getattr(entry, "rules", [entry]):
            pattern = getattr(rule, "_target_pattern", None)
            for node in getattr(pattern, "_nodes", ()):
                found += [i for i in getattr(node, "inputs", ()) if isinstance(i, _pattern_ir.Constant)
                          and hasattr(i, "_abs_tol") and hasattr(i, "_rel_tol")]
    return found


@contextmanager
def exact_noop_rewrites() -> Iterator[None]:
    """Constant patterns of the default rewrite rules compare exactly while the block runs."""
    constants = _constant_patterns()
    saved = [(c._rel_tol, c._abs_tol) for c in constants]
    for c in constants:
        c._rel_tol, c._abs_tol = 0.0, 0.0
    try:
        yield
    finally:
        for c, (rel, abs_) in zip(constants, saved):
            c._rel_tol, c._abs_tol = rel, abs_
