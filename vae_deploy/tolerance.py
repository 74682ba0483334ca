"""One tolerance policy: what "agrees" means for an export, for verify, tune's gate and the bench.

verify, ``tune``'s accuracy gate, the export-time checks and the bench's targets all ask
:func:`tolerance_for`, so a variant that verify passes is a candidate for ``auto`` and a variant
``auto`` may pick is one verify passes. A low module: imports nothing of the package (but
:mod:`vae_deploy.errors`, lazily).

The **budget** (:class:`Budget`, :func:`budget_accepts`) decides which gated variants ``auto``
may pick: see the section below and export/README.md, "Tolerance and budget".

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

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    # Relative agreement required of the test-set negative ELBO computed through each backend.
    elbo_rtol: float = 1e-4


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-5, elbo_rtol=1e-4),
    "fp32-fast": Tolerance(atol=1e-5, rtol=1e-5, elbo_rtol=1e-4),
    # Winograd F(4x4,3x3) is exact algebra in fp32 whose transforms round ~2x more than a direct
    # convolution (SD 1.x decoder: 4.6e-5 vs 2.3e-5 at 256 px): held to the fp32 bound of its family.
    "fp32-winograd": Tolerance(atol=1e-5, rtol=1e-5, elbo_rtol=1e-4),
    "fp16": Tolerance(atol=5e-3, rtol=1e-2, elbo_rtol=5e-3),
    "int8": Tolerance(atol=1e-1, rtol=1e-1, elbo_rtol=5e-3),
    "bf16": Tolerance(atol=1e-1, rtol=5e-2, elbo_rtol=5e-3),
}

#: The fp32 bound of deep diffusers VAEs (see the module docstring).
DEEP_FP32_ATOL = 1e-4
EXACT_PRECISIONS = ("fp32", "fp32-fast", "fp32-winograd")


def is_deep_family(family: str | None) -> bool:
    """diffusers' autoencoders (``diffusers.*`` families): GroupNorm-deep graphs."""
    return bool(family) and str(family).startswith("diffusers.")


def tolerance_for(precision: str, family: str | None = None) -> Tolerance:
    """The tolerance an export of ``family`` is held to at ``precision`` by every check."""
    tol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
    if precision in EXACT_PRECISIONS and is_deep_family(family):
        tol = replace(tol, atol=max(tol.atol, DEEP_FP32_ATOL))
    return tol


# --- the accuracy budget: which gated variants ``auto`` may pick -------------------------------
#
# Three budgets. ``fp32-only``: exact-class variants only. ``max-error E`` (the user's explicit
# budget): any variant whose max abs decoder error is <= E, int8 included. ``default``: exact-class
# variants, and a lossy variant (bf16, fp16, ...; never int8) only when its decoder error is <= 2%
# of the output range AND, for image decoders, the 8-bit image is within 1 level of fp32's on >= 99%
# of pixels. "Exact class": fp32, fp32-fast, or any variant whose measured error is within the
# family's fp32 tolerance (OpenVINO f32 on a deep diffusers decoder: 2e-5, inside 1e-4).

#: Default budget, lossy variants: max abs decoder error as a fraction of the output's range.
LOSSY_RANGE_FRACTION = 0.02
#: Default budget, image decoders: 8-bit levels a pixel may move, and the share that must stay within.
IMAGE_LEVELS = 1
IMAGE_PIXEL_FRACTION = 0.99
#: Precisions the default budget never accepts (only an explicit max_error does).
EXPLICIT_ONLY_PRECISIONS = ("int8",)


@dataclass(frozen=True)
class Budget:
    """What ``auto`` may trade for speed: ``kind`` is ``default``, ``fp32-only`` or ``max-error``."""

    kind: str = "default"
    max_error: float | None = None

    def describe(self) -> str:
        return f"max-error {self.max_error:g}" if self.kind == "max-error" else self.kind


def default_budget() -> Budget:
    return Budget()


