"""`vae-deploy info EXPORT_DIR`: the manifest and graph signatures, readable.

Its own module (not in ``exporters``, whose package imports torch) so that ``info`` works in
the lean install, where exports are run but not made.
"""

from __future__ import annotations

from pathlib import Path

from vae_deploy.artifacts import load_manifest


def describe_export(folder: str | Path) -> str:
    """Human-readable summary for `vae-deploy info EXPORT_DIR`: manifest and graph signatures."""
    from vae_deploy.contract import load_graph

    folder = Path(folder)
    manifest = load_manifest(folder, verify=True)
    lines = [f"export folder {folder}  (format v{manifest['format']['version']}, created {manifest.get('created')})"]
    m = manifest["model"]
    lines.append(f"model: {m['family']}  input {m['input_shape']}  latent {m['latent_shape']}  likelihood {m['likelihood']}")
    if m.get("dynamic_axes", ["batch"]) != ["batch"] or m.get("scaling_factor", 1.0) != 1.0:
        lines.append(f"dynamic axes {m.get('dynamic_axes')}; example input {m.get('example_input_shape')} -> latent "
                     f"{m.get('example_latent_shape')}; latent scaling factor {m.get('scaling_factor')}")
    if (m.get("config") or {}).get("adapter"):
        c = m["config"]
        lines.append(f"your own model: {c.get('class')} via {c.get('encode')} / {c.get('decode')}")
    src = manifest.get("source", {})
    lines.append(f"source: {src.get('path')}  sha256 {str(src.get('sha256'))[:16]}...")
    ex = manifest.get("export", {})
    lines.append(f"exporter: {ex.get('onnx_exporter')} opset {ex.get('opset')}; torchscript: {ex.get('torchscript')}")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items()))
    lines.append("files (checksums verified):")
    for name, e in manifest["files"].items():
        lines.append(f"  {name:<24} {e['size']:>10,d} B  {e['role']:<8} {e['format']:<12} {e['precision']:<9} {e['sha256'][:16]}...")
        if e["format"] == "onnx":
            model = load_graph(folder / name)

            def sig(values) -> str:
                out = []
                for v in values:
                    dims = [d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim]
                    out.append(f"{v.name}[{', '.join(dims)}]")
                return ", ".join(out)

            lines.append(f"      {sig(model.graph.input)} -> {sig(model.graph.output)}")
    parity = manifest.get("parity")
    if parity:
        lines.append(f"parity at export: {'PASS' if parity.get('passed') else 'FAIL'}  "
                     f"max abs error {parity.get('max_abs_error', float('nan')):.3g}")
    return "\n".join(lines)


def describe_onnx(path: str | Path) -> str:
    """`vae-deploy info FILE.onnx`: signature and contract metadata of one graph (ArtifactError
    when it does not parse)."""
    from vae_deploy.contract import load_graph, random_ops

    model = load_graph(Path(path))

    def sig(values) -> str:
        return ", ".join(f"{v.name}[{', '.join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)}]"
                         for v in values)

    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    lines = [f"ONNX file {path}: producer {model.producer_name} {model.producer_version}; opsets {opsets}",
             f"  {sig(model.graph.input)} -> {sig(model.graph.output)}"]
    lines += [f"  {p.key} = {p.value}" for p in model.metadata_props]
    rand = random_ops(model)
    if rand:
        lines.append(f"  random operators (break the contract): {', '.join(rand)}")
    return "\n".join(lines)
