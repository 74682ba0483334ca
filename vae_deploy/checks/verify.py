"""``vae-deploy verify``: integrity, contract and parity of an export folder, in one report.

Each problem is named separately so the user knows what happened: a file whose checksum no
longer matches (modified after export), a file that does not load (truncated), graphs
exported from a different checkpoint, a shape contract that disagrees with the model, and
numbers that disagree with the reference beyond tolerance.

The reference is the eager model when torch is installed (the ``export`` extra). In the lean
install it is ``ort-cpu`` on the fp32 graphs, which the other backends and precision variants
are compared with; the report says there is no eager reference. The encoder's inputs are
labelled by what they really are: ``real`` only for real data (the training data's test
split, or ``--data FILE``), ``random`` for the uniform stand-in, with a warning.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vae_deploy.artifacts import (
    META_PREFIX,
    ExportSpec,
    file_status,
    load_manifest,
    spec_from_manifest,
)
from vae_deploy.checks.parity import compare_backends, input_range, uniform_inputs
from vae_deploy.checks.report import VerifyResult, format_verification  # noqa: F401 - part of the API
from vae_deploy.errors import ArtifactError
from vae_deploy.extras import available
from vae_deploy.tolerance import tolerance_for

if TYPE_CHECKING:
    from vae_deploy.exporters.spec import Exportable
    from vae_deploy.runtime.backends import Backend

SCHEMA = "vae-deploy-verify/1"
DEFAULT_BATCH_SIZES = (1, 7, 64, 257)
NO_EAGER = ("torch is not installed, so there is no eager reference: backends and precision variants are "
            "compared with ort-cpu on the fp32 graphs (install vae-deploy[export] to check against eager)")


def check_integrity(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = file_status(folder, manifest)
    return {"passed": all(v == "ok" for v in files.values()), "files": files}


def check_contract(folder: Path, manifest: dict[str, Any], reference: Exportable | None) -> dict[str, Any]:
    """The export contract (:func:`vae_deploy.contract.contract_problems`: paths inside the
    folder, no random ops, metadata and declared input/output shapes against the manifest),
    and the reference model against the manifest and metadata."""
    from vae_deploy.contract import contract_problems, load_graph

    problems = contract_problems(folder, manifest, checksums=False)  # checksums: the integrity section
    m = manifest["model"]
    want_in, want_lat = tuple(m["input_shape"]), tuple(m["latent_shape"])
    if reference is not None:
        ref = reference.spec
        if tuple(ref.input_shape) != want_in or tuple(ref.latent_shape) != want_lat:
            problems.append(f"the reference model has input {list(ref.input_shape)} / latent {list(ref.latent_shape)}, "
                            f"the export says input {list(want_in)} / latent {list(want_lat)}")
        if ref.source_sha256 and manifest.get("source", {}).get("sha256") not in ("", None, ref.source_sha256):
            problems.append(
                f"exported from a different checkpoint: manifest source sha256 "
                f"{manifest['source']['sha256'][:12]}..., reference checkpoint {ref.source_sha256[:12]}...")
        if ref.source_sha256 and not any(p.startswith("manifest file") for p in problems):
            for name, entry in manifest.get("files", {}).items():
                if entry.get("format") != "onnx" or not (folder / name).is_file():
                    continue
                try:
                    meta = {p.key: p.value for p in load_graph(folder / name).metadata_props}
                except ArtifactError:
                    continue  # contract_problems reported it
                src = meta.get(META_PREFIX + "source_sha256")
                if src and src != ref.source_sha256:
                    problems.append(f"{name}: exported from a different checkpoint (metadata source sha256 "
                                    f"{src[:12]}..., reference {ref.source_sha256[:12]}...)")
    return {"passed": not problems, "problems": problems}


def _reference_from(manifest: dict[str, Any], checkpoint: str | Path | None) -> tuple[Exportable, str]:
    """The eager model the manifest records: its checkpoint, or the ``--model`` factory and
    weights an own-model export was made from, when they still resolve."""
    from vae_deploy.adapters import from_checkpoint
    from vae_deploy.training.checkpoint import load_checkpoint

    config = manifest["model"].get("config") or {}
    adapter = config.get("adapter")
    folder = (config.get("diffusers") or {}).get("path")
    if adapter and checkpoint is None and folder:
        return _diffusers_reference(manifest, folder, config["diffusers"].get("subfolder"))
    if adapter and checkpoint is None:
        recorded = _recorded_user_model(manifest)
        if recorded is not None:
            return recorded
        raise ArtifactError(
            f"this export came from your own module (adapter {adapter!r}, class {config.get('class')}); "
            + (f"its factory {config['factory']!r} or weights {manifest.get('source', {}).get('path')!r} no longer "
               "resolve: " if config.get("factory") else "the manifest records no factory to rebuild it from: ")
            + "verify it with vae_deploy.verify(module, export_dir, example_input=x), or `vae-deploy verify DIR "
            "--model package.module:factory --weights state_dict.pt`"
        )
    path = checkpoint or manifest.get("source", {}).get("path")
    if not path:
        raise ArtifactError("no reference checkpoint: the manifest records none; pass --checkpoint")
    if not Path(path).is_file():
        if checkpoint is not None:
            raise ArtifactError(f"the reference checkpoint {str(path)!r} does not exist or is not a file")
        raise ArtifactError(f"the reference checkpoint {str(path)!r} recorded in the manifest is gone; pass --checkpoint")
    return from_checkpoint(load_checkpoint(path)), str(path)


def _recorded_user_model(manifest: dict[str, Any]) -> tuple[Exportable, str] | None:
    """Rebuild a ``--model`` export's module from the factory and weights the manifest records."""
    config = manifest["model"].get("config") or {}
    factory, weights = config.get("factory"), manifest.get("source", {}).get("path")
    if not factory or not weights or not Path(weights).is_file():
        return None
    from vae_deploy.adapters.user_code import user_exportable

    folder = config.get("factory_dir")
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    model = manifest["model"]
    shape = tuple(model.get("example_input_shape") or model["input_shape"])
    try:
        exp = user_exportable(factory, weights, input_shape=shape, likelihood=model.get("likelihood"),
                              latent_dim=config.get("factory_latent_dim"))
    except Exception:  # the factory moved or changed: fall back to asking for --model
        return None
    return exp, f"{factory} with {weights}"


