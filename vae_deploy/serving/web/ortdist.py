"""Where onnxruntime-web's files come from: the npm package pinned in ``web/package.json``
(installed by ``make web-deps``, i.e. ``npm ci`` in ``web/``) or a folder given with
``--ort-dist``. The site never fetches them from a third-party host at run time, so they must
be found here, at build time, with a version the page was written against.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vae_deploy.errors import VaeDeployError

# Must equal the exact version in web/package.json (a test checks both agree).
ORT_WEB_VERSION = "1.31.1"

# The WASM-only build: the ES module bundle, the emscripten loader it imports and the binary.
# The threaded binary also runs single-threaded when the page is not cross-origin isolated.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

REPO_WEB = Path(__file__).resolve().parents[3] / "web"
INSTALL_HINT = (
    f"install onnxruntime-web {ORT_WEB_VERSION} with `make web-deps` (npm ci in web/) in a source checkout, "
    f"or `npm install onnxruntime-web@{ORT_WEB_VERSION}` and pass --ort-dist node_modules/onnxruntime-web/dist"
)


class OrtDistError(VaeDeployError, FileNotFoundError):
    """onnxruntime-web's files are missing or of another version than the page expects."""


def candidates() -> list[Path]:
    """Folders searched when no --ort-dist is given, in order."""
    out = []
    if os.environ.get("VAE_DEPLOY_ORT_DIST"):
        out.append(Path(os.environ["VAE_DEPLOY_ORT_DIST"]))
    out += [REPO_WEB / "node_modules/onnxruntime-web/dist", Path.cwd() / "node_modules/onnxruntime-web/dist"]
    return out


def dist_version(dist: Path) -> str | None:
    """The version in the npm package.json beside ``dist/``; None when there is none (a bare copy)."""
    pkg = dist.parent / "package.json"
    try:
        return str(json.loads(pkg.read_text()).get("version"))
    except (OSError, ValueError):
        return None


def find_dist(ort_dist: Path | None = None) -> Path:
    """The folder holding ``ORT_FILES``; raise OrtDistError saying how to install them."""
    search = [Path(ort_dist)] if ort_dist else candidates()
    for dist in search:
        if all((dist / f).is_file() for f in ORT_FILES):
            version = dist_version(dist)
            if version is not None and version != ORT_WEB_VERSION:
                raise OrtDistError(
                    f"onnxruntime-web in {str(dist)!r} is version {version}; expected {ORT_WEB_VERSION} ({INSTALL_HINT})"
                )
            return dist
    if ort_dist:
        missing = [f for f in ORT_FILES if not (Path(ort_dist) / f).is_file()]
        raise OrtDistError(f"--ort-dist {str(ort_dist)!r} lacks {', '.join(missing)}; expected onnxruntime-web's "
                           f"dist folder ({INSTALL_HINT})")
    raise OrtDistError(f"onnxruntime-web's files were not found (looked in {', '.join(map(str, search))}): {INSTALL_HINT}")
