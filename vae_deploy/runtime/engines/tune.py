"""``auto``: measure every engine x precision that passes its accuracy gate, keep the fastest.

The winner per batch size is written to a small tuning file (:mod:`vae_deploy.runtime.engines.tuning_file`;
never inside the export, whose files are checksummed), under a key made of the CPU model and the
flags that matter, the library versions, the graphs' sha256, the thread count, the accuracy
budget and the latent shape tuned at: the next load on the same machine, budget and size is
instant, and a different machine, library, graph, budget or size re-tunes. Timing interleaves
candidates round by round (a shared machine is noisy) and takes the median.

``auto`` does not trust the file: every recorded backend is re-checked before it is loaded (an
engine installed here, a CPU device, a precision variant in the manifest, native bf16, and a gate
record that the budget accepts); anything else is left out and, when that leaves nothing, re-tuned.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, EngineError
from vae_deploy.runtime.engines import PRECISIONS, available_engines, backend_label
from vae_deploy.runtime.engines.cpu import bf16_refusal, cpu_flags, cpu_model
from vae_deploy.runtime.engines.tuning_file import (  # noqa: F401 (re-exported)
    SCHEMA,
    add_record,
    default_tuning_file,
    read_tuning,
)
from vae_deploy.tolerance import EXACT_PRECISIONS, Budget, budget_accepts, make_budget

LOSSLESS = EXACT_PRECISIONS
LOSSY_PRECISIONS = ("int8", "bf16", "fp16")
MAX_TUNE_ELEMENTS = 1 << 22  # batch x output elements per timed call: keeps tuning seconds-long
#: A record tuned at another latent shape stands in when its element count is within this factor.
NEAR_SHAPE_FACTOR = 2.0
LABEL = re.compile(r"^(ort|openvino)-([a-z]+)(?:-([a-z0-9-]+))?$")


def library_versions() -> dict[str, str | None]:
    import onnxruntime as ort

    from vae_deploy import __version__
    from vae_deploy.runtime.engines.openvino import version

    return {"vae_deploy": __version__, "onnxruntime": ort.__version__, "openvino": version()}


def tuning_key(manifest: dict[str, Any], *, threads: int | None, fp32_only: bool, max_error: float | None,
               latent_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """What a measurement depends on; any change re-tunes."""
    graphs = {n: e.get("sha256") for n, e in sorted(manifest.get("files", {}).items()) if e.get("format") == "onnx"}
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "versions": library_versions(),
            "graphs_sha256": graphs, "threads": threads, "fp32_only": fp32_only, "max_error": max_error,
            "latent_shape": [int(d) for d in latent_shape] if latent_shape is not None else None}


def key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def manifest_precisions(manifest: dict[str, Any]) -> list[str]:
    """The decoder precision variants this export has files for."""
    files = manifest.get("files", {})
    return [p for p in PRECISIONS
            if any(e.get("format") == "onnx" and e.get("role") == "decoder" and e.get("precision", "fp32") == p
                   for e in files.values())]


def candidate_pairs(manifest: dict[str, Any], *, fp32_only: bool = False,
                    flags: dict[str, bool] | None = None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(engine, precision) pairs worth measuring here, and why the others are left out."""
    have = manifest_precisions(manifest)
    pairs: list[tuple[str, str]] = []
    excluded: dict[str, str] = {}
    engines = available_engines()
    if "openvino" not in engines:
        excluded["openvino-cpu"] = "OpenVINO is not installed (pip install 'vae-deploy[openvino]')"
    for engine in engines:
        precisions = list(have) + (["bf16"] if engine == "openvino" and "fp32" in have else [])
        for p in precisions:
            label = backend_label(engine, "cpu", p)
            if engine == "openvino" and p == "fp16":
                excluded[label] = "OpenVINO computes an fp16 graph's ops at f32 on the CPU: same as fp32, plus casts"
            elif fp32_only and p in LOSSY_PRECISIONS:  # other variants are gated: exact class may pass
                excluded[label] = "lossy precision; fp32-only budget"
            elif p == "bf16" and bf16_refusal(flags):
                excluded[label] = "no native bf16 on this CPU (emulated bf16 is slower than fp32)"
            else:
                pairs.append((engine, p))
    return pairs, excluded


