"""``export()``: a model in, a verified, checksummed export folder out, atomically.

Everything is written into a temporary sibling folder; only when every graph exported,
passed ``onnx.checker`` and (unless ``verify=False``) matched the eager model does that
folder replace ``out_dir``. Files in ``out_dir`` that its old manifest did not list (a tracked
README, say) are carried over; output_folders.py says which folders may be a target.

``precisions`` adds variants beside the base fp32 graphs (``fp32-fast``, ``int8``,
``fp16``; see variants.py). Each is verified on its own; one that fails its tolerance is
not written and the export still succeeds, saying which and why (``ExportResult.variants``,
the manifest's ``variants`` section), unless ``strict=True``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vae_deploy import output_folders as writing
from vae_deploy.checks.plan import CasePlan, MemoBackend
from vae_deploy.errors import ExportError
from vae_deploy.exporters.finite import require_finite
from vae_deploy.exporters.manifest import build_manifest, file_entry, write_manifest
from vae_deploy.exporters.onnx import DEFAULT_OPSET, EXPORTER_NAME, check_opset, export_onnx
from vae_deploy.exporters.spec import Exportable, ExportSpec  # noqa: F401 (re-exported)
from vae_deploy.exporters.torchscript import TORCHSCRIPT_METHOD, export_torchscript
from vae_deploy.exporters.variants import PRECISIONS, Variant, parse_precisions
from vae_deploy.exporters.verification import verification_data
from vae_deploy.progress import Progress

if TYPE_CHECKING:
    from vae_deploy.checks.parity import Tolerance

FORMATS = ("onnx", "torchscript")
VERIFY_BATCH_SIZES = (1, 37)

__all__ = ["ExportResult", "export", "FORMATS", "PRECISIONS", "Variant"]


@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict[str, Any]
    parity_reports: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    variants: list[Variant] = field(default_factory=list)  # one per requested non-fp32 precision

    @property
    def dropped(self) -> list[Variant]:
        return [v for v in self.variants if v.status == "dropped"]




def export(
    model_or_ckpt: Any,
    out_dir: str | Path = "export",
    *,
    formats: Sequence[str] = FORMATS,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    batch_sizes: Sequence[int] | None = None,
    example_input: Any = None,
    likelihood: str | None = None,
    dynamic_spatial: bool | None = None,
    tolerance: Tolerance | None = None,
    source_path: str = "",
    precisions: Sequence[str] | str = ("fp32",),
    int8_method: str = "auto",
    strict: bool = False,
    progress: bool | Progress | None = None,
) -> ExportResult:
    """Export the encoder and decoder, verify them against eager, write the manifest.

    ``model_or_ckpt`` is a checkpoint (path or loaded), a ``VAE``, or any VAE-like module,
    probed on ``example_input`` (see :mod:`vae_deploy.adapters`); ``likelihood`` and
    ``dynamic_spatial`` apply to such foreign modules. ``tolerance`` overrides the fp32
    tolerance of the export-time parity check. ``batch_sizes=None``: those of ``(1, 37)`` that
    the model's cost affords (:func:`vae_deploy.checks.plan.plan_cases`; a Stable Diffusion
    VAE checks 1 and 3, with one-example edge cases).

    ``precisions``: which variants to write besides the base fp32 graphs, e.g.
    ``("fp32", "fp32-fast", "int8")``. ``int8_method``: ``auto`` (static for convolutional
    graphs, dynamic otherwise), ``dynamic`` or ``static``. ``strict``: fail the whole export
    (writing nothing) when a requested variant fails its parity check, instead of dropping it.
    ``progress``: print each stage (and parity case) on stderr with its time and the peak
    memory so far; None: when stderr is a terminal. The manifest records the totals.
    """
    from vae_deploy.adapters import to_exportable

    start = time.perf_counter()
    prog = progress if isinstance(progress, Progress) else Progress("export", progress)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"unknown export format(s) {bad or list(formats)}; expected some of {FORMATS}")
    precisions = parse_precisions(precisions)
    if len(precisions) > 1 and "onnx" not in formats:
        raise ExportError(f"precision variants {list(precisions[1:])} are ONNX files: add 'onnx' to the formats")
    out = Path(out_dir)
    writing.check_target(out)  # before any long work: see output_folders.py for what may be a target
    if "onnx" in formats:
        check_opset(opset)
    with prog.stage("loading and probing the model"):
        exp = to_exportable(model_or_ckpt, example_input, likelihood=likelihood, dynamic_spatial=dynamic_spatial,
                            source_path=source_path)
    require_finite(exp, error=ExportError)
    writing.sweep_stale(out)
    tmp = writing.make_temp(out)
    try:
        files = _write_graphs(exp, tmp, formats, opset, prog)
        plan = _plan(exp, tmp, formats, batch_sizes)
        batch_sizes = plan.batch_sizes
        reports = _verify(exp, tmp, formats, plan, tolerance, prog) if verify else []
        variants: list[Variant] = []
        if len(precisions) > 1:
            extra, variants, variant_reports = _write_variants(
                exp, tmp, precisions[1:], verify=verify, batch_sizes=batch_sizes, int8_method=int8_method)
            files.update(extra)
            reports += variant_reports
            dropped = [v for v in variants if v.status == "dropped"]
            if strict and dropped:
                raise ExportError("strict export: requested precision variant(s) failed; nothing was written:\n"
                                  + "\n".join(f"  {v.precision}: {v.reason}" for v in dropped))
        parity = _parity_summary(reports, batch_sizes) if verify else None
        export_info = {
            "opset": opset if "onnx" in formats else None,
            "onnx_exporter": EXPORTER_NAME if "onnx" in formats else None,
            "torchscript": TORCHSCRIPT_METHOD if "torchscript" in formats else None,
            "formats": list(formats),
            "precisions": list(precisions),
            "verified": verify,
            **prog.summary(),
        }
        manifest = build_manifest(exp.spec, files, export_info, parity)
        if variants:
            manifest["variants"] = {v.precision: v.manifest_entry() for v in variants}
        write_manifest(tmp, manifest)
        writing.carry_over(out, tmp)
        writing.swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, reports, time.perf_counter() - start, variants)


def _write_graphs(exp: Exportable, folder: Path, formats: Sequence[str], opset: int,
                  prog: Progress | None = None) -> dict[str, dict[str, Any]]:
    prog = prog or Progress(enabled=False)
    spec = exp.spec
    files: dict[str, dict[str, Any]] = {}
    dyn_x = _dynamic_dims(spec.input_shape, spec.dynamic_axes)
    dyn_z = _dynamic_dims(spec.latent_shape, spec.dynamic_axes, prefix="latent_")
    if "onnx" in formats:
        with prog.stage("ONNX export of the encoder (torch.export + optimiser + checker)"):
            export_onnx(exp.encoder, exp.example_x, folder / "encoder.onnx", input_name="x",
                        output_names=["mu", "logvar"], dynamic_dims=dyn_x, metadata=spec.metadata("encoder"),
                        opset=opset)
        with prog.stage("ONNX export of the decoder"):
            export_onnx(exp.decoder, exp.example_z, folder / "decoder.onnx", input_name="z",
                        output_names=["x_hat"], dynamic_dims=dyn_z, metadata=spec.metadata("decoder"), opset=opset)
        files["encoder.onnx"] = file_entry(folder / "encoder.onnx", role="encoder", fmt="onnx")
        files["decoder.onnx"] = file_entry(folder / "decoder.onnx", role="decoder", fmt="onnx")
    if "torchscript" in formats:
        with prog.stage("TorchScript trace of the encoder (checked at another size)"):
            export_torchscript(exp.encoder, exp.example_x, folder / "encoder.ts", "encoder",
                               _other_size(exp.example_x, dyn_x))
        with prog.stage("TorchScript trace of the decoder"):
            export_torchscript(exp.decoder, exp.example_z, folder / "decoder.ts", "decoder",
                               _other_size(exp.example_z, dyn_z))
        files["encoder.ts"] = file_entry(folder / "encoder.ts", role="encoder", fmt="torchscript")
        files["decoder.ts"] = file_entry(folder / "decoder.ts", role="decoder", fmt="torchscript")
    return files


def _dynamic_dims(item_shape: Sequence[int], axes: Sequence[str], prefix: str = "") -> dict[int, str]:
    """Axis 0 is the batch; per-example axes marked -1 take the next names in ``axes``.

    The decoder's latent axes get ``prefix="latent_"`` (``latent_height``): they follow the
    image's axes but are not the same size, and the graph's dimension names should say so.
    """
    dims = {0: axes[0] if axes else "batch"}
    names = iter(axes[1:])
    for i, d in enumerate(item_shape, start=1):
        if d < 0:
            dims[i] = prefix + next(names, f"dim{i}")
    return dims


def _other_size(example: torch.Tensor, dims: dict[int, str]) -> torch.Tensor:
    """The example at another size along every dynamic axis, to check that a trace did not
    freeze a size into the graph: one example instead of the example's batch, and half the
    size along each dynamic spatial axis when every such axis is even and at least 8 (twice
    otherwise). Small on purpose: for a Stable Diffusion VAE an odd batch of 5 at twice the
    size cost 20 examples of eager and traced compute, half a minute per half on 2 cores."""
    spatial = [axis for axis in dims if axis > 0]
    if not spatial:
        return torch.cat([example, example, example[:1]], 0)
    other = example[:1] if example.shape[0] > 1 else torch.cat([example, example])
    if all(example.shape[a] % 2 == 0 and example.shape[a] >= 8 for a in spatial):
        index = [slice(None)] * other.ndim
        for a in spatial:
            index[a] = slice(0, example.shape[a] // 2)
        return other[tuple(index)].contiguous()
    for axis in spatial:
        other = other.repeat_interleave(2, dim=axis)
    return other


def _plan(exp: Exportable, folder: Path, formats: Sequence[str], batch_sizes: Sequence[int] | None) -> CasePlan:
    """The export-time parity cases: as given, or sized to the model's cost."""
    from vae_deploy.checks.plan import graph_flops, plan_cases

    if batch_sizes is not None:
        return CasePlan(tuple(batch_sizes))
    flops = None
    if "onnx" in formats:
        flops = graph_flops(folder, tuple(exp.example_x.shape[1:]), tuple(exp.example_z.shape[1:]))
    return plan_cases(flops, candidates=VERIFY_BATCH_SIZES)


