"""Write the static site: check the export first, assemble everything in a temporary sibling
folder, then swap it into place, so a failed build never leaves a half-written site, and never
deletes a file the previous site did not write (``vae_deploy/serving/web/output.py``).

What is published is what the page needs, and nothing about the build machine
(``vae_deploy/serving/web/publish.py``): the decoder at its own name, or under ``model/`` when that
name is a subfolder or one of the page's own files; a reduced manifest; ``site.json``; the page.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from vae_deploy.serving.web.contract import DecoderContract, check_export
from vae_deploy.serving.web.ortdist import ORT_FILES, ORT_WEB_VERSION, find_dist
from vae_deploy.serving.web.output import (
    GENERATOR,
    SITE_MARKER,
    SiteError,
    carry_over,
    check_out,
    make_temp,
    swap,
)
from vae_deploy.serving.web.publish import public_decoder, public_manifest

__all__ = ["GENERATOR", "SITE_MARKER", "SiteError", "SiteResult", "build_site", "site_config"]

STATIC_FILES = ("index.html", "app.js", "vae.js", "onnxscan.js", "pixels.js", "style.css")
MODEL_DIR = "model"
# Names the page owns: an export file by one of these names goes under MODEL_DIR.
RESERVED = frozenset({*STATIC_FILES, "ort", "manifest.json", SITE_MARKER, MODEL_DIR})
# Spatial latents: the largest height/width (in latent cells) the page decodes. An SD-style VAE
# (8x upsampling) at 32x32 latents is a 256x256 image: a few seconds per decode on WASM.
DEFAULT_MAX_LATENT_SIDE = 32


@dataclass(frozen=True)
class SiteResult:
    out_dir: Path
    contract: DecoderContract
    ort_dist: Path
    files: list[str]


def site_path(decoder: str) -> str:
    """Where the decoder goes in the site: its own name when that is a plain top-level name the
    page does not use, else ``model/<basename>``."""
    base = PurePosixPath(decoder.replace("\\", "/")).name
    return decoder if decoder == base and base not in RESERVED else f"{MODEL_DIR}/{base}"


def site_config(sha256: str, contract: DecoderContract, max_latent_side: int) -> dict[str, Any]:
    """``site.json``: what the page needs beside the manifest (which decoder, which limits)."""
    return {
        "generator": GENERATOR,
        "onnxruntime_web": ORT_WEB_VERSION,
        "decoder": {
            "file": site_path(contract.file),
            "sha256": sha256,
            "input": contract.input_name,
            "output": contract.output_name,
        },
        "limits": {"max_latent_side": max_latent_side, "max_batch": 64, "sliders": 16},
    }


def build_site(export_dir: str | Path, out: str | Path, *, ort_dist: str | Path | None = None,
               max_latent_side: int = DEFAULT_MAX_LATENT_SIDE) -> SiteResult:
    """Check ``export_dir`` and write the site to ``out``; raise a VaeDeployError before
    writing anything when the export, onnxruntime-web's files or ``out`` are not usable."""
    export_dir, out = Path(export_dir), Path(out)
    manifest, contract = check_export(export_dir)
    dist = find_dist(Path(ort_dist) if ort_dist else None)
    decoder = site_path(contract.file)
    written = [*STATIC_FILES, *(f"ort/{n}" for n in ORT_FILES), decoder, "manifest.json", SITE_MARKER]
    check_out(out, export_dir, {w.split("/")[0] for w in written})

    tmp = make_temp(out)
    try:
        static = resources.files("vae_deploy.serving.web") / "static"
        for name in STATIC_FILES:
            (tmp / name).write_bytes((static / name).read_bytes())
        (tmp / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(dist / name, tmp / "ort" / name)
        (tmp / decoder).parent.mkdir(exist_ok=True)
        data = public_decoder((export_dir / contract.file).read_bytes())
        (tmp / decoder).write_bytes(data)
        public = public_manifest(manifest, contract.file, decoder, data)
        (tmp / "manifest.json").write_text(json.dumps(public, indent=2) + "\n")
        cfg = {**site_config(public["files"][decoder]["sha256"], contract, max_latent_side), "files": written}
        (tmp / SITE_MARKER).write_text(json.dumps(cfg, indent=2) + "\n")
        carry_over(out, tmp, {w.split("/")[0] for w in written})
        swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return SiteResult(out, contract, dist, files)
