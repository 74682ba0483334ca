"""Precision variants of the exported graphs: build them from the base fp32 files, verify
each against eager, and keep only those that pass.

| precision   | files                                    | made by                                     |
|-------------|------------------------------------------|---------------------------------------------|
| `fp32`      | `encoder.onnx`, `decoder.onnx`           | the exporter (always written, the contract) |
| `fp32-fast` | `<role>.fp32-fast.onnx` where a rewrite applies | exact CPU rewrites (rewrite.py)      |
| `int8`      | `<role>.int8.onnx`                       | onnxruntime.quantization (quantize.py), from the fp32-fast graph when there is one |
| `fp16`      | `<role>.fp16.onnx`                       | onnxruntime's fp16 converter (fp16.py), from the plain graph |
| `fp32-winograd` | `<role>.fp32-winograd.onnx`          | 3x3 convolutions in Winograd F(4x4,3x3) form (winograd.py): fewer multiplications, not exact, held to fp32's tolerance |

A variant is verified as a whole backend (its encoder, or the fp32 encoder when it has
none, plus its decoder) against eager at its precision's tolerance. A variant whose decoder
fails is dropped; one whose only failure is its encoder keeps its decoder (sampling needs
only the decoder; ``Runtime.load`` falls back to the fp32 encoder). Dropping never fails
the export unless ``strict`` is set; the base fp32 graphs failing always does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from vae_deploy.errors import ExportError
from vae_deploy.exporters.onnx import check_model
from vae_deploy.exporters.spec import META_PREFIX, Exportable

PRECISIONS = ("fp32", "fp32-fast", "int8", "fp16", "fp32-winograd")
WINOGRAD_TILE = 4  # F(4x4,3x3): measured faster than F(2x2,3x3) on every CPU class tried (bench/README.md)
ROLES = ("encoder", "decoder")
CALIBRATION_EXAMPLES = 512
CALIBRATION_NORMAL = 256
CALIBRATION_EDGE = 4.0  # latents as far out as the parity check's +-4 sigma edge cases


def parse_precisions(value: str | Sequence[str]) -> tuple[str, ...]:
    """Validate, deduplicate and put ``fp32`` (always written) first."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
    bad = [v for v in items if v not in PRECISIONS]
    if bad:
        raise ExportError(f"unknown precision(s) {bad}; expected a comma-separated subset of {','.join(PRECISIONS)}")
    return ("fp32", *[p for p in PRECISIONS[1:] if p in items])


@dataclass
class Variant:
    """One precision's outcome: written (with files and parity) or not (with the reason)."""

    precision: str
    status: str  # "written" | "dropped" | "not applicable"
    reason: str = ""
    files: dict[str, str] = field(default_factory=dict)  # role -> file name
    info: dict[str, Any] = field(default_factory=dict)  # how it was made
    report: dict[str, Any] | None = None  # parity report of the written (or last failing) form
    notes: list[str] = field(default_factory=list)

    def manifest_entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.files:
            out["files"] = sorted(self.files.values())
        if self.info:
            out["made_by"] = self.info
        if self.notes:
            out["notes"] = self.notes
        if self.report is not None:
            out["parity"] = parity_digest(self.report)
        return out


def parity_digest(report: dict[str, Any]) -> dict[str, Any]:
    s = report["summary"]
    keys = ("passed", "max_abs_error", "mean_abs_error", "worst", "elbo_rel_diff", "recon_rel_diff",
            "n_cases", "n_failed", "failed")
    out = {k: s[k] for k in keys if k in s}
    out["tolerance"] = report["tolerance"]
    elbo = report.get("elbo") or {}
    for k in ("reference_nelbo", "candidate_nelbo", "reference_recon_mae", "candidate_recon_mae"):
        if k in elbo:
            out[k] = elbo[k]
    return out


# --- building -------------------------------------------------------------------------------
def calibration_inputs(exp: Exportable) -> tuple[dict[str, np.ndarray], str]:
    """Inputs for static int8 calibration: the checkpoint's training split for the encoder;
    for the decoder the encoder's posterior means of it plus seeded N(0, I) draws (sampling
    feeds N(0, I), reconstruction feeds means: both ranges must be covered)."""
    from vae_deploy.exporters.verification import verification_data

    spec = exp.spec
    x, described = None, ""
    if spec.data_spec:
        from vae_deploy.training.data import dataset_from_spec

        try:
            ds = dataset_from_spec(spec.data_spec, bernoulli=spec.likelihood == "bernoulli")
            x = ds.train[:CALIBRATION_EXAMPLES]
            described = f"{len(x)} training examples of {spec.data_spec.get('name')!r}"
        except Exception as e:  # the data may be gone: say so and fall back
            described = f"training data unavailable ({e}); "
    if x is None:
        x, what = verification_data(spec, exp.example_x, n=CALIBRATION_EXAMPLES)
        described += what
    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.inference_mode():
        mu, _ = exp.encoder(torch.from_numpy(x))
    rng = np.random.default_rng(0)
    latent = tuple(mu.shape[1:])  # concrete, also where the spec's latent axes are dynamic
    normal = rng.standard_normal((CALIBRATION_NORMAL, *latent), dtype=np.float32)
    # Min/max calibration clips whatever it has not seen; N(0, I) draws rarely reach 4 sigma in
    # many dimensions at once, so add such corners explicitly (random signs, all +, all -).
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=(30, *latent))
    edges = CALIBRATION_EDGE * np.concatenate([signs, np.ones((1, *latent), np.float32),
                                               -np.ones((1, *latent), np.float32)])
    z = np.concatenate([mu.numpy().astype(np.float32), normal, edges.astype(np.float32)])
    return {"encoder": x, "decoder": z}, (f"encoder: {described}; decoder: their posterior means, {CALIBRATION_NORMAL} "
                                          f"N(0, I) draws and {len(edges)} +-{CALIBRATION_EDGE:g} sigma corners")


