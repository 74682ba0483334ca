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
from vae_deploy.exporters.spec import META_PREFIX, Exportable
from vae_deploy.parity import DEFAULT_TOLERANCES, compare_backends, format_report

SCHEMA = "vae-deploy-verify/1"
DEFAULT_BATCH_SIZES = (1, 7, 64, 257)


def check_integrity(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = file_status(folder, manifest)
    return {"passed": all(v == "ok" for v in files.values()), "files": files}


def check_contract(folder: Path, manifest: dict[str, Any], reference: Exportable | None) -> dict[str, Any]:
    """The export contract (:func:`vae_deploy.contract.contract_problems`: paths inside the
    folder, no random ops, metadata and declared input/output shapes against the manifest),
    and the reference model against the manifest and metadata."""
    from vae_deploy.contract import contract_problems, load_graph

    problems = contract_problems(folder, manifest, checksums=False)  # checksums: the integrity section
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
        if ref.source_sha256 and not any(p.startswith("manifest file") for p in problems):
            for name, entry in manifest.get("files", {}).items():
                if entry.get("format") != "onnx" or not (folder / name).is_file():
                    continue
                try:
                    meta = {p.key: p.value for p in load_graph(folder / name).metadata_props}
                except ArtifactError:
                    continue  # contract_problems reported it
                src = meta.get(META_PREFIX + "source_sha256")
                if src and src != ref.source_sha256:
                    problems.append(f"{name}: exported from a different checkpoint (metadata source sha256 "
                                    f"{src[:12]}..., reference {ref.source_sha256[:12]}...)")
    return {"passed": not problems, "problems": problems}


def _reference_from(manifest: dict[str, Any], checkpoint: str | Path | None) -> tuple[Exportable, str]:
    from vae_deploy.adapters import from_checkpoint
    from vae_deploy.checkpoint import load_checkpoint

    adapter = (manifest["model"].get("config") or {}).get("adapter")
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
        if checkpoint is not None:
            raise ArtifactError(f"the reference checkpoint {str(path)!r} does not exist or is not a file")
        raise ArtifactError(f"the reference checkpoint {str(path)!r} recorded in the manifest is gone; pass --checkpoint")
    return from_checkpoint(load_checkpoint(path)), str(path)


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
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float | None = None,
    rtol: float | None = None,
    backends: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Integrity + contract + parity of every backend against the eager reference."""
    from vae_deploy.backends import TorchBackend
    from vae_deploy.exporters import verification_data
    from vae_deploy.exporters.finite import require_finite

    folder = Path(export_dir)
    manifest = load_manifest(folder, verify=False)
    if reference is None:
        reference, ref_path = _reference_from(manifest, checkpoint)
    else:
        ref_path = reference.spec.source_path or "<in-memory model>"
    require_finite(reference, "reference model", error=ArtifactError)
    integrity = check_integrity(folder, manifest)
    contract = check_contract(folder, manifest, reference)
    eager = TorchBackend(reference.encoder, reference.decoder, reference.spec, name="eager")
    x_data, described = verification_data(reference.spec, reference.example_x)
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
        reports.append(compare_backends(eager, cand, x_data, batch_sizes=batch_sizes, tolerance=tol,
                                        precision=precision, data_description=described))
    passed = integrity["passed"] and contract["passed"] and bool(reports) and all(
        r["summary"]["passed"] for r in reports)
    return {
        "schema": SCHEMA,
        "export_dir": str(folder),
        "reference": {"path": ref_path, "sha256": reference.spec.source_sha256},
        "integrity": integrity,
        "contract": contract,
        "reports": reports,
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
