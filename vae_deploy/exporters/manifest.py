"""``manifest.json``: what an export folder holds, with checksums, and the checks on load."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vae_deploy.checkpoint import file_sha256, library_versions
from vae_deploy.errors import ArtifactError
from vae_deploy.exporters.spec import FORMAT_VERSION, ExportSpec

MANIFEST = "manifest.json"
FORMAT_NAME = "vae-deploy-export"


def file_entry(path: Path, *, role: str, fmt: str, precision: str = "fp32", **extra: Any) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "size": path.stat().st_size, "role": role, "format": fmt,
            "precision": precision, **extra}


def build_manifest(
    spec: ExportSpec,
    files: dict[str, dict[str, Any]],
    export_info: dict[str, Any],
    parity: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": spec.model_section(),
        "source": {"path": spec.source_path, "sha256": spec.source_sha256},
        "export": export_info,
        "versions": library_versions(),
        "files": files,
        "parity": parity,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def load_manifest(folder: str | Path, *, verify: bool = True, only: list[str] | None = None) -> dict[str, Any]:
    """Read the manifest and (by default) check every listed file's size and sha256.

    ``only`` restricts the checksum check to some files (a runtime needs only the ONNX ones).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"export folder {str(folder)!r} does not exist (run `vae-deploy export` first)")
    if not path.is_file():
        raise ArtifactError(f"{str(folder)!r} has no {MANIFEST}: not a vae-deploy export folder")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{str(path)!r} is not valid JSON: {e}") from None
    fmt = manifest.get("format", {}) if isinstance(manifest, dict) else {}
    if fmt.get("name") != FORMAT_NAME or fmt.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{str(path)!r} has format {fmt!r}; expected {{'name': {FORMAT_NAME!r}, 'version': {FORMAT_VERSION}}}"
        )
    if verify:
        verify_files(folder, manifest, only=only)
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], only: list[str] | None = None) -> None:
    problems = []
    for name, entry in manifest.get("files", {}).items():
        if only is not None and name not in only:
            continue
        p = folder / name
        if not p.is_file():
            problems.append(f"{name}: missing")
            continue
        size = p.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{name}: size {size} bytes, manifest says {entry.get('size')} (truncated or replaced?)")
            continue
        digest = file_sha256(p)
        if digest != entry.get("sha256"):
            problems.append(f"{name}: sha256 {digest[:12]}... does not match the manifest's {str(entry.get('sha256'))[:12]}... "
                            "(modified after export)")
    if problems:
        raise ArtifactError(f"export folder {str(folder)!r} failed its checksum check:\n  " + "\n  ".join(problems))


def spec_from_manifest(manifest: dict[str, Any]) -> ExportSpec:
    return ExportSpec.from_model_section(manifest["model"], manifest.get("source"))


def describe_export(folder: str | Path) -> str:
    """Human-readable summary for `vae-deploy info EXPORT_DIR`: manifest and graph signatures."""
    import onnx

    folder = Path(folder)
    manifest = load_manifest(folder, verify=True)
    lines = [f"export folder {folder}  (format v{manifest['format']['version']}, created {manifest.get('created')})"]
    m = manifest["model"]
    lines.append(f"model: {m['family']}  input {m['input_shape']}  latent {m['latent_shape']}  likelihood {m['likelihood']}")
    src = manifest.get("source", {})
    lines.append(f"source: {src.get('path')}  sha256 {str(src.get('sha256'))[:16]}...")
    ex = manifest.get("export", {})
    lines.append(f"exporter: {ex.get('onnx_exporter')} opset {ex.get('opset')}; torchscript: {ex.get('torchscript')}")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items()))
    lines.append("files (checksums verified):")
    for name, e in manifest["files"].items():
        lines.append(f"  {name:<24} {e['size']:>10,d} B  {e['role']:<8} {e['format']:<12} {e['precision']:<9} {e['sha256'][:16]}...")
        if e["format"] == "onnx":
            model = onnx.load(str(folder / name), load_external_data=False)

            def sig(values) -> str:
                out = []
                for v in values:
                    dims = [d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim]
                    out.append(f"{v.name}[{', '.join(dims)}]")
                return ", ".join(out)

            lines.append(f"      {sig(model.graph.input)} -> {sig(model.graph.output)}")
    parity = manifest.get("parity")
    if parity:
        lines.append(f"parity at export: {'PASS' if parity.get('passed') else 'FAIL'}  "
                     f"max abs error {parity.get('max_abs_error', float('nan')):.3g}")
    return "\n".join(lines)
