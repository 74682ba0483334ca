"""Write the static site: check the export first, assemble everything in a temporary sibling
folder, then swap it into place, so a failed build never leaves a half-written site and never
deletes a folder that is not a previous site.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vae_deploy.errors import VaeDeployError
from vae_deploy.web.contract import DecoderContract, check_export
from vae_deploy.web.ortdist import ORT_FILES, ORT_WEB_VERSION, find_dist

SITE_MARKER = "site.json"
GENERATOR = "vae-deploy web"
STATIC_FILES = ("index.html", "app.js", "vae.js", "style.css")
# Spatial latents: the largest height/width (in latent cells) the page decodes. An SD-style VAE
# (8x upsampling) at 32x32 latents is a 256x256 image: a few seconds per decode on WASM.
DEFAULT_MAX_LATENT_SIDE = 32


class SiteError(VaeDeployError, ValueError):
    """The output folder cannot be (over)written safely."""


@dataclass(frozen=True)
class SiteResult:
    out_dir: Path
    contract: DecoderContract
    ort_dist: Path
    files: list[str]


def site_config(manifest: dict[str, Any], contract: DecoderContract, max_latent_side: int) -> dict[str, Any]:
    """``site.json``: what the page needs beside the manifest (which decoder, which limits)."""
    return {
        "generator": GENERATOR,
        "onnxruntime_web": ORT_WEB_VERSION,
        "decoder": {
            "file": contract.file,
            "sha256": manifest["files"][contract.file]["sha256"],
            "input": contract.input_name,
            "output": contract.output_name,
        },
        "limits": {"max_latent_side": max_latent_side, "max_batch": 64, "sliders": 16},
    }


def _check_out(out: Path, export_dir: Path) -> None:
    if out.resolve() == export_dir.resolve() or out.resolve().is_relative_to(export_dir.resolve()):
        raise SiteError(f"--out {str(out)!r} is inside the export folder {str(export_dir)!r}; choose another folder")
    if out.exists() and not out.is_dir():
        raise SiteError(f"--out {str(out)!r} is a file; expected a folder (new, empty or a previous site)")
    if out.is_dir() and any(out.iterdir()):
        try:
            previous = json.loads((out / SITE_MARKER).read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            previous = False
        if not previous:
            raise SiteError(f"--out {str(out)!r} is a non-empty folder that is not a previous `vae-deploy web` site; "
                            "refusing to replace it (choose a new folder)")


def build_site(export_dir: str | Path, out: str | Path, *, ort_dist: str | Path | None = None,
               max_latent_side: int = DEFAULT_MAX_LATENT_SIDE) -> SiteResult:
    """Check ``export_dir`` and write the site to ``out``; raise a VaeDeployError before
    writing anything when the export, onnxruntime-web's files or ``out`` are not usable."""
    export_dir, out = Path(export_dir), Path(out)
    manifest, contract = check_export(export_dir)
    dist = find_dist(Path(ort_dist) if ort_dist else None)
    _check_out(out, export_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a web server must read the site
        static = resources.files("vae_deploy.web") / "static"
        for name in STATIC_FILES:
            (tmp / name).write_bytes((static / name).read_bytes())
        (tmp / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(dist / name, tmp / "ort" / name)
        shutil.copyfile(export_dir / contract.file, tmp / contract.file)
        shutil.copyfile(export_dir / "manifest.json", tmp / "manifest.json")
        (tmp / SITE_MARKER).write_text(json.dumps(site_config(manifest, contract, max_latent_side), indent=2) + "\n")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return SiteResult(out, contract, dist, files)


def _swap(tmp: Path, out: Path) -> None:
    """Put ``tmp`` at ``out``; the previous site (checked by ``_check_out``) goes only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
