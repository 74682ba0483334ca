"""What the site publishes about the export, and nothing about the build machine.

* The decoder: the export's graph with each node's ``metadata_props`` and ``doc_string``
  removed. torch's exporter records a Python stack trace per node there
  (``pkg.torch.onnx.stack_trace``), i.e. the build machine's absolute source paths; the
  operators, weights and the model's own ``vae_deploy.*`` metadata are unchanged. The export's
  sha256 was checked before (``web/contract.py``); the page checks the published file's own
  sha256 (in ``manifest.json``, with the export's as ``export_sha256``).
* The manifest: ``format``, ``model`` and the decoder's entry under its site name, with every
  absolute path in them reduced to its last component (no ``source`` path).
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any


def public_decoder(data: bytes) -> bytes:
    """``data`` (one ONNX file, no external data) without per-node metadata and doc strings."""
    import onnx

    model = onnx.load_from_string(data)
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            _strip_node(node, graphs)
    for fn in model.functions:
        for node in fn.node:
            _strip_node(node, graphs)
    while graphs:  # subgraphs of function nodes
        g = graphs.pop()
        for node in g.node:
            _strip_node(node, graphs)
    return model.SerializeToString()


def _strip_node(node: Any, graphs: list[Any]) -> None:
    del node.metadata_props[:]
    node.doc_string = ""
    for attr in node.attribute:
        if attr.HasField("g"):
            graphs.append(attr.g)
        graphs.extend(attr.graphs)


def _scrub(value: Any) -> Any:
    """Absolute paths (the build machine's) become their last component."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive
                                   or value.startswith("~")):
        return PurePosixPath(value.replace("\\", "/")).name
    return value


def public_manifest(manifest: dict[str, Any], decoder: str, site_name: str, data: bytes) -> dict[str, Any]:
    """The manifest the page reads: format, model and the published decoder's entry."""
    listed = manifest["files"][decoder]
    entry = {k: listed[k] for k in ("role", "format", "precision") if k in listed}
    entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data), export_sha256=listed.get("sha256"))
    return _scrub({"format": manifest.get("format", {}), "model": manifest.get("model", {}),
                   "files": {site_name: entry}})
