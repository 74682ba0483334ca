"""How much a parity check runs, sized to the model, and which failures are only warnings.

The same batch sizes for every model do not work: ``1, 7, 64, 257`` takes a second for this
project's digit VAEs and hours for a Stable Diffusion VAE on a CPU. The batch sizes are
chosen from the model's cost (FLOPs per example, counted on the exported graphs) and a time
budget: the defaults that fit, always at least batch 1 and one odd batch above 1 (which
exercises the dynamic batch axis).

Constant inputs (an all-zero image, z = +-4 sigma everywhere) put every GroupNorm of a deep
VAE on its zero-variance point, where eager itself is ill-conditioned: the last float32 bit
of the variance decides the output, so two correct implementations differ by ~1e-4. When
such a case fails while every real-data case passes, it is reported as a warning with its
error, not a failure; ``strict_edges`` keeps it a failure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.runtime.backends import Backend

DEFAULT_BATCH_SIZES = (1, 7, 64, 257)
#: Wall-clock seconds the parity cases may take, per backend compared (estimated).
DEFAULT_TIME_BUDGET_S = 20.0
#: Conservative fp32 throughput assumed for the estimate: eager torch and onnxruntime on a
#: small shared CPU reach 30-100 GFLOP/s on convolutions; underestimating keeps us in budget.
ASSUMED_GFLOPS = 25.0
#: Edge inputs that are constant over each example (see the module docstring).
KNIFE_EDGE_INPUTS = ("zeros", "ones", "+4sigma", "-4sigma")
#: Edge and reconstruction cases: 5 edge cases (2 encoder, 3 decoder) of ``edge_batch`` and a
#: reconstruction (encoder + decoder) of ``recon_n``; full size for cheap models, minimal for
#: costly ones.
FULL_EDGES, SMALL_EDGES = (4, 64), (1, 2)


@dataclass(frozen=True)
class CasePlan:
    """What a parity check runs (see :func:`vae_deploy.checks.parity.make_cases`)."""

    batch_sizes: tuple[int, ...]
    edge_batch: int = FULL_EDGES[0]
    recon_n: int = FULL_EDGES[1]
    # One decoder case at a size users decode (e.g. a 64x64 SD latent), when the budget allows.
    user_latent: tuple[int, ...] = ()

    def examples(self) -> int:
        """Examples each side runs through encoder + decoder (an upper bound)."""
        return sum(self.batch_sizes) + 5 * self.edge_batch + self.recon_n

    def as_kwargs(self) -> dict[str, Any]:
        return {"batch_sizes": self.batch_sizes, "edge_batch": self.edge_batch, "recon_n": self.recon_n,
                "user_latent": self.user_latent}


def graph_flops(folder: str | Path, input_shape: Sequence[int], latent_shape: Sequence[int]) -> float | None:
    """FLOPs per example, encoder plus decoder, at the given (example) shapes; None when the
    graphs cannot be counted (the plan then keeps the full-size cases)."""
    from vae_deploy.checks.flops import onnx_flops  # the same counter the benchmarks report

    folder = Path(folder)
    try:
        enc = onnx_flops(folder / "encoder.onnx", input_shape)
        dec = onnx_flops(folder / "decoder.onnx", latent_shape)
    except Exception:
        return None
    return None if enc is None or dec is None else enc + dec


def plan_cases(flops_per_example: float | None, *, budget_s: float = DEFAULT_TIME_BUDGET_S,
               gflops: float = ASSUMED_GFLOPS, candidates: Sequence[int] = DEFAULT_BATCH_SIZES) -> CasePlan:
    """Cases that fit ``budget_s`` seconds per backend at ``flops_per_example`` (encoder +
    decoder) and ``gflops``: each example runs on the reference and on the candidate.

    The edge cases keep their full size when that takes at most half the budget, else one
    example each; the batch sizes are then the largest prefix of ``candidates`` that fits,
    never less than batch 1 and one odd batch above 1 (3 when 7 does not fit). ``None``
    (unknown cost): everything at full size."""
    if flops_per_example is None or flops_per_example <= 0:
        return CasePlan(tuple(candidates))
    affordable = budget_s * gflops * 1e9 / (2 * flops_per_example)  # examples per side
    edge_batch, recon_n = FULL_EDGES if 5 * FULL_EDGES[0] + FULL_EDGES[1] <= affordable / 2 else SMALL_EDGES
    chosen: list[int] = []
    used = 5 * edge_batch + recon_n
    for bs in candidates:
        if chosen and used + bs > affordable:
            break
        chosen.append(bs)
        used += bs
    if len(chosen) < 2:
        chosen = [min(candidates), 3]
    return CasePlan(tuple(chosen), edge_batch, recon_n)


def batch_sizes_for(flops_per_example: float | None, **kwargs: Any) -> tuple[int, ...]:
    """The batch sizes of :func:`plan_cases`."""
    return plan_cases(flops_per_example, **kwargs).batch_sizes


def estimated_seconds(flops_per_example: float | None, plan: CasePlan, gflops: float = ASSUMED_GFLOPS) -> float | None:
    """The estimate ``plan_cases`` budgets with, per backend compared."""
    if not flops_per_example:
        return None
    return 2 * flops_per_example * plan.examples() / (gflops * 1e9)


def has_normalisation(module: Any) -> bool:
    """Whether the torch module normalises over groups/channels (GroupNorm and kin): the
    models whose constant-input cases sit on a knife-edge."""
    from torch import nn

    kinds = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    return any(isinstance(m, kinds) for m in module.modules())


def demote_knife_edges(report: dict[str, Any]) -> list[str]:
    """Turn failing constant-input cases into warnings when every other case passed.

    Edits ``report`` in place: each such case gets ``"warning": True`` (its numbers and
    ``passed: False`` stay as measured), the summary no longer counts it as a failure, and
    ``summary["warnings"]`` names it. Returns one line per warning."""
    cases = report.get("cases", [])
    edges = [c for c in cases if not c.get("passed") and c.get("input") in KNIFE_EDGE_INPUTS and "error" not in c]
    others_pass = all(c.get("passed") for c in cases if c not in edges)
    elbo = report.get("elbo")
    if not edges or not others_pass or (elbo is not None and not elbo.get("passed")):
        return []
    lines = []
    for c in edges:
        c["warning"] = True
        worst = max(c["outputs"].values(), key=lambda s: s.get("max_abs", 0.0))
        need = worst.get("min_atol_to_pass")
        lines.append(f"{report['candidate']}: {c['name']}: max abs error {worst.get('max_abs', math.nan):.2e} "
                     f"(atol {report['tolerance']['atol']:g}; passes at atol {need:.2e}): a constant input on "
                     "GroupNorm's zero-variance knife-edge; every real-data case passes")
    s = report["summary"]
    names = {c["name"] for c in edges}
    s["failed"] = [f for f in s["failed"] if f not in names]
    s["n_failed"] = len(s["failed"])
    s["passed"] = not s["failed"]
    s["warnings"] = sorted(names)
    return lines


class MemoBackend(Backend):
    """A reference backend that remembers its outputs: verify compares several candidates
    against one eager model on the same seeded inputs, and eager is the slowest of all."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.spec, max_batch=inner.max_batch, check_finite=inner.check_finite)
        self.inner = inner
        self.name = inner.name
        self._memo: dict[tuple[str, tuple[int, ...], bytes], Any] = {}

    def _key(self, op: str, a: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
        import hashlib

        return op, tuple(a.shape), hashlib.sha1(np.ascontiguousarray(a).view(np.uint8)).digest()

    def _cached(self, op: str, a: np.ndarray, fn: Any) -> Any:
        key = self._key(op, a)
        if key not in self._memo:
            self._memo[key] = fn(a)
        return self._memo[key]

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._cached("encode", x, self.inner._encode)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self._cached("decode", z, self.inner._decode)


#: The latent side users decode at: 64 (a 512 px image for 8x VAEs such as Stable Diffusion's).
USER_LATENT_SIDE = 64


def user_size_latent(latent_shape: Sequence[int], example_latent: Sequence[int]) -> tuple[int, ...] | None:
    """The latent a user decodes when the export's example is smaller: ``(C, 64, 64)`` for a
    spatial latent ``(C, -1, -1)``; None when the latent is fixed or the example already that big."""
    if len(latent_shape) != 3 or not all(d < 0 for d in latent_shape[1:]) or len(example_latent) != 3:
        return None
    if min(example_latent[1:]) >= USER_LATENT_SIDE:
        return None
    return (int(example_latent[0]), USER_LATENT_SIDE, USER_LATENT_SIDE)


def add_user_size(plan: CasePlan, folder: str | Path, flops_per_example: float | None, latent: tuple[int, ...],
                  *, budget_s: float = DEFAULT_TIME_BUDGET_S, gflops: float = ASSUMED_GFLOPS) -> tuple[CasePlan, str]:
    """``plan`` with one decoder case at ``latent`` when its cost (decoder FLOPs counted at that
    size, run on both sides) fits what the budget has left; else ``plan`` as it was. The second
    value says which, and why (recorded in verify's ``sizing``)."""
    from dataclasses import replace

    from vae_deploy.checks.flops import onnx_flops

    try:
        dec = onnx_flops(Path(folder) / "decoder.onnx", latent)
    except Exception as e:
        return plan, f"skipped: the decoder's cost at {list(latent)} could not be counted ({type(e).__name__})"
    used = estimated_seconds(flops_per_example, plan) or 0.0
    cost = 2 * float(dec or 0) / (gflops * 1e9)
    if dec is None or used + cost > budget_s:
        return plan, (f"skipped: a decode at latent {list(latent)} is estimated at {cost:.0f} s on top of "
                      f"{used:.0f} s, over the {budget_s:g} s budget (raise --time-budget)")
    return replace(plan, user_latent=tuple(latent)), f"decoder at latent {list(latent)}, estimated {cost:.1f} s"