def load_inputs(spec: ExportSpec, data: str | Path | None = None, example_x: Any = None,
                n: int = 256) -> tuple[np.ndarray, str, str, str | None]:
    """(inputs, label, description, warning) for the encoder cases.

    ``--data FILE`` first, then the training data the checkpoint records (resolved from its
    absolute path), then the examples given to ``vae_deploy.checks.verify``; otherwise seeded uniform
    [0, 1) inputs labelled ``random``, with a warning: they exercise the graphs, not accuracy."""
    from vae_deploy.training.data import dataset_from_spec, load_array_file

    bernoulli = spec.likelihood == "bernoulli"
    shape = tuple(d if d > 0 else 16 for d in spec.concrete_input_shape)
    if data is not None:
        x = load_array_file(data, bernoulli=bernoulli)
        if x.shape[1:] != shape and x.ndim == 2 and x.shape[1] == int(np.prod(shape)):
            x = x.reshape(-1, *shape)
        if x.shape[1:] != shape and -1 not in spec.input_shape:
            raise ArtifactError(f"--data {str(data)!r} holds examples of shape {list(x.shape[1:])}; the export "
                                f"takes {list(spec.input_shape)}")
        return x, "real", f"{len(x)} examples from {str(data)!r} (--data)", None
    problem = None
    if spec.data_spec:
        s = spec.data_spec
        try:
            ds = dataset_from_spec(s, bernoulli=bernoulli)
            return ds.test, "real", f"test split of {s['name']!r} (seed {s['seed']}, fraction {s['test_fraction']})", None
        except ModuleNotFoundError as e:
            from vae_deploy.extras import extra_for

            extra = extra_for(e.name or "", "train")
            problem = (f"the training data {s['name']!r} needs {e.name}, which is not installed here"
                       + (f" (pip install 'vae-deploy[{extra}]')" if extra else ""))
        except Exception as e:  # the data may be gone on this machine: fall through, but say so loudly
            problem = f"the training data {s.get('path') or s['name']!r} was not found or changed ({e})"
    rng = np.random.default_rng(0)
    low, high = input_range(spec)
    span = f"[{low:g}, {high:g})"
    # a foreign model's example input (images the user gave); ours have the data spec instead
    if spec.adapter and example_x is not None and hasattr(example_x, "detach") \
            and example_x.ndim == len(spec.input_shape) + 1:
        given = example_x.detach().to("cpu").float().numpy()[:8]
        extra = uniform_inputs(rng, (max(0, 8 - len(given)), *given.shape[1:]), spec)
        return (np.concatenate([given, extra]), "example",
                f"the {len(given)} example inputs given, then seeded uniform {span} inputs", problem)
    warning = (problem or "no real data is recorded for this export") + (
        f": the encoder is checked on uniform {span} random inputs (rows labelled 'random'), which exercise the "
        "graphs but say nothing about accuracy on real data; pass --data FILE (.npy/.npz) to check real examples")
    return uniform_inputs(rng, (n, *shape), spec), "random", f"uniform {span} random inputs, seed 0", warning


