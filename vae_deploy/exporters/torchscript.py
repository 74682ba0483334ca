"""TorchScript exporter: ``torch.jit.trace`` of each half, checked at a second size.

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
    """Trace ``module``, freeze and save it; the frozen trace is re-checked against eager on
    ``other`` (by default the example at another, odd batch size; the caller also varies any
    dynamic spatial axis) so that a size-dependent graph (a hard-coded reshape, say) is caught
    here. We compare outputs ourselves instead of ``trace(check_inputs=...)``, which traces a
    second time: for a diffusers VAE that doubled the cost (~3 s CPU per half) and checked the
    unfrozen trace rather than the file written."""
    if other is None:
        other = torch.cat([example, example, example[:1]], 0)
    module = module.eval()
    with quiet_torch() as log, torch.no_grad():
        try:
            traced = torch.jit.trace(module, (example,), check_trace=False)
            traced = torch.jit.freeze(traced) if hasattr(torch.jit, "freeze") else traced
            problem = _disagreement(traced(other), module(other))
            if problem:
                raise ExportError(f"the trace at input {list(example.shape)} does not generalise to input "
                                  f"{list(other.shape)}: {problem} (does the model hard-code a size?)")
            torch.jit.save(traced, str(path))
        except Exception as e:
            tail = "\n".join(log.getvalue().strip().splitlines()[-5:])
            raise ExportError(f"TorchScript export of the {role} failed: {type(e).__name__}: {e}"
                              + (f"\n{tail}" if tail else "")) from e


def _disagreement(got: object, want: object, tol: float = 1e-4) -> str:
    """'' when the traced outputs match eager's (allclose, atol = rtol = ``tol``), else why not.

    This check is structural (a size frozen into the trace gives wrong shapes or wrong
    numbers, not rounding), so it is looser than parity, which judges precision afterwards."""
    got_t = got if isinstance(got, (tuple, list)) else (got,)
    want_t = want if isinstance(want, (tuple, list)) else (want,)
    if len(got_t) != len(want_t):
        return f"{len(got_t)} outputs, eager has {len(want_t)}"
    for i, (g, w) in enumerate(zip(got_t, want_t)):
        if g.shape != w.shape:
            return f"output {i} has shape {list(g.shape)}, eager {list(w.shape)}"
        if not torch.allclose(g, w, rtol=tol, atol=tol, equal_nan=True):
            return f"output {i} differs from eager by up to {float((g - w).abs().max()):.3g}"
    return ""
