"""TorchScript exporter: ``torch.jit.trace`` of each half, checked at a second batch size.

TorchScript is in maintenance mode in current torch and prints deprecation warnings when
tracing; they concern the tracing API, not the saved files, which ``torch.jit.load`` and
libtorch keep loading. We silence them here (see README) instead of letting them reach the
user as noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vae_deploy.errors import ExportError
from vae_deploy.exporters._quiet import quiet_torch

TORCHSCRIPT_METHOD = "torch.jit.trace"


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, role: str,
                       other: torch.Tensor | None = None) -> None:
    """Trace ``module`` and save it; the trace is re-checked on ``other`` (by default the
    example at another, odd batch size; the caller also varies any dynamic spatial axis) so
    that a size-dependent graph (a hard-coded reshape, say) is caught here."""
    if other is None:
        other = torch.cat([example, example, example[:1]], 0)
    with quiet_torch() as log, torch.no_grad():
        try:
            traced = torch.jit.trace(module.eval(), (example,), check_inputs=[(other,)], check_tolerance=1e-5)
            traced = torch.jit.freeze(traced) if hasattr(torch.jit, "freeze") else traced
            torch.jit.save(traced, str(path))
        except Exception as e:
            tail = "\n".join(log.getvalue().strip().splitlines()[-5:])
            raise ExportError(f"TorchScript export of the {role} failed: {type(e).__name__}: {e}"
                              + (f"\n{tail}" if tail else "")) from e
