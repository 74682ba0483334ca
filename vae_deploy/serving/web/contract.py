"""What the page relies on, checked in Python before the site is written: the export's
manifest and checksums, the decoder file inside the export folder, its declared shapes and
metadata agreeing with the manifest, and no random operator. The page re-checks the sha256 and
the metadata in the browser; this catches a bad export before anything is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_deploy.artifacts import (
    ExportSpec,
    load_manifest,
    spec_from_manifest,
)
from vae_deploy.errors import ArtifactError


@dataclass(frozen=True)
class DecoderContract:
    """The decoder file and the shapes the page works with (per example, no batch axis)."""

    file: str
    input_name: str
    output_name: str
    latent_shape: tuple[int, ...]  # -1 marks a dynamic (spatial) axis
    output_shape: tuple[int, ...]
    example_latent_shape: tuple[int, ...]
    example_output_shape: tuple[int, ...]
    spec: ExportSpec

    @property
    def spatial(self) -> bool:
        return len(self.latent_shape) > 1


def decoder_file(manifest: dict[str, Any]) -> str:
    """The fp32 decoder ONNX file listed in the manifest (the page runs fp32 on WASM)."""
    for name, entry in manifest.get("files", {}).items():
        if entry.get("format") == "onnx" and entry.get("role") == "decoder" and entry.get("precision", "fp32") == "fp32":
            return name
    if "decoder.onnx" in manifest.get("files", {}):
        return "decoder.onnx"
    raise ArtifactError("the manifest lists no fp32 decoder ONNX file (expected decoder.onnx)")


def check_export(folder: str | Path) -> tuple[dict[str, Any], DecoderContract]:
    """Manifest, checksums and the decoder's shapes and metadata; raise ArtifactError on any
    disagreement. Returns the manifest and the contract the page is built for."""
    from vae_deploy.contract import check_export as check_export_contract
    from vae_deploy.contract import load_graph

    folder = Path(folder)
    manifest = load_manifest(folder, verify=False)
    name = decoder_file(manifest)
    # the shared contract: inside the folder, checksum, no random op, shapes and metadata agree
    check_export_contract(folder, manifest, [name])
    spec = spec_from_manifest(manifest)
    from vae_deploy.contract import external_data_locations

    model = load_graph(folder / name)
    if external_data_locations(model):
        raise ArtifactError(f"{name} keeps weights in external data files ({', '.join(external_data_locations(model))}); "
                            "the web page loads and checks one file: re-export the decoder as a single ONNX file")
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ArtifactError(f"{name} has inputs {[i.name for i in inputs]} and outputs "
                            f"{[o.name for o in graph.output]}; expected one latent input and one output")

    contract = DecoderContract(
        file=name, input_name=inputs[0].name, output_name=graph.output[0].name,
        latent_shape=tuple(spec.latent_shape), output_shape=tuple(spec.input_shape),
        example_latent_shape=spec.concrete_latent_shape, example_output_shape=spec.concrete_input_shape,
        spec=spec,
    )
    return manifest, contract
