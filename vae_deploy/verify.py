"""``vae-deploy verify``: integrity, contract and parity of an export folder, in one report.

Each problem is named separately so the user knows what happened: a file whose checksum no
longer matches (modified after export), a file that does not load (truncated), graphs
exported from a different checkpoint, a shape contract that disagrees with the model, and
numbers that disagree with the eager model beyond tolerance.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vae_deploy.artifacts import file_status, load_manifest
from vae_deploy.errors import ArtifactError
from vae_deploy.exporters.spec import META_PREFIX, Exportable, parse_shape
from vae_deploy.parity import DEFAULT_TOLERANCES, compare_backends, format_report

SCHEMA = "vae-deploy-verify/1"
DEFAULT_BATCH_SIZES = (1, 7, 64, 257)  # the candidates; verify keeps those the model's cost affords


def check_integrity(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = file_status(folder, manifest)
    return {"passed": all(v == "ok" for v in files.values()), "files": files}


def check_contract(folder: Path, manifest: dict[str, Any], reference: Exportable | None) -> dict[str, Any]:
    """Manifest, ONNX metadata, declared graph shapes and the reference model must agree."""
    import onnx

    problems: list[str] = []
    m = manifest["model"]
    want_in, want_lat = tuple(m["input_shape"]), tuple(m["latent_shape"])
    if reference is not None:
        ref = reference.spec
        if tuple(ref.input_shape) != want_in or tuple(ref.latent_shape) != want_lat:
            problems.append(f"the reference model has input {list(ref.input_shape)} / latent {list(ref.latent_shape)}, "
                            f"the export says input {list(want_in)} / latent {list(want_lat)}")
        if ref.source_sha256 and manifest.get("source", {}).get("sha256") not in ("", None, ref.source_sha256):
            problems.append(
                f"exported from a different checkpoint: manifest source sha256 "
                f"{manifest['source']['sha256'][:12]}..., reference checkpoint {ref.source_sha256[:12]}...")
    for name, entry in manifest.get("files", {}).items():
        if entry.get("format") != "onnx" or not (folder / name).is_file():
            continue
        try:
            model = onnx.load(str(folder / name), load_external_data=False)
        except Exception as e:
            problems.append(f"{name}: cannot be parsed as ONNX ({type(e).__name__})")
            continue
        meta = {p.key: p.value for p in model.metadata_props}
        role = entry.get("role")
        item = want_in if role == "encoder" else want_lat
        for key, want in (("input_shape", want_in), ("latent_shape", want_lat)):
            got = meta.get(META_PREFIX + key)
            if got is None or parse_shape(got) != want:
                problems.append(f"{name}: metadata {key} is {got!r}, manifest says {','.join(map(str, want))!r}")
        src = meta.get(META_PREFIX + "source_sha256")
        if reference is not None and reference.spec.source_sha256 and src and src != reference.spec.source_sha256:
            problems.append(f"{name}: exported from a different checkpoint (metadata source sha256 {src[:12]}..., "
                            f"reference {reference.spec.source_sha256[:12]}...)")
        dims = model.graph.input[0].type.tensor_type.shape.dim
        declared = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
        if len(declared) != len(item) or any(d >= 0 and e >= 0 and d != e for d, e in zip(declared, item)):
            problems.append(f"{name}: graph input is [N, {', '.join('?' if d < 0 else str(d) for d in declared)}], "
                            f"contract says [N, {', '.join(map(str, item))}]")
    return {"passed": not problems, "problems": problems}


def _reference_from(manifest: dict[str, Any], checkpoint: str | Path | None) -> tuple[Exportable, str]:
    from vae_deploy.adapters import from_checkpoint
    from vae_deploy.checkpoint import load_checkpoint

    config = manifest["model"].get("config") or {}
    adapter = config.get("adapter")
    folder = (config.get("diffusers") or {}).get("path")
    if adapter and checkpoint is None and folder:
        return _diffusers_reference(manifest, folder, config["diffusers"].get("subfolder"))
    if adapter and checkpoint is None:
        raise ArtifactError(
            f"this export came from your own module (adapter {adapter!r}, class "
            f"{manifest['model']['config'].get('class')}); there is no checkpoint to rebuild it from: verify it with "
            "vae_deploy.verify(module, export_dir, example_input=x), or `vae-deploy verify DIR --model "
            "package.module:factory --weights state_dict.pt`"
        )
    path = checkpoint or manifest.get("source", {}).get("path")
    if not path:
        raise ArtifactError("no reference checkpoint: the manifest records none; pass --checkpoint")
    if not Path(path).is_file():
        raise ArtifactError(f"the reference checkpoint {str(path)!r} recorded in the manifest is gone; pass --checkpoint")
    return from_checkpoint(load_checkpoint(path)), str(path)


def _diffusers_reference(manifest: dict[str, Any], folder: str, subfolder: str | None) -> tuple[Exportable, str]:
    """The diffusers folder the export came from, probed at the export's example size."""
    from vae_deploy.adapters import from_diffusers

    if not Path(folder).is_dir():
        raise ArtifactError(f"the diffusers folder {folder!r} recorded in the manifest is gone; pass --diffusers FOLDER")
    m = manifest["model"]
    config = m.get("config") or {}
    names = {k: config.get(f"{k}_fn") for k in ("encode", "decode")}
    exp = from_diffusers(folder, subfolder, input_shape=tuple(m["example_input_shape"]),
                         likelihood=m.get("likelihood") if config.get("likelihood_stated") else None,
                         encode_fn=names["encode"], decode_fn=names["decode"])
    return exp, exp.spec.source_path


