"""The export contract every consumer enforces at load time, in one place (no torch).

An export folder is trusted only as far as these checks go, so ``Runtime.load``, ``verify``,
``triton-repo``, ``serve`` (and ``vae-deploy web``) all call :func:`check_export` before
they open a graph:

* **paths**: every file the manifest lists, and every ONNX ``external_data`` location, is a
  relative path that resolves (symlinks followed) to a regular file inside the export
  folder: no absolute paths, no ``..``, no symlink out, no FIFO or device;
* **checksums**: each file's size and SHA-256 match the manifest (external data included:
  a side file the manifest does not list is refused, as its bytes are unchecked);
* **determinism**: no random operator anywhere in a graph (``RandomNormal``...,
  ``Multinomial``, ``Bernoulli``, a ``Dropout`` with a training-mode input): the same ``z``
  must always decode to the same image, and sampling noise is drawn by the host;
* **shapes**: each graph's metadata agrees with the manifest, and its declared input and
  output shapes agree with the contract (encoder ``x -> mu, logvar``, decoder ``z -> x_hat``).

The graph scan reads each ONNX file once with ``load_external_data=False`` (protobuf only,
weights stay on disk): a load-time cost, never on the per-call path. ``onnx`` is imported
lazily, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from vae_deploy.artifacts import META_PREFIX, file_status, parse_shape, resolve_inside
from vae_deploy.errors import ArtifactError

if TYPE_CHECKING:
    import onnx

# Operators whose output is not a function of their inputs. Dropout is random only in
# training mode (its optional third input), handled separately.
RANDOM_OPS = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})


# --- paths -----------------------------------------------------------------------------
def check_manifest_paths(folder: str | Path, manifest: dict[str, Any]) -> None:
    for name in manifest.get("files", {}):
        resolve_inside(folder, name, "manifest file")


# --- graphs ----------------------------------------------------------------------------
def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _nodes(model: onnx.ModelProto) -> Iterator[tuple[str, Any]]:
    for g in _graphs(model.graph):
        for node in g.node:
            yield g.name, node
    for fn in model.functions:  # local functions can hide ops too
        for node in fn.node:
            yield f"function {fn.name}", node


def random_ops(model: onnx.ModelProto) -> list[str]:
    """Every random operator in the model, as ``"OpType (node name)"``; empty when none."""
    found = []
    constants = {t.name: t for g in _graphs(model.graph) for t in g.initializer}
    for _, node in _nodes(model):
        if node.op_type in RANDOM_OPS:
            found.append(f"{node.op_type} ({node.name or 'unnamed'})")
        elif node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = constants.get(node.input[2])
            if flag is None or _truthy(flag):
                found.append(f"Dropout in training mode ({node.name or 'unnamed'})")
    return found


def _truthy(tensor: Any) -> bool:
    from onnx import numpy_helper

    try:
        return bool(numpy_helper.to_array(tensor).any())
    except Exception:
        return True  # unreadable: assume the worst


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """Every ``external_data`` location the model's tensors refer to (initializers, constant
    attributes, subgraphs), relative to the ONNX file's folder."""
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors

    return sorted({e.value for t in _get_all_tensors(model) if t.data_location == TensorProto.EXTERNAL
                   for e in t.external_data if e.key == "location"})


def _declared(value: Any) -> tuple[int, ...]:
    """Per-example dims of a graph input/output (batch axis dropped); -1 where symbolic."""
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])


def _fmt(shape: Sequence[int]) -> str:
    return "[N, " + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _agrees(declared: Sequence[int], want: Sequence[int]) -> bool:
    return len(declared) == len(want) and all(d < 0 or w < 0 or d == w for d, w in zip(declared, want))


