"""The issues' targets, evaluated on a report, and the console summary."""

from __future__ import annotations

import sys
from typing import Any

from vae_deploy.benchmarking.config import ORT

AUTO = "auto"

# The targets, all measured in one run. (kind, model, op, batch size, threshold, label)
TARGETS: tuple[dict[str, Any], ...] = (
    {"metric": "speedup_vs_eager", "model": "ref-mlp28", "op": "sample", "batch_size": 1, "backend": ORT,
     "target": 3.0, "label": "MLP decoder sampling, Runtime vs eager, batch 1"},
    {"metric": "speedup_vs_eager", "model": "ref-mlp28", "op": "sample", "batch_size": 512, "backend": ORT,
     "target": 1.5, "label": "MLP decoder sampling, Runtime vs eager, batch 512"},
    {"metric": "speedup_vs_eager", "model": "ref-conv28", "op": "sample", "batch_size": 1, "backend": ORT,
     "target": 4.5, "label": "28x28 conv decoder sampling, Runtime vs eager, batch 1"},
    {"metric": "speedup_vs_eager", "model": "ref-conv28", "op": "sample", "batch_size": 512, "backend": ORT,
     "target": 2.0, "label": "28x28 conv decoder sampling, Runtime vs eager, batch 512"},
    {"metric": "ceiling_fraction", "model": "ref-mlp28", "op": "sample", "batch_size": 512, "backend": ORT,
     "target": 0.85, "label": "MLP decoder batch 512 (Runtime), fraction of the matmul ceiling"},
    {"metric": "overhead_vs_bare", "model": "ref-mlp28", "op": "sample", "batch_size": 1, "backend": ORT,
     "target": 0.05, "label": "Runtime overhead over bare InferenceSession.run, MLP sampling, batch 1",
     "lower_is_better": True},
    {"metric": "batcher_ratio", "model": "ref-mlp28", "op": "sample", "batch_size": 64, "backend": ORT,
     "target": 0.70, "label": "micro-batcher, 64 concurrent single-sample callers vs offline batch 64"},
    # issue 13: auto = the fastest engine x precision row whose error vs eager is within its precision's tolerance
    {"metric": "auto_speedup_vs_eager", "model": "ref-sd-vae", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 6.0, "label": "SD-architecture AutoencoderKL decode 256x256, auto vs diffusers eager fp32, batch 1 "
                            "(AMX CPUs)", "cpu_classes": ("amx",)},
    # issue 27: per CPU class, at the sizes users decode
    {"metric": "auto_speedup_vs_eager", "model": "ref-sd-vae-512", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 6.0, "label": "SD decode 512x512, auto vs eager fp32 (AMX CPUs)", "cpu_classes": ("amx",)},
    {"metric": "auto_speedup_vs_eager", "model": "ref-sd-vae-512", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 2.5, "label": "SD decode 512x512, auto vs eager fp32 (AVX512-BF16 CPUs)",
     "cpu_classes": ("avx512-bf16",)},
    {"metric": "auto_speedup_vs_eager", "model": "ref-sd-vae", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 1.3, "label": "SD decode 256x256, auto vs eager fp32 (CPUs without native bf16)",
     "cpu_classes": ("avx2", "avx512", "baseline")},
    {"metric": "auto_speedup_vs_eager", "model": "ref-sd-vae-512", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 1.3, "label": "SD decode 512x512, auto vs eager fp32 (CPUs without native bf16)",
     "cpu_classes": ("avx2", "avx512", "baseline")},
    {"metric": "auto_vs_best_peer", "model": "ref-sd-vae-512", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 1.0, "label": "SD decode 512x512: auto vs the best peer"},
    {"metric": "auto_vs_best_peer", "model": "ref-sd-vae-512", "op": "encode", "batch_size": 1, "backend": AUTO,
     "target": 1.0, "label": "SD encode 512x512: auto vs the best peer"},
    {"metric": "auto_vs_best_peer", "model": "ref-mlp28", "op": "sample", "batch_size": 512, "backend": AUTO,
     "target": 1.0, "label": "MLP decoder batch 512: auto vs the best peer"},
    {"metric": "auto_vs_best_peer", "model": "ref-conv28", "op": "sample", "batch_size": 512, "backend": AUTO,
     "target": 1.0, "label": "28x28 conv decoder batch 512: auto vs the best peer"},
    {"metric": "auto_vs_best_peer", "model": "ref-sd-vae", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 1.0, "label": "SD decode: auto vs the best peer (eager bf16 autocast, torch.compile, plain ORT session)"},
    {"metric": "auto_vs_ort_fp32", "model": "ref-sd-vae", "op": "sample", "batch_size": 1, "backend": AUTO,
     "target": 1.0, "label": "SD decode: auto never slower than onnxruntime fp32"},
    {"metric": "auto_speedup_vs_eager", "model": "ref-mlp28", "op": "sample", "batch_size": 512, "backend": AUTO,
     "target": 4.5, "label": "MLP decoder sampling, auto vs eager, batch 512"},
    {"metric": "auto_speedup_vs_eager", "model": "ref-conv28", "op": "sample", "batch_size": 512, "backend": AUTO,
     "target": 4.5, "label": "28x28 conv decoder sampling, auto vs eager, batch 512"},
)
ENGINE_PREFIXES = ("ort-cpu", "openvino-cpu")
PEER_ROWS = ("eager-bf16", "torch-compile", "ort-plain")