def _verify(exp: Exportable, folder: Path, formats: Sequence[str], plan: CasePlan,
            tolerance: Tolerance | None = None, prog: Progress | None = None) -> list[dict[str, Any]]:
    """Parity of every written graph against eager; raises ExportError on any failure."""
    from vae_deploy.checks.parity import compare_backends, format_report
    from vae_deploy.checks.plan import demote_knife_edges, has_normalisation
    from vae_deploy.runtime.backends import TorchBackend
    from vae_deploy.runtime.core import Runtime

    x_data, described = verification_data(exp.spec, exp.example_x)
    eager = MemoBackend(TorchBackend(exp.encoder, exp.decoder, exp.spec, name="eager"))  # once, not per candidate
    candidates = []
    if "onnx" in formats:
        candidates.append(Runtime(folder / "encoder.onnx", folder / "decoder.onnx", exp.spec, provider="cpu"))
    if "torchscript" in formats:
        enc = torch.jit.load(str(folder / "encoder.ts"))
        dec = torch.jit.load(str(folder / "decoder.ts"))
        candidates.append(TorchBackend(enc, dec, exp.spec, name="torchscript"))
    prog = prog or Progress(enabled=False)
    reports = []
    for c in candidates:
        with prog.stage(f"parity of {c.name} against eager, batch sizes {list(plan.batch_sizes)}"):
            reports.append(compare_backends(eager, c, x_data, tolerance=tolerance or exp.fp32_tolerance,
                                            data_description=described, on_case=lambda name: prog.say(f"  case {name}"),
                                            **plan.as_kwargs()))
    if has_normalisation(exp.encoder) or has_normalisation(exp.decoder):
        for r in reports:  # constant inputs through GroupNorm: warnings when real data passes
            for line in demote_knife_edges(r):
                prog.say(f"warning: {line}")
    failed = [r for r in reports if not r["summary"]["passed"]]
    if failed:
        raise ExportError("exported graphs disagree with the eager model; nothing was written:\n"
                          + "\n".join(format_report(r) for r in failed))
    return reports