def output_elements(spec: Any, latent_shape: Sequence[int]) -> int:
    """Output elements of one decoded example at ``latent_shape``."""
    shape = [d if d > 0 else 16 for d in spec.concrete_input_shape]
    lat, ex = tuple(latent_shape), tuple(spec.concrete_latent_shape)
    if len(lat) == 3 and len(shape) == 3 and len(ex) == 3 and min(ex[1:]) > 0:
        shape = [shape[0], lat[1] * (shape[1] // ex[1]), lat[2] * (shape[2] // ex[2])]
    return int(np.prod(shape))


def default_batch_sizes(spec: Any, latent_shape: Sequence[int] | None = None) -> tuple[int, ...]:
    out_elems = output_elements(spec, latent_shape or spec.concrete_latent_shape)
    return tuple(b for b in (1, 64) if b == 1 or b * out_elems <= MAX_TUNE_ELEMENTS)


def _time_decoders(backends: dict[str, Any], batch_size: int, rounds: int, round_s: float,
                   latent_shape: Sequence[int] | None = None) -> dict[str, float]:
    """Median samples/s of ``sample(batch_size)`` per backend, rounds interleaved in rotating order."""
    names = list(backends)
    calls: dict[str, Callable[[], Any]] = {
        n: (lambda b=b: b.sample(batch_size, seed=0, latent_shape=latent_shape)) for n, b in backends.items()}
    reps = {}
    for n, fn in calls.items():  # warm up, and size a round to about round_s
        fn()
        t0 = time.perf_counter()
        fn()
        reps[n] = max(1, min(200, int(round_s / max(time.perf_counter() - t0, 1e-6))))
    obs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(reps[n]):
                calls[n]()
            obs[n].append(batch_size * reps[n] / (time.perf_counter() - t0))
    return {n: statistics.median(v) for n, v in obs.items()}


def tune(folder: str | Path, *, open_runtime: Callable[..., Any], batch_sizes: Sequence[int] | None = None,
         fp32_only: bool = False,
         max_error: float | None = None, threads: int | None = None, tuning_file: str | Path | None = None,
         latent_shape: Sequence[int] | None = None, rounds: int = 5, round_s: float = 0.05,
         verify_checksums: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Gate and measure at ``latent_shape`` (default: the export's example latent shape) under the
    budget ``max_error`` / ``fp32_only`` (default: :func:`vae_deploy.tolerance.default_budget`), and
    record the result; returns the record (also written to the tuning file).

    ``open_runtime`` is ``Runtime.load`` (passed in: the Runtime calls this module for ``auto``,
    so this module does not import the Runtime back)."""
    from vae_deploy.artifacts import load_manifest
    from vae_deploy.contract import check_export
    from vae_deploy.runtime.engines import variant_file
    from vae_deploy.runtime.engines.gate import gate

    say = log or (lambda s: None)
    budget = make_budget(max_error, fp32_only)
    folder = Path(folder)
    path = Path(tuning_file) if tuning_file else default_tuning_file()
    read_tuning(path)  # a damaged tuning file is refused before minutes of measuring
    manifest = load_manifest(folder, verify=False)
    pairs, excluded = candidate_pairs(manifest, fp32_only=fp32_only)
    # The contract (checksums, files inside the folder, no random ops) for every file tuned.
    check_export(folder, manifest, sorted({variant_file(manifest, r, p) for _, p in pairs
                                           for r in ("encoder", "decoder")}), checksums=verify_checksums)
    opened: dict[str, Any] = {}
    pair_of: dict[str, tuple[str, str]] = {}
    try:
        for engine, p in pairs:
            label = backend_label(engine, "cpu", p)
            try:
                opened[label] = open_runtime(folder, engine=engine, precision=p, provider="cpu", threads=threads,
                                             verify_checksums=False, force_bf16=True, max_batch=1 << 20)
                pair_of[label] = (engine, p)
            except Exception as e:
                if label == "ort-cpu":
                    raise EngineError(f"cannot open the fp32 reference (onnxruntime, cpu): {e}") from None
                excluded[label] = f"cannot open: {e}"
        reference = opened["ort-cpu"]
        shape = reference.sample_latent_shape(latent_shape)
        gates: dict[str, Any] = {}
        for label, rt in list(opened.items()):
            if label == "ort-cpu":
                continue
            g = gates[label] = gate(reference, rt, pair_of[label][1], budget=budget, latent_shape=shape)
            if not g["passed"]:
                excluded[label] = f"failed its accuracy gate: {g['reason']}"
                opened.pop(label).close()
            say(f"gate {label}: {'pass' if g['passed'] else 'FAIL'} (max abs error "
                f"{g.get('max_abs_error', float('nan')):.2e}"
                + (f", -ELBO rel diff {g['elbo_rel_diff']:.2e}" if "elbo_rel_diff" in g else "") + ")")
        sizes = tuple(sorted(set(batch_sizes or default_batch_sizes(reference.spec, shape))))
        results: dict[str, Any] = {}
        for bs in sizes:
            sps = _time_decoders(opened, bs, rounds, round_s, shape)
            best = max(sps, key=lambda k: sps[k])
            engine, p = pair_of.get(best, ("onnxruntime", "fp32"))
            results[str(bs)] = {"winner": {"engine": engine, "precision": p, "backend": best},
                                "samples_per_s": sps, "vs_ort_cpu": sps[best] / sps["ort-cpu"]}
            say(f"batch {bs} at latent {list(shape)}: {best} wins ({sps[best]:.4g} samples/s, "
                f"{sps[best] / sps['ort-cpu']:.2f}x ort-cpu); " + ", ".join(f"{k} {v:.4g}/s" for k, v in sps.items()))
    finally:
        for rt in opened.values():
            rt.close()
    key = tuning_key(manifest, threads=threads, fp32_only=fp32_only, max_error=budget.max_error, latent_shape=shape)
    record = {"key": key, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
              "export_dir": str(folder.resolve()), "budget": budget.describe(), "batch_sizes": results,
              "gates": gates, "excluded": excluded,
              "method": f"sample(batch) through Runtime at latent {list(shape)}, {rounds} interleaved rounds of "
                        f"~{round_s:g} s, median"}
    add_record(path, key_id(key), record)
    record["tuning_file"] = str(path)
    return record


def lookup(manifest: dict[str, Any], *, threads: int | None = None, fp32_only: bool = False,
           max_error: float | None = None, tuning_file: str | Path | None = None,
           latent_shape: Sequence[int] | None = None) -> dict[str, Any] | None:
    """The record for this machine, budget and ``latent_shape``; else the one tuned at the nearest
    shape (by element count, within ``NEAR_SHAPE_FACTOR``) with ``near: True``; else None."""
    path = Path(tuning_file) if tuning_file else default_tuning_file()
    records = read_tuning(path)["records"]
    key = tuning_key(manifest, threads=threads, fp32_only=fp32_only, max_error=max_error, latent_shape=latent_shape)
    rec = records.get(key_id(key))
    if rec is not None and rec.get("key") == key:
        return {**rec, "tuning_file": str(path)}
    want = math.prod(latent_shape) if latent_shape else 0
    near = []
    for r in records.values():
        other = dict(r["key"])
        got = other.pop("latent_shape")
        if {**other, "latent_shape": None} == {**key, "latent_shape": None} and want and len(got) == len(latent_shape):
            ratio = max(math.prod(got), want) / min(math.prod(got), want)
            if ratio <= NEAR_SHAPE_FACTOR:
                near.append((ratio, r))
    if not near:
        return None
    best = min(near, key=lambda t: t[0])[1]
    return {**best, "tuning_file": str(path), "near": True}


def parse_label(label: str) -> tuple[str, str, str] | None:
    """``ort-cpu-int8`` -> (onnxruntime, cpu, int8); None when it is not a backend label."""
    m = LABEL.match(label)
    if not m:
        return None
    return {"ort": "onnxruntime"}.get(m[1], m[1]), m[2], m[3] or "fp32"


def recheck(label: str, rec: dict[str, Any], manifest: dict[str, Any], budget: Budget) -> str | None:
    """Why the recorded backend ``label`` must not be loaded here (None: it may): the file is
    a cache that anyone can edit, so nothing in it is trusted without this check."""
    parsed = parse_label(label)
    if parsed is None:
        return "not a backend label"
    engine, device, precision = parsed
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}"
    if device != "cpu":
        return f"device {device!r}: auto tunes and loads CPU engines only"
    if engine not in available_engines():
        return f"engine {engine!r} is not installed here"
    file_p = "fp32" if precision == "bf16" else precision
    if file_p not in manifest_precisions(manifest):
        return f"this export has no {file_p} decoder"
    if engine == "openvino" and precision == "fp16":
        return "OpenVINO runs fp16 graphs at f32 on the CPU"
    if precision == "bf16" and bf16_refusal(cpu_flags()):
        return "no native bf16 on this CPU"
    if engine == "onnxruntime" and precision == "bf16":
        return "onnxruntime has no bf16 variant"
    if label == "ort-cpu":
        return None
    g = rec.get("gates", {}).get(label)
    if not isinstance(g, dict) or g.get("passed") is not True:
        return "no passed accuracy gate in the record"
    ok, why = budget_accepts(precision, g.get("measured") or {}, budget)
    return None if ok else f"the {budget.describe()} budget does not accept it ({why})"


def _pick(rec: dict[str, Any], manifest: dict[str, Any], budget: Budget, engine: str, precision: str,
          batch_size: int | None) -> tuple[int, dict[str, tuple[str, str, float]], dict[str, str]]:
    sizes = sorted(int(b) for b in rec["batch_sizes"])
    bs = max(sizes) if batch_size is None else min(sizes, key=lambda b: (abs(b - batch_size), -b))
    allowed: dict[str, tuple[str, str, float]] = {}
    refused: dict[str, str] = {}
    for label, v in rec["batch_sizes"][str(bs)]["samples_per_s"].items():
        why = recheck(label, rec, manifest, budget)
        if why:
            refused[label] = why
            continue
        e, _, p = parse_label(label)  # type: ignore[misc]
        if engine in ("auto", e) and precision in ("auto", p):
            allowed[label] = (e, p, v)
    return bs, allowed, refused


def choose(folder: Path, manifest: dict[str, Any], *, engine: str = "auto", precision: str = "auto",
           batch_size: int | None = None, tuning_file: str | Path | None = None, threads: int | None = None,
           verify_checksums: bool = True, max_error: float | None = None, fp32_only: bool = False,
           latent_shape: Sequence[int] | None = None, open_runtime: Callable[..., Any]) -> dict[str, Any]:
    """The pair ``Runtime.load(engine=..., precision=...)`` opens, with the reason: from the
    record for this machine, budget and decode size (or the nearest size), re-checked; tuned now
    when none fits or a recorded choice fails its re-check."""
    from vae_deploy.artifacts import spec_from_manifest
    from vae_deploy.runtime.backends import Backend

    budget = make_budget(max_error, fp32_only)
    shape = Backend(spec_from_manifest(manifest)).sample_latent_shape(latent_shape)
    args = dict(threads=threads, fp32_only=fp32_only, max_error=budget.max_error, tuning_file=tuning_file)
    rec = lookup(manifest, latent_shape=shape, **args)  # type: ignore[arg-type]
    how = "from the tuning file"
    if rec is not None and rec.get("near"):
        how = f"from the tuning file's record at the nearest latent shape {rec['key']['latent_shape']}"
    if rec is None:
        rec = tune(folder, open_runtime=open_runtime, latent_shape=shape, verify_checksums=verify_checksums, **args)  # type: ignore[arg-type]
        how = f"tuned now at latent {list(shape)} (no record for this CPU, library versions, graphs, budget and size)"
    bs, allowed, refused = _pick(rec, manifest, budget, engine, precision, batch_size)
    if refused and "tuned now" not in how:
        rec = tune(folder, open_runtime=open_runtime, latent_shape=shape, verify_checksums=verify_checksums, **args)  # type: ignore[arg-type]
        how = ("re-tuned now: the tuning file's record failed its re-check ("
               + "; ".join(f"{k}: {v}" for k, v in refused.items()) + ")")
        bs, allowed, refused = _pick(rec, manifest, budget, engine, precision, batch_size)
    if not allowed:
        raise EngineError(f"no measured variant matches engine {engine!r} and precision {precision!r} under the "
                          f"{budget.describe()} budget (measured: {sorted(rec['batch_sizes'][str(bs)]['samples_per_s'])}"
                          f"; excluded: {rec.get('excluded')}" + (f"; refused: {refused}" if refused else "") + ")")
    label = max(allowed, key=lambda k: allowed[k][2])
    e, p, v = allowed[label]
    base = rec["batch_sizes"][str(bs)]["samples_per_s"].get("ort-cpu")
    reason = (f"{label}: fastest of {len(allowed)} variant(s) that passed their accuracy gate under the "
              f"{budget.describe()} budget at batch {bs} ({v:.4g} samples/s"
              + (f", {v / base:.2f}x ort-cpu" if base else "") + f"), {how} {rec['tuning_file']}"
              + (f"; left out: {', '.join(rec['excluded'])}" if rec.get("excluded") else ""))
    return {"engine": e, "precision": p, "provider": "cpu", "reason": reason, "batch_size": bs, "record": rec,
            "budget": budget}


__all__ = ["tune", "choose", "lookup", "recheck", "candidate_pairs", "tuning_key", "key_id", "read_tuning",
           "default_tuning_file", "SCHEMA", "ConfigError"]
