"""Write a Triton Inference Server model repository from an export folder.

The repository is what an operator would write by hand for a Triton fleet: the encoder and
decoder on the ONNX Runtime backend with dynamic batching, and ``vae_sampler``, a small
Python-backend model that draws z ~ N(0, I) and calls the decoder through BLS, so clients
can ask for samples directly. Every shape comes from the ONNX models' contract metadata;
nothing relies on Triton's auto-complete. The files are plain text and need no Triton
package to write (the tests parse them with Triton's own protobuf schema).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vae_deploy.artifacts import META_PREFIX, resolve_inside
from vae_deploy.errors import ArtifactError, ConfigError

ENCODER_MODEL = "vae_encoder"
DECODER_MODEL = "vae_decoder"
SAMPLER_MODEL = "vae_sampler"
MODELS = (ENCODER_MODEL, DECODER_MODEL, SAMPLER_MODEL)
KINDS = ("cpu", "gpu")
DEFAULT_MAX_BATCH = 256
# The dynamic batcher holds a request at most this long waiting for others to join its batch:
# the latency it can add is bounded by this, small next to a client's network round trip.
DEFAULT_MAX_DELAY_US = 100
# The sampler refuses requests for more samples than this (one response holds them all).
DEFAULT_MAX_SAMPLES = 65536
_SAMPLER_SOURCE = Path(__file__).with_name("triton_sampler.py")
META = META_PREFIX


@dataclass(frozen=True)
class GraphInfo:
    """What the repository needs from one ONNX file: tensor names and per-example dims."""

    file: Path
    input_name: str
    output_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # the contract's data shape (no batch axis); -1 = dynamic
    latent_shape: tuple[int, ...]
    external_data: tuple[str, ...]  # side files holding weights, relative to the ONNX file


def read_graph(path: Path, role: str) -> GraphInfo:
    """Names from the graph, dims from the contract metadata, checked against each other."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"cannot read ONNX file {str(path)!r}: {e}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in ("input_shape", "latent_shape") if META + k not in meta]
    if missing:
        raise ArtifactError(
            f"{str(path)!r} lacks the contract metadata {[META + k for k in missing]} (export it with vae-deploy)"
        )
    if meta.get(META + "role", role) != role:
        raise ArtifactError(f"{str(path)!r} is a {meta[META + 'role']} graph, expected the {role}")
    try:
        input_shape = _parse_shape(meta[META + "input_shape"])
        latent_shape = _parse_shape(meta[META + "latent_shape"])
    except ValueError as e:
        raise ArtifactError(f"{str(path)!r}: bad shape metadata: {e}") from None
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise ArtifactError(f"{str(path)!r} has {len(inputs)} inputs; the contract's {role} has exactly one")
    outputs = tuple(o.name for o in model.graph.output)
    expected_in, expected_out = (input_shape, [latent_shape] * len(outputs)) if role == "encoder" else (
        latent_shape, [input_shape] * len(outputs))
    _check_dims(path, inputs[0], expected_in)
    for o, shape in zip(model.graph.output, expected_out):
        _check_dims(path, o, shape)
    external = sorted({
        e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data if e.key == "location"
    })
    return GraphInfo(path, inputs[0].name, outputs, input_shape, latent_shape, tuple(external))


def _parse_shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in text.split(",") if v.strip())
    if not shape or any(d == 0 or d < -1 for d in shape):
        raise ValueError(f"{text!r} is not a shape of positive sizes (or -1 for dynamic)")
    return shape


def _check_dims(path: Path, value, expected: tuple[int, ...]) -> None:
    """The graph's static dims (after the batch axis) must match the metadata's."""
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim][1:]
    ok = len(dims) == len(expected) and all(g < 0 or e < 0 or g == e for g, e in zip(dims, expected))
    if not ok:
        raise ArtifactError(
            f"{str(path)!r}: {value.name!r} is [N, {', '.join(map(str, dims))}] in the graph but the metadata "
            f"says [N, {', '.join(map(str, expected))}]"
        )