def _candidates(folder: Path, manifest: dict[str, Any], spec, wanted: Sequence[str] | None):
    """(label, precision, factory) for every backend the export supports here."""
    from vae_deploy.backends import TorchBackend
    from vae_deploy.providers import provider_works
    from vae_deploy.runtime import Runtime

    files = manifest.get("files", {})
    out = []
    if "encoder.ts" in files and "decoder.ts" in files:
        def ts() -> TorchBackend:
            import torch

            return TorchBackend(torch.jit.load(str(folder / "encoder.ts")), torch.jit.load(str(folder / "decoder.ts")),
                                spec, name="torchscript")
        out.append(("torchscript", "fp32", ts))
    precisions = sorted({e.get("precision", "fp32") for e in files.values() if e.get("format") == "onnx"},
                        key=lambda p: (p != "fp32", p))
    providers = ["cpu"] + (["cuda"] if provider_works("cuda") else [])
    for prov in providers:
        for prec in precisions:
            label = f"onnx-{prov}" + ("" if prec == "fp32" else f"-{prec}")

            def rt(prov=prov, prec=prec) -> Runtime:
                r = Runtime.load(folder, provider=prov, precision=prec, verify_checksums=False)
                r.name = f"onnxruntime-{prov}" + ("" if prec == "fp32" else f"-{prec}")
                return r
            out.append((label, prec, rt))
    if wanted:
        known = [c[0] for c in out]
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ArtifactError(f"unknown or unavailable backend(s) {unknown}; this export offers {known}")
        out = [c for c in out if c[0] in wanted]
    return out


