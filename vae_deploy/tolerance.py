"""One tolerance policy: what "agrees" means for an export, for verify, tune's gate and the bench.

verify, ``tune``'s accuracy gate, the export-time checks and the bench's targets all ask
:func:`tolerance_for`, so a variant that verify passes is a candidate for ``auto`` and a variant
``auto`` may pick is one verify passes. A low module: imports nothing of the package.

fp32: both sides compute the same maths in float32; differences come only from kernel order, a
few ulps. fp32-fast is the exactly rewritten graph (sub-pixel convolutions, folded affine maps):
the same bound, because the rewrite must be exact. fp16 variants carry ~3 decimal digits
(outputs in [0, 1] differ by up to ~1e-3). int8 variants quantise weights to 7 bits and
activations to 8: on trained models single outputs move by up to ~0.05-0.09 where a sigmoid is
steep (mean ~3e-3), so the element-wise bound only catches broken quantisation (saturated kernels
or clipped ranges gave 0.2-0.6); the quality gate is the test-set ELBO, held to 0.5%
(export/README.md, "Precision variants"). bf16 (OpenVINO's inference-precision hint on the fp32
graph) keeps 8 significant bits: each op rounds by up to 2**-9 (0.2%). Small decoders moved by at
most 9e-4 (seeded ref-conv28/mlp28/conv64, outputs in [0, 1]); a deep one accumulates it: the SD
1.x-architecture AutoencoderKL decoder (30+ convolutions, GroupNorm) moved by up to 0.079 on
outputs spanning 5.8 (1.4% of the range; torch autocast bf16: 0.071). So the element bound is
int8's order (catches a broken conversion, off at the output's scale) and the quality gate is the
same 0.5% ELBO as int8 and fp16.

Deep diffusers VAEs (GroupNorm, attention, many convolutions): on real inputs ONNX Runtime stays
within 1e-5 of eager, but constant inputs sit near GroupNorm's zero-variance point, where eager
itself is ill-conditioned (3e-5 at 32-48 px, 1e-4 at 64 px; OpenVINO f32 2e-5 on the SD decoder).
Their fp32 bound is atol 1e-4 (export/README.md, "Tolerance"), for every consumer alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    # Relative agreement required of the test-set negative ELBO computed through each backend.
    elbo_rtol: float = 1e-4


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-5, elbo_rtol=1e-4),
    "fp32-fast": Tolerance(atol=1e-5, rtol=1e-5, elbo_rtol=1e-4),
    "fp16": Tolerance(atol=5e-3, rtol=1e-2, elbo_rtol=5e-3),
    "int8": Tolerance(atol=1e-1, rtol=1e-1, elbo_rtol=5e-3),
    "bf16": Tolerance(atol=1e-1, rtol=5e-2, elbo_rtol=5e-3),
}

#: The fp32 bound of deep diffusers VAEs (see the module docstring).
DEEP_FP32_ATOL = 1e-4
EXACT_PRECISIONS = ("fp32", "fp32-fast")


def is_deep_family(family: str | None) -> bool:
    """diffusers' autoencoders (``diffusers.*`` families): GroupNorm-deep graphs."""
    return bool(family) and str(family).startswith("diffusers.")


def tolerance_for(precision: str, family: str | None = None) -> Tolerance:
    """The tolerance an export of ``family`` is held to at ``precision`` by every check."""
    tol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
    if precision in EXACT_PRECISIONS and is_deep_family(family):
        tol = replace(tol, atol=max(tol.atol, DEEP_FP32_ATOL))
    return tol
