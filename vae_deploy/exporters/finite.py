"""Refuse a model whose weights hold NaN or Inf before exporting or verifying it.

Training that diverges (``--lr 1e30``) can leave such a checkpoint; every output of its graphs
is NaN, so a parity check would "agree" (NaN in the same places on both sides) and an
export would ship a model that only produces NaN. One clear error instead.
"""

from __future__ import annotations

from typing import Any

import torch


def non_finite_tensors(*modules: Any) -> list[str]:
    """Names of the parameters and buffers holding NaN or Inf, across ``modules`` (deduplicated)."""
    seen: set[int] = set()
    bad: list[str] = []
    for m in modules:
        if not isinstance(m, torch.nn.Module):
            continue
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if id(t) in seen or not t.is_floating_point():
                continue
            seen.add(id(t))
            if not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def require_finite(exp: Any, what: str = "model", error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the non-finite tensors of an Exportable's encoder and decoder."""
    bad = non_finite_tensors(exp.encoder, exp.decoder)
    if bad:
        raise error(f"the {what}'s weights hold NaN or Inf ({len(bad)} tensor(s), e.g. {bad[:3]}): training "
                    "diverged? Retrain (a lower --lr); nothing was exported or compared")