def make_budget(max_error: float | None = None, fp32_only: bool = False) -> Budget:
    """The budget for the user's ``max_error`` / ``fp32_only`` (one of them at most), validated:
    ``max_error`` a finite number >= 0 (NaN would accept nothing and compare false everywhere)."""
    import math

    from vae_deploy.errors import ConfigError

    if max_error is not None:
        if fp32_only:
            raise ConfigError("give max_error or fp32_only, not both")
        ok = isinstance(max_error, (int, float)) and not isinstance(max_error, bool)
        if not ok or not math.isfinite(max_error) or max_error < 0:
            raise ConfigError(f"max_error must be a finite number >= 0, got {max_error!r}")
        return Budget("max-error", float(max_error))
    return Budget("fp32-only") if fp32_only else default_budget()


def is_image_output(shape: tuple[int, ...]) -> bool:
    """A per-example output ``[C, H, W]`` with C in {1, 3}: a picture, judged in 8-bit levels."""
    return len(shape) == 3 and shape[0] in (1, 3)


def to_8bit(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The conversion rule: x01 = clip((x - lo) / (hi - lo), 0, 1), round(x01 * 255)."""
    x01 = np.clip((np.asarray(x, dtype=np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.round(x01 * 255.0)


def measure_decoder(ref: np.ndarray, cand: np.ndarray, *, family: str | None = None,
                    output_range: tuple[float, ...] = ()) -> dict[str, Any]:
    """The figures :func:`budget_accepts` decides on, for decoder outputs ``[N, *shape]``:
    max abs error, whether it is within the family's fp32 tolerance, the output range used (the
    export's declared ``output_range``, else the reference's observed one) and, for images, the
    share of 8-bit pixels within ``IMAGE_LEVELS`` of the reference's."""
    ref64, cand64 = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
    if ref64.shape != cand64.shape:
        return {"max_abs_error": math.inf, "within_fp32": False, "range": [0.0, 0.0], "range_source": "none",
                "image_within_1_level": None, "error": f"shape {list(cand64.shape)} != {list(ref64.shape)}"}
    diff = np.abs(cand64 - ref64)
    max_err = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(cand64).all() and diff.size:
        max_err = math.inf
    fp32 = tolerance_for("fp32", family)
    within = bool(np.isfinite(max_err) and (diff <= fp32.atol + fp32.rtol * np.abs(ref64)).all())
    if len(output_range) == 2 and output_range[1] > output_range[0]:
        lo, hi, source = float(output_range[0]), float(output_range[1]), "declared"
    else:
        finite = ref64[np.isfinite(ref64)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        source = "observed"
    image = None
    if is_image_output(tuple(ref64.shape[1:])) and hi > lo:
        levels = np.abs(to_8bit(cand64, lo, hi) - to_8bit(ref64, lo, hi))
        image = float((levels <= IMAGE_LEVELS).mean())
    return {"max_abs_error": max_err, "within_fp32": within, "range": [lo, hi], "range_source": source,
            "image_within_1_level": image}


def budget_accepts(precision: str, measured: dict[str, Any], budget: Budget | None = None) -> tuple[bool, str]:
    """Whether ``budget`` lets ``auto`` pick a variant at ``precision`` with these ``measured``
    decoder figures (:func:`measure_decoder`), and why; the rule is in export/README.md."""
    budget = budget or default_budget()
    try:
        err = float(measured["max_abs_error"])
        within = bool(measured.get("within_fp32"))
        lo, hi = (float(v) for v in measured.get("range", (0.0, 0.0)))
        image = measured.get("image_within_1_level")
    except (KeyError, TypeError, ValueError):
        return False, "no decoder figures to judge it by"
    if not math.isfinite(err):
        return False, "non-finite decoder error"
    if budget.kind == "max-error":
        assert budget.max_error is not None
        if err <= budget.max_error:
            return True, f"max abs error {err:.2e} within --max-error {budget.max_error:g}"
        return False, f"max abs error {err:.2e} above --max-error {budget.max_error:g}"
    if precision in EXACT_PRECISIONS or within:
        return True, f"exact class (max abs error {err:.2e} within the fp32 tolerance)"
    if budget.kind == "fp32-only":
        return False, f"lossy (max abs error {err:.2e} outside the fp32 tolerance); fp32-only budget"
    if precision in EXPLICIT_ONLY_PRECISIONS:
        return False, f"{precision} only under an explicit --max-error budget"
    span = hi - lo
    limit = LOSSY_RANGE_FRACTION * span
    if not (span > 0 and err <= limit):
        return False, (f"max abs error {err:.2e} above {LOSSY_RANGE_FRACTION:.0%} of the output range "
                       f"{span:.3g} ({limit:.2e})")
    if image is not None and float(image) < IMAGE_PIXEL_FRACTION:
        return False, (f"8-bit image within {IMAGE_LEVELS} level of fp32 on {float(image):.2%} of pixels "
                       f"(needs {IMAGE_PIXEL_FRACTION:.0%})")
    return True, (f"lossy within the default budget (max abs error {err:.2e} <= {LOSSY_RANGE_FRACTION:.0%} of "
                  f"range {span:.3g}" + (f", 8-bit pixels within {IMAGE_LEVELS} level: {float(image):.2%}"
                                         if image is not None else "") + ")")


# --- element-wise agreement: the verdict every check shares ---------------------------------

# Relative errors are reported only where |reference| >= REL_FLOOR: next to zero (a sigmoid's
# saturated 1e-7 outputs, a logvar that crosses 0) a difference of a few ulps is a "relative
# error" of 100% or more that means nothing; the pass rule's atol covers those elements.
REL_FLOOR = 1e-3


def compare_arrays(ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """Error statistics of ``out`` against ``ref`` and the pass/fail verdict."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    stats: dict[str, Any] = {"shape": list(ref.shape)}
    if ref.shape != out.shape:
        stats.update(passed=False, error=f"shape mismatch: reference {list(ref.shape)}, candidate {list(out.shape)}")
        return stats
    nonfinite = {
        "nan_ref": int(np.isnan(ref).sum()), "inf_ref": int(np.isinf(ref).sum()),
        "nan_out": int(np.isnan(out).sum()), "inf_out": int(np.isinf(out).sum()),
    }
    same_nonfinite = bool(
        np.array_equal(np.isnan(ref), np.isnan(out))
        and np.array_equal(np.where(np.isinf(ref), ref, 0.0), np.where(np.isinf(out), out, 0.0))
    )
    finite = np.isfinite(ref) & np.isfinite(out)
    with np.errstate(invalid="ignore", over="ignore"):
        absd = np.where(finite, np.abs(out - ref), 0.0)
    scale = np.where(finite, np.abs(ref), 0.0)  # non-finite elements are judged by same_nonfinite
    reld = np.where(finite, absd / np.maximum(scale, np.finfo(np.float32).tiny), 0.0)
    significant = finite & (scale >= REL_FLOOR)
    max_rel_significant = float(reld[significant].max()) if significant.any() else None
    if absd.size == 0:
        absd = reld = np.zeros(1)
    worst = np.unravel_index(int(np.argmax(absd)), ref.shape) if ref.size else ()
    # smallest atol at the configured rtol, and smallest rtol at the configured atol
    need_atol = float(np.max(np.maximum(absd - tol.rtol * scale, 0.0))) if ref.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        need_rtol_el = np.where(absd > tol.atol, (absd - tol.atol) / scale, 0.0)
    need_rtol = float(np.max(need_rtol_el)) if ref.size else 0.0
    passed = bool(same_nonfinite and np.all(absd <= tol.atol + tol.rtol * scale))
    stats.update(
        max_abs=float(absd.max()), mean_abs=float(absd.mean()), median_abs=float(np.median(absd)),
        p99_abs=float(np.percentile(absd, 99)),
        max_rel=float(reld.max()), mean_rel=float(reld.mean()), median_rel=float(np.median(reld)),
        p99_rel=float(np.percentile(reld, 99)),
        max_rel_significant=max_rel_significant, rel_floor=REL_FLOOR,
        worst_index=[int(i) for i in worst],
        worst_ref=json_float(ref[worst]) if ref.size else None, worst_out=json_float(out[worst]) if ref.size else None,
        **nonfinite,
        min_atol_to_pass=need_atol if math.isfinite(need_atol) and same_nonfinite else None,
        min_rtol_to_pass=need_rtol if math.isfinite(need_rtol) and same_nonfinite else None,
        passed=passed,
    )
    if not same_nonfinite:
        stats["nonfinite_mismatch"] = True
    return stats


def json_float(v: Any) -> float | None:
    """A float for the JSON report; None for NaN/Inf (which JSON cannot hold)."""
    f = float(v)
    return f if math.isfinite(f) else None