def find_cell(report: dict[str, Any], model: str, op: str, backend: str, batch_size: int) -> dict[str, Any] | None:
    for c in report["cells"]:
        if (c["model"], c["op"], c["backend"], c["batch_size"]) == (model, op, backend, batch_size):
            return c
    return None


BEST_OF = {"speedup_vs_eager": "speedup_vs_eager_best", "ceiling_fraction": "ceiling_fraction_best",
           "overhead_vs_bare": "overhead_vs_bare_min", "batcher_ratio": "ratio_best"}


def gated(report: dict[str, Any], model: str, backend: str) -> tuple[bool, str]:
    """Whether a row's max abs difference vs eager (parity check of the run) is within the
    tolerance of its precision: only such rows may be auto's pick."""
    from vae_deploy.tolerance import tolerance_for

    mod = next((m for m in report["models"] if m["name"] == model), None) or {}
    diff = (mod.get("parity_max_abs_diff") or {}).get(backend)
    scale = mod.get("parity_output_max_abs") or 1.0
    precision = backend.split("-", 2)[2] if backend.count("-") >= 2 else "fp32"
    tol = tolerance_for(precision, mod.get("family"))
    if diff is None or diff != diff:
        return False, "no parity figure"
    limit = tol.atol + tol.rtol * scale
    return diff <= limit, f"max abs diff {diff:.2e} vs limit {limit:.2e}"


def auto_pick(report: dict[str, Any], model: str, op: str, batch_size: int) -> tuple[dict[str, Any] | None, list[str]]:
    """The fastest gated engine row of a cell (what ``tune`` would pick) and notes on the rest."""
    notes, best = [], None
    for c in report["cells"]:
        if (c["model"], c["op"], c["batch_size"]) != (model, op, batch_size) or "error" in c:
            continue
        if not c["backend"].startswith(ENGINE_PREFIXES) or c["backend"].endswith("-bare"):
            continue
        ok, why = gated(report, model, c["backend"])
        if not ok:
            notes.append(f"{c['backend']} excluded ({why})")
        elif best is None or c["samples_per_s"] > best["samples_per_s"]:
            best = c
    return best, notes