def _diffusers_reference(manifest: dict[str, Any], folder: str, subfolder: str | None) -> tuple[Exportable, str]:
    """The diffusers folder the export came from, probed at the export's example size."""
    from vae_deploy.adapters import from_diffusers

    if not Path(folder).is_dir():
        raise ArtifactError(f"the diffusers folder {folder!r} recorded in the manifest is gone; pass --diffusers FOLDER")
    m = manifest["model"]
    config = m.get("config") or {}
    names = {k: config.get(f"{k}_fn") for k in ("encode", "decode")}
    exp = from_diffusers(folder, subfolder, input_shape=tuple(m["example_input_shape"]),
                         likelihood=m.get("likelihood") if config.get("likelihood_stated") else None,
                         encode_fn=names["encode"], decode_fn=names["decode"])
    return exp, exp.spec.source_path


def backend_names(manifest: dict[str, Any], *, torch_ok: bool, eager: bool,
                  engines: Sequence[str] | None = None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """[(name, precision)] to check (on ``engines``; default: every installed one) and
    {name: why not} for the ones this machine cannot run."""
    from vae_deploy.runtime.engines import available_engines, backend_label
    from vae_deploy.runtime.engines.cpu import bf16_refusal
    from vae_deploy.runtime.providers import provider_works

    files = manifest.get("files", {})
    out: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}
    if "encoder.ts" in files and "decoder.ts" in files and not engines:  # --engine narrows to that engine
        if torch_ok:
            out.append(("torchscript", "fp32"))
        else:
            skipped["torchscript"] = "needs torch: pip install 'vae-deploy[export]'"
    precisions = sorted({e.get("precision", "fp32") for e in files.values() if e.get("format") == "onnx"},
                        key=lambda p: (p != "fp32", p))
    if engines and "openvino" in engines and "openvino" not in available_engines():
        from vae_deploy.runtime.engines.openvino import import_openvino

        import_openvino()  # raises the one clear error naming the extra
    combos = [("onnxruntime", prov, prec) for prov in ["cpu"] + (["cuda"] if provider_works("cuda") else [])
              for prec in precisions]
    if "openvino" in available_engines():  # the export's own fp32 graph at bf16 where bf16 is native
        ov_precisions = [p for p in precisions if p in ("fp32", "fp32-fast", "int8")]
        if "fp32" in precisions and bf16_refusal() is None:
            ov_precisions.append("bf16")
        combos += [("openvino", "cpu", prec) for prec in ov_precisions]
    for engine, prov, prec in combos:
        if engines is not None and engine not in engines:
            continue
        name = backend_label(engine, prov, prec)
        if not eager and name == "ort-cpu":
            continue  # the reference itself
        out.append((name, prec))
    return out, skipped