# --- config.pbtxt ------------------------------------------------------------------------
def _dims(shape: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensors(kind: str, tensors: Sequence[tuple[str, str, Sequence[int], bool]]) -> str:
    blocks = []
    for name, dtype, shape, optional in tensors:
        lines = [f'    name: "{name}"', f"    data_type: {dtype}", f"    dims: {_dims(shape)}"]
        if optional:
            lines.append("    optional: true")
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def _instance_group(kind: str, count: int) -> str:
    return f"instance_group [\n  {{\n    count: {count}\n    kind: KIND_{kind.upper()}\n  }}\n]\n"


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Half and all of ``max_batch``: under load the batcher sends a batch as soon as one of
    these is queued instead of waiting out the delay; a lone request still goes after it."""
    return sorted({max(1, max_batch // 2), max_batch})


def onnx_config(name: str, graph: GraphInfo, role: str, *, max_batch: int, instances: int, kind: str,
                max_delay_us: int, preferred: Sequence[int], dynamic_batching: bool = True) -> str:
    """config.pbtxt of an ONNX Runtime backend model: dims exclude the batch axis."""
    item_in, item_out = (graph.input_shape, graph.latent_shape) if role == "encoder" else (
        graph.latent_shape, graph.input_shape)
    text = (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch}\n"
        + _tensors("input", [(graph.input_name, "TYPE_FP32", item_in, False)])
        + _tensors("output", [(o, "TYPE_FP32", item_out, False) for o in graph.output_names])
    )
    if dynamic_batching:
        text += (
            "dynamic_batching {\n"
            f"  preferred_batch_size: {_dims(preferred)}\n"
            f"  max_queue_delay_microseconds: {max_delay_us}\n"
            "}\n"
        )
    return text + _instance_group(kind, instances)


def has_sampler(decoder: GraphInfo) -> bool:
    """Sampling needs a fixed latent shape (a latent with dynamic axes has no size to draw)."""
    return all(d > 0 for d in decoder.latent_shape)


def sampler_config(decoder: GraphInfo, *, max_batch: int, instances: int, max_samples: int) -> str:
    """config.pbtxt of the Python-backend sampler: one request (n, optional seed) -> n samples.

    Not batched (``max_batch_size: 0``): each request asks for its own count; the decoder it
    calls batches concurrent samplers' chunks together. Its Python code runs on the CPU
    whatever device the decoder uses.
    """
    params = {
        "decoder_model": DECODER_MODEL,
        "decoder_input": decoder.input_name,
        "decoder_output": decoder.output_names[0],
        "latent_shape": ",".join(map(str, decoder.latent_shape)),
        "decoder_max_batch": str(max_batch),
        "max_samples": str(max_samples),
    }
    return (
        f'name: "{SAMPLER_MODEL}"\n'
        'backend: "python"\n'
        "max_batch_size: 0\n"
        + _tensors("input", [("n", "TYPE_INT64", [1], False), ("seed", "TYPE_INT64", [1], True)])
        + _tensors("output", [(decoder.output_names[0], "TYPE_FP32", [-1, *decoder.input_shape], False)])
        + _instance_group("cpu", instances)
        + "".join(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n' for k, v in params.items())
    )


# --- the repository ----------------------------------------------------------------------
def write_triton_repo(
    export_dir: str | Path,
    out: str | Path,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    instances: int = 1,
    kind: str = "gpu",
    max_delay_us: int = DEFAULT_MAX_DELAY_US,
    dynamic_batching: bool = True,
    preferred: Sequence[int] | None = None,
    precision: str = "fp32",
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> Path:
    """Write ``vae_encoder``, ``vae_decoder`` and ``vae_sampler`` into ``out``; return ``out``.

    The sampler is left out when the latent shape has dynamic axes (nothing to draw).

    ``dynamic_batching=False`` leaves it off (each request runs alone). The ONNX files
    are copied only after their manifest checksums match. ``out`` is replaced atomically; a
    folder holding anything but these models is refused rather than overwritten.
    """
    from vae_deploy.artifacts import load_manifest
    from vae_deploy.contract import check_export
    from vae_deploy.runtime.core import variant_file

    kind = kind.lower()
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    if max_batch < 1 or instances < 1 or max_samples < 1 or max_delay_us < 0:
        raise ConfigError(f"max_batch, instances and max_samples must be >= 1 and max_delay_us >= 0, got "
                          f"{max_batch}, {instances}, {max_samples}, {max_delay_us}")
    preferred = sorted(set(preferred)) if preferred else preferred_batch_sizes(max_batch)
    if any(p < 1 or p > max_batch for p in preferred):
        raise ConfigError(f"preferred batch sizes must lie in [1, max_batch={max_batch}], got {preferred}")

    export_dir, out = Path(export_dir), Path(out)
    manifest = load_manifest(export_dir, verify=False)
    files = {role: variant_file(manifest, role, precision) for role in ("encoder", "decoder")}
    check_export(export_dir, manifest, list(files.values()))  # paths, checksums, random ops, shapes
    graphs = {role: read_graph(export_dir / name, role) for role, name in files.items()}
    if graphs["encoder"].latent_shape != graphs["decoder"].latent_shape or (
            graphs["encoder"].input_shape != graphs["decoder"].input_shape):
        raise ArtifactError(f"{str(export_dir)!r}: encoder and decoder metadata disagree on the shapes")
    _check_target(out)

    common = {"max_batch": max_batch, "instances": instances, "kind": kind, "max_delay_us": max_delay_us,
              "preferred": preferred, "dynamic_batching": dynamic_batching}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, role in ((ENCODER_MODEL, "encoder"), (DECODER_MODEL, "decoder")):
            _write_model(tmp / name, onnx_config(name, graphs[role], role, **common), graphs[role])
        if has_sampler(graphs["decoder"]):
            sampler = tmp / SAMPLER_MODEL
            (sampler / "1").mkdir(parents=True)
            (sampler / "config.pbtxt").write_text(
                sampler_config(graphs["decoder"], max_batch=max_batch, instances=instances, max_samples=max_samples))
            shutil.copyfile(_SAMPLER_SOURCE, sampler / "1" / "model.py")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_model(folder: Path, config: str, graph: GraphInfo) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    shutil.copyfile(graph.file, folder / "1" / "model.onnx")
    for rel in graph.external_data:  # large models keep weights beside the graph
        # check_export refused locations outside the export folder; check again here, at the
        # point of reading, so this function is safe on its own too.
        src = resolve_inside(graph.file.parent, rel, f"{graph.file.name} external data")
        if not src.is_file():
            raise ArtifactError(f"{str(graph.file)!r} refers to external data {rel!r}, which is missing")
        (folder / "1" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / "1" / rel)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in MODELS)
        if foreign:
            raise ConfigError(
                f"--out {str(out)!r} holds {foreign[:5]}, which are not this tool's models; "
                "choose an empty or new folder"
            )


def _swap_into_place(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
