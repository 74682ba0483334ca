"""The exported decoder in a web page: ``vae-deploy web EXPORT --out site/`` writes a static
folder (``index.html``, plain JavaScript, the decoder, its manifest and onnxruntime-web's WASM
files) that any static host serves. Nothing here imports torch; onnx is read only to check the
decoder's contract before a byte of the site is written.
"""

from __future__ import annotations

from vae_deploy.serving.web.ortdist import ORT_WEB_VERSION
from vae_deploy.serving.web.site import build_site

__all__ = ["ORT_WEB_VERSION", "build_site"]