def verify_export(
    export_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    reference: Exportable | None = None,
    batch_sizes: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    backends: Sequence[str] | None = None,
    strict_edges: bool = False,
    time_budget_s: float | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Integrity + contract + parity of every backend against the eager reference.

    ``batch_sizes=None``: sized to the model (:func:`vae_deploy.parity_plan.batch_sizes_for`,
    within ``time_budget_s`` per backend). A failing constant-input edge case on a model with
    GroupNorm becomes a warning when every real-data case passes, unless ``strict_edges``.
    ``progress``: print each backend and case on stderr (None: when stderr is a terminal)."""
    from vae_deploy.backends import TorchBackend
    from vae_deploy.exporters import verification_data
    from vae_deploy.parity_plan import (
        DEFAULT_TIME_BUDGET_S,
        CasePlan,
        MemoBackend,
        demote_knife_edges,
        estimated_seconds,
        graph_flops,
        has_normalisation,
        plan_cases,
    )
    from vae_deploy.progress import Progress

    folder = Path(export_dir)
    manifest = load_manifest(folder, verify=False)
    if reference is None:
        reference, ref_path = _reference_from(manifest, checkpoint)
    else:
        ref_path = reference.spec.source_path or "<in-memory model>"
    integrity = check_integrity(folder, manifest)
    contract = check_contract(folder, manifest, reference)
    prog = Progress("verify", progress)
    eager = MemoBackend(TorchBackend(reference.encoder, reference.decoder, reference.spec, name="eager"))
    x_data, described = verification_data(reference.spec, reference.example_x)
    sizing: dict[str, Any] = {"batch_sizes": "given"}
    if batch_sizes is None:
        budget = DEFAULT_TIME_BUDGET_S if time_budget_s is None else time_budget_s
        flops = None
        if integrity["passed"]:
            flops = graph_flops(folder, reference.spec.concrete_input_shape, _latent_shape_of(reference))
        plan = plan_cases(flops, budget_s=budget)
        sizing = {"batch_sizes": "sized to the model", "flops_per_example": flops, "time_budget_s": budget,
                  "estimated_s_per_backend": estimated_seconds(flops, plan)}
    else:
        plan = CasePlan(tuple(batch_sizes))
    sizing.update(chosen=list(plan.batch_sizes), edge_batch=plan.edge_batch, recon_n=plan.recon_n)
    knife_edge_ok = not strict_edges and (has_normalisation(reference.encoder) or has_normalisation(reference.decoder))
    warnings: list[str] = []
    reports = []
    for label, precision, factory in _candidates(folder, manifest, reference.spec, backends):
        tol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
        if precision == "fp32" and reference.fp32_tolerance is not None:
            tol = reference.fp32_tolerance
        if atol is not None or rtol is not None:
            tol = replace(tol, atol=tol.atol if atol is None else atol, rtol=tol.rtol if rtol is None else rtol)
        try:
            cand = factory()
        except Exception as e:
            reports.append({"candidate": label, "precision": precision, "error": f"cannot load: {e}",
                            "summary": {"passed": False, "max_abs_error": None, "failed": ["load"]}})
            continue
        with prog.stage(f"{label} against eager, batch sizes {list(plan.batch_sizes)}"):
            report = compare_backends(eager, cand, x_data, tolerance=tol, precision=precision,
                                      data_description=described, on_case=lambda name: prog.say(f"  case {name}"),
                                      **plan.as_kwargs())
        if knife_edge_ok:
            warnings += demote_knife_edges(report)
        reports.append(report)
    passed = integrity["passed"] and contract["passed"] and bool(reports) and all(
        r["summary"]["passed"] for r in reports)
    return {
        "schema": SCHEMA,
        "export_dir": str(folder),
        "reference": {"path": ref_path, "sha256": reference.spec.source_sha256},
        "integrity": integrity,
        "contract": contract,
        "reports": reports,
        "sizing": sizing,
        "warnings": warnings,
        "passed": passed,
    }


def format_verification(result: dict[str, Any], verbose: bool = False) -> str:
    lines = [f"verifying {result['export_dir']} against {result['reference']['path']}"]
    integ = result["integrity"]
    lines.append(f"integrity: {'PASS' if integ['passed'] else 'FAIL'}")
    for name, status in integ["files"].items():
        if status != "ok" or verbose:
            lines.append(f"  {name}: {status}")
    con = result["contract"]
    lines.append(f"contract: {'PASS' if con['passed'] else 'FAIL'}")
    lines.extend(f"  {p}" for p in con["problems"])
    for r in result["reports"]:
        if "error" in r:
            lines.append(f"{r['candidate']}: FAIL, {r['error']}")
        else:
            lines.append(format_report(r, verbose=verbose))
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    lines.append("RESULT: " + ("PASS" if result["passed"] else "FAIL"))
    return "\n".join(lines)


class _CallableModule(types.ModuleType):
    """``vae_deploy.verify(model, "export/", ...)`` must work although ``vae_deploy.verify`` is
    this module (a package's submodule always wins its attribute name): calling the module
    calls :func:`vae_deploy.api.verify`."""

    def __call__(self, *args, **kwargs):
        from vae_deploy.api import verify

        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def _latent_shape_of(reference: Exportable) -> tuple[int, ...]:
    """The reference's latent shape at its example size (what the decoder cases run at)."""
    return tuple(int(d) for d in reference.example_z.shape[1:])