def _finish(model: onnx.ModelProto, base: onnx.ModelProto, precision: str, where: str) -> onnx.ModelProto:
    """Carry the contract's metadata over from the base graph, with this precision."""
    del model.metadata_props[:]
    for p in base.metadata_props:
        model.metadata_props.add(key=p.key, value=precision if p.key == f"{META_PREFIX}precision" else p.value)
    model.producer_name, model.producer_version = base.producer_name, base.producer_version
    model.doc_string = base.doc_string + f" [{precision} variant]"
    check_model(model, where=where)
    return model


def build_variant(
    precision: str,
    base: dict[str, onnx.ModelProto],
    *,
    fast: dict[str, onnx.ModelProto] | None = None,
    calibration: dict[str, np.ndarray] | None = None,
    int8_method: str = "auto",
) -> tuple[dict[str, onnx.ModelProto], dict[str, Any]]:
    """The variant's graphs per role (the decoder always among them) and how they were made.
    Raises ExportError when the variant cannot be made or does not apply to this model."""
    from vae_deploy.exporters.fp16 import to_fp16
    from vae_deploy.exporters.quantize import quantize_int8
    from vae_deploy.exporters.rewrite import optimize_for_cpu

    models: dict[str, onnx.ModelProto] = {}
    info: dict[str, Any] = {}
    for role in ROLES:
        if precision == "fp32-fast":
            r = optimize_for_cpu(base[role])
            if r.changed:
                models[role], info[role] = r.model, {"rewrites": r.applied}
        elif precision == "int8":
            src = (fast or {}).get(role, base[role])
            try:
                models[role], info[role] = quantize_int8(
                    src, method=int8_method, calibration=(calibration or {}).get(role))
            except ExportError as e:
                if role == "decoder":
                    raise
                info[role] = {"skipped": str(e)}
                continue
            info[role]["from"] = "fp32-fast graph" if src is not base[role] else "fp32 graph"
        elif precision == "fp16":
            models[role], info[role] = to_fp16(base[role])
        elif precision == "fp32-winograd":
            from vae_deploy.exporters.winograd import winograd_rewrite

            r = winograd_rewrite(base[role], WINOGRAD_TILE)
            if r.changed:
                models[role], info[role] = r.model, {"rewrites": r.applied, "tile": f"F({WINOGRAD_TILE}x{WINOGRAD_TILE},3x3)"}
        else:
            raise ExportError(f"no variant builder for precision {precision!r}")
    if "decoder" not in models and precision == "fp32-winograd":
        raise ExportError("the decoder has no 3x3 stride-1 convolution with >= 32 channels on both sides to rewrite")
    if "decoder" not in models:
        raise ExportError("no exact rewrite applies to this model's decoder (no ConvTranspose wide enough to "
                          "decompose, no Linear -> ConvTranspose to fold)" if precision == "fp32-fast"
                          else "nothing to convert in the decoder")
    return {r: _finish(m, base[r], precision, f"{r}.{precision}.onnx") for r, m in models.items()}, info


# --- verifying --------------------------------------------------------------------------------
def verify_variant(
    exp: Exportable, folder: Path, precision: str, files: dict[str, str], x_data: np.ndarray, described: str,
    batch_sizes: Sequence[int],
) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """Parity of a written variant; returns (files kept, last report, notes). A failing
    encoder alone is removed and the decoder re-verified with the fp32 encoder."""
    from vae_deploy.checks.parity import compare_backends
    from vae_deploy.runtime.backends import TorchBackend

    eager = TorchBackend(exp.encoder, exp.decoder, exp.spec, name="eager")
    notes: list[str] = []

    def check(fs: dict[str, str]) -> dict[str, Any]:
        from vae_deploy.runtime.core import Runtime

        rt = Runtime(folder / fs.get("encoder", "encoder.onnx"), folder / fs["decoder"], exp.spec, provider="cpu")
        rt.name = f"ort-cpu-{precision}"
        rt.precision = precision
        return compare_backends(eager, rt, x_data, batch_sizes=batch_sizes, precision=precision,
                                data_description=described)

    report = check(files)
    if report["summary"]["passed"] or "encoder" not in files:
        return (files if report["summary"]["passed"] else {}), report, notes
    decoder_ok = all(c.get("passed") for c in report["cases"] if c["graph"] == "decoder")
    if not decoder_ok:
        return {}, report, notes
    enc_failed = [c["name"] for c in report["cases"] if not c.get("passed")]
    (folder / files["encoder"]).unlink()
    notes.append(f"{files['encoder']} dropped: failed {', '.join(enc_failed[:4])}; the fp32 encoder is used instead")
    kept = {"decoder": files["decoder"]}
    report = check(kept)
    return (kept if report["summary"]["passed"] else {}), report, notes


def failure_reason(report: dict[str, Any]) -> str:
    s, t = report["summary"], report["tolerance"]
    parts = [f"failed parity at its tolerance (atol {t['atol']:g}, rtol {t['rtol']:g}, ELBO rtol {t['elbo_rtol']:g}): "
             f"{s['n_failed']} of {s['n_cases']} checks ({', '.join(s['failed'][:4])}{', ...' if len(s['failed']) > 4 else ''})",
             f"max abs error {s['max_abs_error']:.2e}"]
    if s.get("elbo_rel_diff") is not None:
        parts.append(f"ELBO rel diff {s['elbo_rel_diff']:.2e}")
    return "; ".join(parts)
