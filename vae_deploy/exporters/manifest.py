"""``manifest.json``: what an export folder holds, with checksums, and the checks on load."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vae_deploy.artifacts import (  # noqa: F401 - re-exported: the loaders live with the contract
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    ExportSpec,
    file_sha256,
    load_manifest,
    spec_from_manifest,
    verify_files,
)
from vae_deploy.checks.describe import describe_export  # noqa: F401 - moved: `info` runs without torch


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
        "versions": _library_versions(),
        "files": files,
        "parity": parity,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def _library_versions() -> dict[str, str]:
    from vae_deploy.training.checkpoint import library_versions

    return library_versions()