def graph_problems(model: onnx.ModelProto, name: str, role: str | None, input_shape: Sequence[int],
                   latent_shape: Sequence[int]) -> list[str]:
    """Random ops, metadata and declared input/output shapes of one graph against the contract."""
    problems = [f"{name}: random operator {op}: outputs would differ between runs (sampling noise belongs in the host)"
                for op in random_ops(model)]
    meta = {p.key: p.value for p in model.metadata_props}
    for key, want in (("input_shape", input_shape), ("latent_shape", latent_shape)):
        got = meta.get(META_PREFIX + key)
        try:
            ok = got is not None and parse_shape(got) == tuple(want)
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"{name}: metadata {key} is {got!r}, manifest says {','.join(map(str, want))!r}")
    meta_role = meta.get(META_PREFIX + "role")
    if role and meta_role and meta_role != role:
        problems.append(f"{name}: metadata role is {meta_role!r}, manifest says {role!r}")
    role = role or meta_role
    if role not in ("encoder", "decoder"):
        return problems
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    want_in, want_out, n_out = ((input_shape, latent_shape, 2) if role == "encoder" else (latent_shape, input_shape, 1))
    if len(inputs) != 1:
        problems.append(f"{name}: {len(inputs)} graph inputs, the {role} contract has exactly one")
    elif not _agrees(_declared(inputs[0]), want_in):
        problems.append(f"{name}: graph input {inputs[0].name!r} is {_fmt(_declared(inputs[0]))}, "
                        f"contract says {_fmt(want_in)}")
    outputs = list(model.graph.output)
    if len(outputs) != n_out:
        problems.append(f"{name}: {len(outputs)} graph outputs, the {role} contract has {n_out}")
    for out in outputs[:n_out]:
        if not _agrees(_declared(out), want_out):
            problems.append(f"{name}: graph output {out.name!r} is {_fmt(_declared(out))}, contract says {_fmt(want_out)}")
    return problems


def load_graph(path: Path) -> onnx.ModelProto:
    """The protobuf only (weights in external files stay on disk); ArtifactError if unparsable."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"{path.name}: cannot be parsed as ONNX ({type(e).__name__}: {str(e)[:200]})") from None


# --- the whole folder ------------------------------------------------------------------
def contract_problems(folder: str | Path, manifest: dict[str, Any], files: Iterable[str] | None = None,
                      *, checksums: bool = True) -> list[str]:
    """Every contract problem of the listed ONNX ``files`` (default: all the manifest lists),
    one line each; empty when the export may be used. Never raises for a bad export."""
    folder = Path(folder)
    listed = manifest.get("files", {})
    names = list(listed) if files is None else list(files)
    problems: list[str] = []
    for name in listed:
        try:
            resolve_inside(folder, name, "manifest file")
        except ArtifactError as e:
            problems.append(str(e))
    if problems:
        return problems  # never touch (hash, parse) a file outside the folder
    if checksums:
        problems += [f"{n}: {s}" for n, s in file_status(folder, manifest, names).items() if s != "ok"]
    model_section = manifest.get("model", {})
    input_shape, latent_shape = tuple(model_section.get("input_shape", ())), tuple(model_section.get("latent_shape", ()))
    for name in names:
        entry = listed.get(name, {})
        path = folder / name
        if entry.get("format") != "onnx" or not path.is_file():
            continue
        try:
            model = load_graph(path)
        except ArtifactError as e:
            problems.append(str(e))
            continue
        for loc in external_data_locations(model):
            rel = str(PurePosixPath(name).parent / loc)  # onnx resolves it beside the graph
            try:
                resolve_inside(folder, rel, f"{name} external data")
            except ArtifactError as e:
                problems.append(str(e))
                continue
            if rel not in listed:
                problems.append(f"{name} external data {loc!r} is not listed in the manifest, so its checksum "
                                "cannot be checked")
            elif checksums and rel not in names:
                problems += [f"{n}: {s}" for n, s in file_status(folder, manifest, [rel]).items()
                             if s != "ok"]
        problems += graph_problems(model, name, entry.get("role"), input_shape, latent_shape)
    return problems


def check_export(folder: str | Path, manifest: dict[str, Any], files: Iterable[str] | None = None,
                 *, checksums: bool = True) -> None:
    """Raise one ArtifactError listing every contract problem (see the module docstring).

    The one call a consumer makes before trusting an export: ``files`` are the manifest
    names it will read (default: all); ``checksums=False`` skips hashing when the caller
    already did. For ``vae-deploy web`` and other consumers::

        manifest = load_manifest(folder, verify=False)
        check_export(folder, manifest, [encoder_name, decoder_name])
    """
    problems = contract_problems(folder, manifest, files, checksums=checksums)
    if problems:
        raise ArtifactError(f"export folder {str(folder)!r} failed its checksum and contract check:\n  "
                            + "\n  ".join(problems))