def _open(folder: Path, name: str, precision: str, spec: ExportSpec) -> Backend:
    if name == "torchscript":
        import torch

        from vae_deploy.runtime.backends import TorchBackend

        return TorchBackend(torch.jit.load(str(folder / "encoder.ts")), torch.jit.load(str(folder / "decoder.ts")),
                            spec, name="torchscript")
    from vae_deploy.runtime.core import Runtime

    engine = "openvino" if name.startswith("openvino-") else "onnxruntime"
    provider = name.split("-")[1]
    return Runtime.load(folder, engine=engine, provider=provider, precision=precision, verify_checksums=False)


def check_runs(backend: Backend, x_data: np.ndarray, batch_sizes: Sequence[int]) -> dict[str, Any]:
    """What can be checked with one backend and no reference: every standard case runs and
    gives finite outputs of the contract's shapes. Not parity: the report says so."""
    from vae_deploy.checks.parity import _run, concrete_latent_shape, make_cases

    latent = concrete_latent_shape(backend, x_data)
    cases = make_cases(x_data, latent, batch_sizes)
    problems = []
    for case in cases:
        try:
            outputs = _run(backend, case)
        except Exception as e:
            problems.append(f"{case.name}: {type(e).__name__}: {e}")
            continue
        for name, out in outputs.items():
            want = (case.batch_size, *(latent if name in ("mu", "logvar") else case.data.shape[1:]))
            if case.graph == "decoder" and name == "x_hat":
                want = (case.batch_size, *x_data.shape[1:])
            if tuple(out.shape) != want:
                problems.append(f"{case.name}:{name}: shape {list(out.shape)}, expected {list(want)}")
            elif not np.isfinite(out).all():
                problems.append(f"{case.name}:{name}: {int((~np.isfinite(out)).sum())} NaN/Inf values")
    return {"backend": backend.name, "n_cases": len(cases), "problems": problems, "passed": not problems}