def _write_variants(
    exp: Exportable, folder: Path, precisions: Sequence[str], *, verify: bool, batch_sizes: Sequence[int],
    int8_method: str,
) -> tuple[dict[str, dict[str, Any]], list[Variant], list[dict[str, Any]]]:
    """Build, write and verify each variant; returns (manifest file entries, outcomes, the
    parity reports of the variants that were kept)."""
    import onnx

    from vae_deploy.exporters.rewrite import optimize_for_cpu
    from vae_deploy.exporters.variants import (
        ROLES,
        build_variant,
        calibration_inputs,
        failure_reason,
        verify_variant,
    )

    base = {r: onnx.load(str(folder / f"{r}.onnx")) for r in ROLES}
    x_data, described = verification_data(exp.spec, exp.example_x) if verify else (None, "")
    fast: dict[str, onnx.ModelProto] | None = None
    entries: dict[str, dict[str, Any]] = {}
    outcomes: list[Variant] = []
    kept_reports: list[dict[str, Any]] = []
    for precision in precisions:
        calibration, cal_note = None, ""
        try:
            if precision == "int8":
                if fast is None:  # quantise the rewritten graph: its convolutions have int8 kernels
                    fast = {r: res.model for r in ROLES if (res := optimize_for_cpu(base[r])).changed}
                calibration, cal_note = calibration_inputs(exp)
            models, info = build_variant(precision, base, fast=fast, calibration=calibration,
                                         int8_method=int8_method)
        except ExportError as e:
            status = "not applicable" if precision == "fp32-fast" else "dropped"
            outcomes.append(Variant(precision, status, reason=str(e)))
            continue
        if precision == "fp32-fast":
            fast = dict(models)
        if cal_note and any(i.get("method") == "static-qdq" for i in info.values()):
            info["calibration"] = cal_note
        names = {r: f"{r}.{precision}.onnx" for r in models}
        for r, m in models.items():
            onnx.save(m, str(folder / names[r]))
        report, notes = None, []
        if verify:
            assert x_data is not None
            kept, report, notes = verify_variant(exp, folder, precision, names, x_data, described, batch_sizes)
            if not kept:
                for n in names.values():
                    (folder / n).unlink(missing_ok=True)
                if precision == "fp32-fast":
                    fast = {}  # never quantise a rewrite that failed its exactness check
                outcomes.append(Variant(precision, "dropped", reason=failure_reason(report), info=info,
                                        report=report, notes=notes))
                continue
            names = kept
            kept_reports.append(report)
        for r, n in names.items():
            entries[n] = file_entry(folder / n, role=r, fmt="onnx", precision=precision, made_by=info.get(r, {}))
        outcomes.append(Variant(precision, "written", files=names, info=info, report=report, notes=notes))
    return entries, outcomes, kept_reports


def _parity_summary(reports: list[dict[str, Any]], batch_sizes: Sequence[int]) -> dict[str, Any]:
    return {
        "passed": all(r["summary"]["passed"] for r in reports),
        "max_abs_error": max((r["summary"]["max_abs_error"] for r in reports), default=0.0),
        "batch_sizes": list(batch_sizes),
        "backends": {
            r["candidate"]: {
                "reference": r["reference"], "precision": r["precision"], "tolerance": r["tolerance"],
                **{k: r["summary"][k] for k in ("passed", "max_abs_error", "mean_abs_error", "worst", "elbo_rel_diff",
                                                "recon_rel_diff", "n_cases") if k in r["summary"]},
            }
            for r in reports
        },
        "inputs": reports[0]["inputs"] if reports else {},
        "warnings": {r["candidate"]: r["summary"]["warnings"] for r in reports if r["summary"].get("warnings")},
    }
