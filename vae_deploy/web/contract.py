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
    META_PREFIX,
    ExportSpec,
    load_manifest,
    parse_shape,
    spec_from_manifest,
    verify_files,
)
from vae_deploy.errors import ArtifactError

# Operators that would make decode non-deterministic (the export contract forbids them).
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Multinomial", "Bernoulli"})


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


def inside(folder: Path, name: str) -> Path:
    """``folder/name``, refusing a name that leaves the export folder (absolute, ``..``, links)."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ArtifactError(f"manifest file name {name!r} resolves outside the export folder {str(folder)!r}")
    return path


def _dims(value_info: Any) -> tuple[int | str, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in value_info.type.tensor_type.shape.dim)


def _agree(declared: tuple[int | str, ...], expected: tuple[int, ...]) -> bool:
    return len(declared) == len(expected) and all(
        not isinstance(d, int) or e < 0 or d == e for d, e in zip(declared, expected))


def check_graph_contract(folder: Path, manifest: dict[str, Any], name: str) -> Any:
    """THE place the shared graph-contract check plugs in.

    The reliability work (issue 14) adds one check in ``vae_deploy.artifacts`` used by every
    consumer (paths inside the folder, no random operator, declared shapes). Until it lands this
    does the path and random-operator parts itself; replace the body with that call at merge.
    Returns the loaded ONNX model (without weights' external data) for the shape checks.
    """
    import onnx

    path = inside(folder, name)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for a damaged file
        raise ArtifactError(f"{name} is not a readable ONNX model: {e}") from None
    random = sorted({n.op_type for n in model.graph.node if n.op_type in RANDOM_OPS})
    if random:
        raise ArtifactError(f"{name} contains random operators {random}; the export contract forbids them")
    return model


def check_export(folder: str | Path) -> tuple[dict[str, Any], DecoderContract]:
    """Manifest, checksums and the decoder's shapes and metadata; raise ArtifactError on any
    disagreement. Returns the manifest and the contract the page is built for."""
    folder = Path(folder)
    manifest = load_manifest(folder, verify=False)
    name = decoder_file(manifest)
    inside(folder, name)
    verify_files(folder, manifest, only=[name])
    spec = spec_from_manifest(manifest)
    model = check_graph_contract(folder, manifest, name)

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ArtifactError(f"{name} has inputs {[i.name for i in inputs]} and outputs "
                            f"{[o.name for o in graph.output]}; expected one latent input and one output")
    z_dims, x_dims = _dims(inputs[0]), _dims(graph.output[0])
    for what, declared, expected in (("input", z_dims, spec.latent_shape), ("output", x_dims, spec.input_shape)):
        if not _agree(declared[1:], tuple(expected)):
            raise ArtifactError(f"{name} {what} is declared as [N, {', '.join(map(str, declared[1:]))}] in the graph "
                                f"but the manifest says [N, {', '.join(map(str, expected))}]")

    meta = {p.key: p.value for p in model.metadata_props}
    for key, expected in (("latent_shape", spec.latent_shape), ("input_shape", spec.input_shape)):
        have = meta.get(META_PREFIX + key)
        if have is None:
            raise ArtifactError(f"{name} lacks the metadata key {META_PREFIX + key!r} (the page reads its contract there)")
        if parse_shape(have) != tuple(expected):
            raise ArtifactError(f"{name} metadata {META_PREFIX + key} is [{have}] but the manifest says "
                                f"[{', '.join(map(str, expected))}]")

    contract = DecoderContract(
        file=name, input_name=inputs[0].name, output_name=graph.output[0].name,
        latent_shape=tuple(spec.latent_shape), output_shape=tuple(spec.input_shape),
        example_latent_shape=spec.concrete_latent_shape, example_output_shape=spec.concrete_input_shape,
        spec=spec,
    )
    return manifest, contract