def _auto_metric(report: dict[str, Any], t: dict[str, Any]) -> tuple[float | None, float | None, str]:
    pick, notes = auto_pick(report, t["model"], t["op"], t["batch_size"])
    if pick is None:
        return None, None, f"{t['model']} {t['op']} batch {t['batch_size']}: no gated engine row measured"
    mod = next((m for m in report["models"] if m["name"] == t["model"]), None) or {}
    diff = (mod.get("parity_max_abs_diff") or {}).get(pick["backend"])
    span = mod.get("parity_output_range")
    note = f"auto = {pick['backend']}"
    if diff is not None and span:
        note += f" (error vs eager: max abs {diff:.3g}, {diff / span:.2%} of the output range {span:.3g})"
    if t["metric"] == "auto_speedup_vs_eager":
        measured, best = pick.get("speedup_vs_eager"), pick.get("speedup_vs_eager_best")
    else:
        rows = PEER_ROWS if t["metric"] == "auto_vs_best_peer" else (ORT,)
        others = [c for c in report["cells"] if (c["model"], c["op"], c["batch_size"]) ==
                  (t["model"], t["op"], t["batch_size"]) and c["backend"] in rows and "error" not in c]
        if not others:
            return None, None, note + f"; none of {', '.join(rows)} measured"
        top = max(others, key=lambda c: c["samples_per_s"])
        measured = pick["samples_per_s"] / top["samples_per_s"]
        best = pick["samples_per_s_best"] / top["samples_per_s_best"]
        note += f" vs {top['backend']}"
    if t["metric"] == "auto_vs_ort_fp32" and not (report.get("machine") or {}).get("native_bf16", True):
        note += "; no native bf16 on this CPU: bf16 rows are left out, so auto picks among fp32/int8 rows"
    return measured, best, note + ("; " + "; ".join(notes) if notes else "")


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target on the medians (the verdict) and on the best rounds (contention-robust)."""
    out = []
    klass = (report.get("machine") or {}).get("cpu_class")
    for t in TARGETS:
        if klass and t.get("cpu_classes") and klass not in t["cpu_classes"]:
            continue  # a target stated for another CPU class
        row = {k: t[k] for k in ("label", "metric", "model", "op", "batch_size", "backend", "target")}
        lower = bool(t.get("lower_is_better"))
        row["comparison"] = "<=" if lower else ">="
        measured, best, note = None, None, ""
        if t["metric"] == "batcher_ratio":
            rec = next((b for b in report["batcher"] if b["model"] == t["model"]), None)
            if rec is None:
                skip = next((s for s in report["skipped"] if s.get("backend") == "micro-batcher"), None)
                note = skip["reason"] if skip else f"model {t['model']} not measured"
            elif "error" in rec:
                note = rec["error"]
            else:
                measured, best = rec["ratio"], rec.get("ratio_best")
        elif t["metric"].startswith("auto_"):
            measured, best, note = _auto_metric(report, t)
        elif t["metric"] == "overhead_vs_bare":
            mod = next((m for m in report["models"] if m["name"] == t["model"]), None)
            ab = ((mod or {}).get("runtime_overhead_profile") or {}).get(t["op"], {}).get("ab")
            if ab is None:
                note = f"{t['model']} {t['op']}: Runtime vs bare not measured"
            else:
                measured, best = ab["overhead"], ab["overhead_min"]
                note = (f"alternating single calls, {ab['pairs']} pairs: median difference "
                        f"{ab['median_diff_us']:+.2f} us on a {ab['bare_p50_us']:.1f} us bare call")
        else:
            cell = find_cell(report, t["model"], t["op"], t["backend"], t["batch_size"])
            if cell is None:
                note = f"{t['model']} {t['op']} batch {t['batch_size']} ({t['backend']}) not measured"
            elif "error" in cell:
                note = cell["error"]
            else:
                measured = cell.get(t["metric"])
                best = cell.get(BEST_OF[t["metric"]])
                if measured is None:
                    note = f"{t['metric']} unavailable (baseline backend missing)"
                if cell.get("disturbed"):
                    note = "disturbed cell: " + "; ".join(cell["disturbed_reasons"])
        row["measured"] = measured
        row["met"] = None if measured is None else (measured <= t["target"] if lower else measured >= t["target"])
        row["measured_best"] = best
        row["met_best"] = None if best is None else (best <= t["target"] if lower else best >= t["target"])
        row["note"] = note
        out.append(row)
    return out


def print_summary(report: dict[str, Any], file: Any = None) -> None:
    file = file or sys.stdout
    for t in report["targets"]:
        m = t["measured"]
        val = "n/a" if m is None else (f"{m:.1%}" if t["metric"] in ("ceiling_fraction", "overhead_vs_bare",
                                                                      "batcher_ratio") else f"{m:.2f}x")
        tgt = (f"{t['target']:.0%}" if t["metric"] in ("ceiling_fraction", "overhead_vs_bare", "batcher_ratio")
               else f"{t['target']}x")
        verdict = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        b = t.get("measured_best")
        best = "" if b is None else (f"; best round {b:.1%}" if t["metric"] in ("ceiling_fraction", "overhead_vs_bare",
                                                                               "batcher_ratio") else f"; best round {b:.2f}x")
        print(f"{verdict:>12}  {t['label']}: {val} ({t['comparison']} {tgt}{best})"
              + (f"\n{'':>14}{t['note']}" if t.get("note") and t["metric"].startswith("auto_") else ""),
              file=file)

