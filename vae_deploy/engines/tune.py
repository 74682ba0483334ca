"""``auto``: measure every engine x precision that passes its accuracy gate, keep the fastest.

The winner per batch size is written to a small tuning file (default
``$XDG_CACHE_HOME/vae-deploy/tuning.json``; never inside the export, whose files are checksummed),
under a key made of the CPU model and the flags that matter, the library versions, the graphs'
sha256, the thread count and the accuracy budget: the next load on the same machine is instant,
and a different machine, library or graph re-tunes. Timing interleaves candidates round by round
(a shared machine is noisy) and takes the median.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.engines import available_engines, backend_label
from vae_deploy.engines.cpu import bf16_refusal, cpu_flags, cpu_model
from vae_deploy.errors import ConfigError

SCHEMA = "vae-deploy-tuning/1"
LOSSLESS = ("fp32", "fp32-fast")
MAX_TUNE_ELEMENTS = 1 << 22  # batch x output elements per timed call: keeps tuning seconds-long


def default_tuning_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vae-deploy" / "tuning.json"


def library_versions() -> dict[str, str | None]:
    import onnxruntime as ort

    from vae_deploy import __version__
    from vae_deploy.engines.openvino import version

    return {"vae_deploy": __version__, "onnxruntime": ort.__version__, "openvino": version()}


def tuning_key(manifest: dict[str, Any], *, threads: int | None, fp32_only: bool, max_error: float | None
               ) -> dict[str, Any]:
    """What a measurement depends on; any change re-tunes."""
    graphs = {n: e.get("sha256") for n, e in sorted(manifest.get("files", {}).items()) if e.get("format") == "onnx"}
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "versions": library_versions(),
            "graphs_sha256": graphs, "threads": threads, "fp32_only": fp32_only, "max_error": max_error}


def key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def read_tuning(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"schema": SCHEMA, "records": {}}
    except (OSError, ValueError) as e:
        raise ConfigError(f"tuning file {str(path)!r} is not readable JSON ({e}); delete it to re-tune") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("records"), dict):
        raise ConfigError(f"tuning file {str(path)!r} is not a {SCHEMA} file; delete it or pass another path")
    return data


def write_tuning(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a concurrent reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def candidate_pairs(manifest: dict[str, Any], *, fp32_only: bool = False,
                    flags: dict[str, bool] | None = None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(engine, precision) pairs worth measuring here, and why the others are left out."""
    files = manifest.get("files", {})
    have = [p for p in ("fp32", "fp32-fast", "int8", "fp16")
            if any(e.get("format") == "onnx" and e.get("role") == "decoder" and e.get("precision", "fp32") == p
                   for e in files.values())]
    pairs: list[tuple[str, str]] = []
    excluded: dict[str, str] = {}
    engines = available_engines()
    if "openvino" not in engines:
        excluded["openvino-cpu"] = "OpenVINO is not installed (pip install 'vae-deploy[openvino]')"
    for engine in engines:
        precisions = list(have) + (["bf16"] if engine == "openvino" else [])
        for p in precisions:
            label = backend_label(engine, "cpu", p)
            if engine == "openvino" and p == "fp16":
                excluded[label] = "OpenVINO computes an fp16 graph's ops at f32 on the CPU: same as fp32, plus casts"
            elif fp32_only and p not in LOSSLESS:
                excluded[label] = "lossy precision; fp32-only budget"
            elif p == "bf16" and bf16_refusal(flags):
                excluded[label] = "no native bf16 on this CPU (emulated bf16 is slower than fp32)"
            else:
                pairs.append((engine, p))
    return pairs, excluded


def default_batch_sizes(spec: Any) -> tuple[int, ...]:
    out_elems = int(np.prod([d if d > 0 else 16 for d in spec.concrete_input_shape]))
    return tuple(b for b in (1, 64) if b == 1 or b * out_elems <= MAX_TUNE_ELEMENTS)


def _time_decoders(backends: dict[str, Any], batch_size: int, rounds: int, round_s: float) -> dict[str, float]:
    """Median samples/s of ``sample(batch_size)`` per backend, rounds interleaved in rotating order."""
    names = list(backends)
    calls: dict[str, Callable[[], Any]] = {n: (lambda b=b: b.sample(batch_size, seed=0)) for n, b in backends.items()}
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