def verify_export(
    export_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    reference: Exportable | None = None,
    batch_sizes: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    backends: Sequence[str] | None = None,
    data: str | Path | None = None,
    engines: Sequence[str] | None = None,
    strict_edges: bool = False,
    time_budget_s: float | None = None,
    progress: bool | None = None,
) -> VerifyResult:
    """Integrity + contract + parity of every backend against the eager reference (or, without
    torch, against ``ort-cpu`` fp32). ``data``: a .npy/.npz of real examples for the encoder.

    ``batch_sizes=None``: sized to the model (:func:`vae_deploy.checks.plan.batch_sizes_for`,
    within ``time_budget_s`` per backend). A failing constant-input edge case on a model with
    GroupNorm becomes a warning when every real-data case passes, unless ``strict_edges``.
    ``progress``: print each backend and case on stderr (None: when stderr is a terminal)."""
    from vae_deploy.checks.parity import concrete_latent_shape
    from vae_deploy.checks.plan import (
        DEFAULT_TIME_BUDGET_S,
        CasePlan,
        MemoBackend,
        add_user_size,
        demote_knife_edges,
        estimated_seconds,
        graph_flops,
        has_normalisation,
        plan_cases,
        user_size_latent,
    )
    from vae_deploy.progress import Progress

    folder = Path(export_dir)
    manifest = load_manifest(folder, verify=False)
    torch_ok = available("torch")
    warnings: list[str] = []
    if reference is None and torch_ok:
        reference, ref_path = _reference_from(manifest, checkpoint)
    elif reference is None:
        if checkpoint is not None:
            from vae_deploy.extras import missing_extra

            raise missing_extra("torch", "verify")  # type: ignore[misc]
        ref_path = ""
        warnings.append(NO_EAGER)
    else:
        ref_path = reference.spec.source_path or "<in-memory model>"
    spec = reference.spec if reference is not None else spec_from_manifest(manifest)
    if reference is not None:
        from vae_deploy.exporters.finite import require_finite

        require_finite(reference, "reference model", error=ArtifactError)
    integrity = check_integrity(folder, manifest)
    contract = check_contract(folder, manifest, reference)
    prog = Progress("verify", progress)
    x_data, label, described, data_warning = load_inputs(
        spec, data, None if reference is None else reference.example_x)
    if data_warning:
        warnings.append(data_warning)
    names, skipped = backend_names(manifest, torch_ok=torch_ok, eager=reference is not None, engines=engines)
    if backends:
        known = [n for n, _ in names]
        unknown = [b for b in backends if b not in known]
        if unknown:
            raise ArtifactError(f"unknown or unavailable backend(s) {', '.join(unknown)}; this export offers "
                                f"{', '.join(known) or 'none here'}" + (f" (not here: {', '.join(skipped)})" if skipped else ""))
        names = [(n, p) for n, p in names if n in backends]
        skipped = {}
    if reference is not None:
        from vae_deploy.runtime.backends import TorchBackend

        inner: Backend = TorchBackend(reference.encoder, reference.decoder, reference.spec, name="eager")
    else:
        inner = _open(folder, "ort-cpu", "fp32", spec)
    ref_backend = MemoBackend(inner)  # the reference runs each case once, whatever the number of backends
    sizing: dict[str, Any] = {"batch_sizes": "given"}
    if batch_sizes is None:
        budget = DEFAULT_TIME_BUDGET_S if time_budget_s is None else time_budget_s
        flops = None
        if integrity["passed"]:
            flops = graph_flops(folder, x_data.shape[1:], concrete_latent_shape(ref_backend, x_data))
        plan = plan_cases(flops, budget_s=budget)
        user = user_size_latent(spec.latent_shape, concrete_latent_shape(ref_backend, x_data)) \
            if integrity["passed"] else None
        user_note = "not applicable (fixed latent, or the example is already that size)"
        if user is not None:
            plan, user_note = add_user_size(plan, folder, flops, user, budget_s=budget)
        sizing = {"batch_sizes": "sized to the model", "flops_per_example": flops, "time_budget_s": budget,
                  "estimated_s_per_backend": estimated_seconds(flops, plan), "user_size": user_note}
    else:
        plan = CasePlan(tuple(batch_sizes))
    sizing.update(chosen=list(plan.batch_sizes), edge_batch=plan.edge_batch, recon_n=plan.recon_n)
    knife_edge_ok = not strict_edges and reference is not None and (
        has_normalisation(reference.encoder) or has_normalisation(reference.decoder))
    reports = []
    for name, precision in names:
        tol = tolerance_for(precision, spec.family)
        if atol is not None or rtol is not None:
            tol = replace(tol, atol=tol.atol if atol is None else atol, rtol=tol.rtol if rtol is None else rtol)
        try:
            cand = _open(folder, name, precision, spec)
        except Exception as e:
            reports.append({"candidate": name, "precision": precision, "error": f"cannot load: {e}",
                            "summary": {"passed": False, "max_abs_error": None, "failed": ["load"]}})
            continue
        with prog.stage(f"{name} against {ref_backend.name}, batch sizes {list(plan.batch_sizes)}"):
            report = compare_backends(ref_backend, cand, x_data, tolerance=tol, precision=precision,
                                      data_description=described, data_label=label,
                                      on_case=lambda case: prog.say(f"  case {case}"), **plan.as_kwargs())
        if knife_edge_ok:
            warnings += demote_knife_edges(report)
        reports.append(report)
    run_check = None
    if reference is None and not names:
        run_check = check_runs(inner, x_data, plan.batch_sizes)
    passed = integrity["passed"] and contract["passed"] and (bool(reports) or bool(run_check and run_check["passed"])) \
        and all(r["summary"]["passed"] for r in reports)
    return VerifyResult({
        "schema": SCHEMA,
        "export_dir": str(folder),
        "reference": {"backend": ref_backend.name, "path": ref_path,
                      "sha256": reference.spec.source_sha256 if reference is not None else None},
        "data": {"label": label, "description": described},
        "warnings": warnings,
        "integrity": integrity,
        "contract": contract,
        "skipped": skipped,
        "reports": reports,
        "run_check": run_check,
        "sizing": sizing,
        "passed": passed,
    })