def tune(folder: str | Path, *, batch_sizes: Sequence[int] | None = None, fp32_only: bool = False,
         max_error: float | None = None, threads: int | None = None, tuning_file: str | Path | None = None,
         rounds: int = 5, round_s: float = 0.05, verify_checksums: bool = True,
         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Gate, measure and record; returns the record (also written to the tuning file)."""
    from vae_deploy.artifacts import load_manifest, verify_files
    from vae_deploy.engines.gate import gate
    from vae_deploy.runtime import Runtime, variant_file

    say = log or (lambda s: None)
    folder = Path(folder)
    manifest = load_manifest(folder, verify=False)
    pairs, excluded = candidate_pairs(manifest, fp32_only=fp32_only)
    if verify_checksums:
        verify_files(folder, manifest, only=sorted({variant_file(manifest, r, p) for _, p in pairs
                                                    for r in ("encoder", "decoder")}))
    opened: dict[str, Runtime] = {}
    pair_of: dict[str, tuple[str, str]] = {}
    for engine, p in pairs:
        label = backend_label(engine, "cpu", p)
        try:
            opened[label] = Runtime.load(folder, engine=engine, precision=p, provider="cpu", threads=threads,
                                         verify_checksums=False, force_bf16=True, max_batch=1 << 20)
            pair_of[label] = (engine, p)
        except Exception as e:
            excluded[label] = f"cannot open: {e}"
    reference = opened["ort-cpu"]
    gates: dict[str, Any] = {}
    for label, rt in list(opened.items()):
        if label == "ort-cpu":
            continue
        g = gates[label] = gate(reference, rt, pair_of[label][1], max_error=max_error)
        if not g["passed"]:
            excluded[label] = f"failed its accuracy gate: {g['reason']}"
            opened.pop(label).close()
        say(f"gate {label}: {'pass' if g['passed'] else 'FAIL'} (max abs error {g.get('max_abs_error', float('nan')):.2e}"
            + (f", -ELBO rel diff {g['elbo_rel_diff']:.2e}" if "elbo_rel_diff" in g else "") + ")")
    sizes = tuple(sorted(set(batch_sizes or default_batch_sizes(reference.spec))))
    results: dict[str, Any] = {}
    for bs in sizes:
        sps = _time_decoders(opened, bs, rounds, round_s)
        best = max(sps, key=lambda k: sps[k])
        engine, p = pair_of.get(best, ("onnxruntime", "fp32"))
        results[str(bs)] = {"winner": {"engine": engine, "precision": p, "backend": best},
                            "samples_per_s": sps, "vs_ort_cpu": sps[best] / sps["ort-cpu"]}
        say(f"batch {bs}: {best} wins ({sps[best]:.4g} samples/s, {sps[best] / sps['ort-cpu']:.2f}x ort-cpu); "
            + ", ".join(f"{k} {v:.4g}/s" for k, v in sps.items()))
    for rt in opened.values():
        rt.close()
    key = tuning_key(manifest, threads=threads, fp32_only=fp32_only, max_error=max_error)
    record = {"key": key, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "export_dir": str(folder.resolve()), "batch_sizes": results, "gates": gates, "excluded": excluded,
              "method": f"sample(batch) through Runtime, {rounds} interleaved rounds of ~{round_s:g} s, median"}
    path = Path(tuning_file) if tuning_file else default_tuning_file()
    data = read_tuning(path)
    data["records"][key_id(key)] = record
    write_tuning(path, data)
    record["tuning_file"] = str(path)
    return record


def lookup(manifest: dict[str, Any], *, threads: int | None = None, fp32_only: bool = False,
           max_error: float | None = None, tuning_file: str | Path | None = None) -> dict[str, Any] | None:
    path = Path(tuning_file) if tuning_file else default_tuning_file()
    key = tuning_key(manifest, threads=threads, fp32_only=fp32_only, max_error=max_error)
    rec = read_tuning(path)["records"].get(key_id(key))
    return None if rec is None or rec.get("key") != key else {**rec, "tuning_file": str(path)}


def choose(folder: Path, manifest: dict[str, Any], *, engine: str = "auto", precision: str = "auto",
           batch_size: int | None = None, tuning_file: str | Path | None = None, threads: int | None = None,
           verify_checksums: bool = True) -> dict[str, Any]:
    """The pair ``Runtime.load(engine=..., precision=...)`` opens, with the reason; tunes when no
    record matches this machine, libraries and graphs."""
    rec = lookup(manifest, threads=threads, tuning_file=tuning_file)
    how = "from the tuning file"
    if rec is None:
        rec = tune(folder, threads=threads, tuning_file=tuning_file, verify_checksums=verify_checksums)
        how = "tuned now (no record for this CPU, library versions and graphs)"
    sizes = sorted(int(b) for b in rec["batch_sizes"])
    bs = max(sizes) if batch_size is None else min(sizes, key=lambda b: (abs(b - batch_size), -b))
    cell = rec["batch_sizes"][str(bs)]
    sps = cell["samples_per_s"]
    allowed = {}
    for label, v in sps.items():
        e = "onnxruntime" if label.startswith("ort-") else label.split("-", 1)[0]
        p = label.split("-", 2)[2] if label.count("-") >= 2 else "fp32"
        if engine in ("auto", e) and precision in ("auto", p):
            allowed[label] = (e, p, v)
    if not allowed:
        from vae_deploy.errors import EngineError

        raise EngineError(f"no measured variant matches engine {engine!r} and precision {precision!r} "
                          f"(measured: {sorted(sps)}; excluded: {rec.get('excluded')})")
    label = max(allowed, key=lambda k: allowed[k][2])
    e, p, v = allowed[label]
    base = sps.get("ort-cpu")
    reason = (f"{label}: fastest of {len(allowed)} variant(s) that passed their accuracy gate at batch {bs} "
              f"({v:.4g} samples/s" + (f", {v / base:.2f}x ort-cpu" if base else "") + f"), {how} "
              f"{rec['tuning_file']}" + (f"; left out: {', '.join(rec['excluded'])}" if rec.get("excluded") else ""))
    return {"engine": e, "precision": p, "provider": "cpu", "reason": reason, "batch_size": bs, "record": rec}
