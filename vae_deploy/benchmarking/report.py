"""Render a benchmark report (the dict ``vae_deploy.benchmarking.run_benchmark`` returns) as
``report.json``, ``report.md``, ``throughput.png`` and ``latency.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PCT_METRICS = ("ceiling_fraction", "overhead_vs_bare", "batcher_ratio")


PLOTS_SKIPPED = "plots skipped: matplotlib is not installed (pip install 'vae-deploy[bench]')"


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the four files into ``out_dir``; returns their paths (PNGs only with matplotlib)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(_jsonable(report), indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        paths["throughput"] = plot(report, out / "throughput.png", "throughput")
        paths["latency"] = plot(report, out / "latency.png", "latency")
        plots_note = ""
    except ImportError:
        plots_note = PLOTS_SKIPPED
    paths["markdown"].write_text(markdown(report, plots_note))
    return paths


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def _sps(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.0f}"


def _ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1e3:.0f} µs" if v < 1 else f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def _fmt_metric(metric: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1%}" if metric in PCT_METRICS else f"{v:.2f}x"


def _fmt_target(t: dict[str, Any]) -> str:
    v = t["target"]
    return f"{t['comparison']} {v:.0%}" if t["metric"] in PCT_METRICS else f"{t['comparison']} {v}x"


def markdown(report: dict[str, Any], plots_note: str = "") -> str:
    m = report["machine"]
    cfg = report["config"]
    ceil = report["matmul_ceiling"]
    lines = ["# vae-deploy benchmark report", ""]
    lines.append(f"{m['date']} on {m['cpu_model']}, {m['usable_cores']} usable cores "
                 f"(load average {_load(m.get('load_average_start'))} at start, "
                 f"{_load(m.get('load_average_end'))} at end); run took {report.get('duration_s', 0):.0f} s"
                 + (" (quick mode: smoke test, not a measurement)" if cfg.get("quick") else "") + ".")
    share = m.get("other_processes_cpu_share")
    if share is not None:
        lines.append("")
        lines.append(f"Other processes used {share:.0%} of this machine's CPU time during the run"
                     + (" — **the machine was busy: absolute figures are low and multi-threaded backends suffer "
                        "most (a thread waiting for a descheduled peer stalls); compare within the run, and "
                        "re-run on a quiet machine for absolute numbers.**" if share > cfg.get("contention_threshold", 0.25)
                        else "."))
    lines.append("")
    lines.append(f"Threads: torch {m['torch_threads']} intra-op ({m['torch_parallel_backend']}), "
                 f"{m['torch_interop_threads']} inter-op; onnxruntime intra-op {m['ort_intra_op_threads']}, "
                 f"inter-op {m['ort_inter_op_threads']}. Versions: "
                 + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
                 + ". Environment: " + (", ".join(f"{k}={v}" for k, v in m["env"].items()) or "no thread variables set")
                 + ".")
    lines.append("")
    meas = ", ".join(f"{c['torch.mm']:.1f} (torch)" + (f" / {c['numpy.matmul']:.1f} (numpy)" if "numpy.matmul" in c else "")
                     for c in ceil["measurements"])
    lines.append(f"fp32 matmul ceiling: **{ceil['gflops']:.1f} GFLOP/s** ({ceil['method']}: {meas}).")
    lines.append("")
    lines += ceilings_table(report.get("ceilings"))

    lines += ["## Targets", "", "| target | measured (median) | best round | required | met | met on best round |",
              "|---|---:|---:|---:|:---:|:---:|"]
    notes = []
    for t in report["targets"]:
        verdict = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        vbest = {True: "yes", False: "no", None: "–"}[t.get("met_best")]
        mark = ""
        if t.get("note"):
            notes.append(t["note"])
            mark = f" [{len(notes)}]"
        lines.append(f"| {t['label']} | {_fmt_metric(t['metric'], t['measured'])}{mark} | "
                     f"{_fmt_metric(t['metric'], t.get('measured_best'))} | {_fmt_target(t)} | {verdict} | {vbest} |")
    lines.append("")
    for i, n in enumerate(notes, 1):
        lines.append(f"[{i}] {n}  ")
    if notes:
        lines.append("")
    lines.append("Measured: speed-ups are paired (median over rounds of the ratio within a round, backends "
                 "interleaved round by round); the ceiling fraction uses the median round; the Runtime overhead "
                 "is the A/B measurement below (median of per-pair differences of alternated single calls); the "
                 "batcher ratio is paired per window. Best round: the fastest round of each backend (fastest "
                 "call for the overhead, fastest window for the batcher), i.e. what each did while other "
                 "processes left it the CPUs; the verdict is the median's.")
    lines.append("")

    lines += ["## Models", "", "| model | what | decoder MFLOP/sample | encoder MFLOP/sample | backends | eager baseline |",
              "|---|---|---:|---:|---|---|"]
    for mod in report["models"]:
        fl = mod["flops_per_sample"]
        lines.append(f"| {mod['name']} | {mod['description']} | {_gf(fl.get('decoder'))} | {_gf(fl.get('encoder'))} | "
                     f"{', '.join(mod['backends'])} | {mod['eager_baseline'] or '–'} |")
    lines.append("")
    par = [(mod["name"], mod.get("parity_reference") or "eager", k, v) for mod in report["models"]
           for k, v in mod.get("parity_max_abs_diff", {}).items()]
    if par:
        lines.append("Sanity parity (max |difference| of decode and encode on 8 fixed inputs, against the model's "
                     "eager backend, else its first one): "
                     + "; ".join(f"{mn}/{b} vs {ref} {v:.1e}" for mn, ref, b, v in par) + ".")
        lines.append("")

    sizes = cfg["batch_sizes"]
    for mod in report["models"]:
        for op in cfg["ops"]:
            cells = [c for c in report["cells"] if c["model"] == mod["name"] and c["op"] == op]
            if not cells:
                continue
            what = "sampling (host noise + decoder)" if op == "sample" else "encoder"
            lines += [f"## {mod['name']}: {what}", ""]
            lines.append("samples/s (speed-up vs eager) · p50 / p99 latency per call; † = disturbed cell "
                         "(wide spread between rounds or long tail)")
            lines.append("")
            lines.append("| backend | " + " | ".join(f"batch {b}" for b in sizes) + " |")
            lines.append("|---|" + "---:|" * len(sizes))
            backends = list(dict.fromkeys(c["backend"] for c in cells))
            for b in backends:
                row = [b]
                for bs in sizes:
                    c = next((c for c in cells if c["backend"] == b and c["batch_size"] == bs), None)
                    if c is None:
                        row.append("–")
                    elif "error" in c:
                        row.append("error")
                    else:
                        sp = c.get("speedup_vs_eager")
                        mark = " †" if c["disturbed"] else ""
                        row.append(f"{_sps(c['samples_per_s'])}{'' if sp is None else f' ({sp:.2f}x)'}{mark}<br>"
                                   f"{_ms(c['latency_ms']['p50'])} / {_ms(c['latency_ms']['p99'])}")
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
            extra = []
            for c in cells:
                if c["backend"] == "ort-cpu" and c.get("overhead_vs_bare") is not None:
                    extra.append(f"batch {c['batch_size']} {c['overhead_vs_bare']:+.1%}")
            if extra:
                lines.append("Runtime overhead over bare `InferenceSession.run` (median call): " + ", ".join(extra) + ".")
            ceil_row = [f"batch {c['batch_size']} {c['gflops']:.1f} GFLOP/s ({c['ceiling_fraction']:.0%})"
                        for c in cells if c["backend"] == "ort-cpu" and c.get("gflops") and c.get("ceiling_fraction")]
            if ceil_row:
                lines.append("Runtime achieved (fraction of the matmul ceiling): " + ", ".join(ceil_row) + ".")
            errs = [c for c in cells if "error" in c]
            for c in errs:
                lines.append(f"- {c['backend']} batch {c['batch_size']}: {c['error']}")
            lines.append("")

    profs = [(mod["name"], mod["runtime_overhead_profile"]) for mod in report["models"]
             if mod.get("runtime_overhead_profile")]
    if profs:
        lines += ["## Runtime overhead at batch 1", "",
                  "A/B: `Runtime` and bare `InferenceSession.run` on the same sessions, single calls alternated "
                  "(bare, Runtime), (Runtime, bare), ...; the median of the per-pair differences over the bare "
                  "call's median (robust to a drifting machine). Sweep: ratio of the median calls in the "
                  "interleaved sweep (noisier). Wrapper: the same calls with stub sessions, i.e. the pure "
                  "Python cost per call.", "",
                  "| model | op | A/B overhead | A/B difference | bare p50 | sweep (median call) | wrapper (stub) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, prof in profs:
            for op in ("sample", "encode"):
                if op not in prof:
                    continue
                c = next((c for c in report["cells"] if c["model"] == name and c["op"] == op
                          and c["backend"] == "ort-cpu" and c["batch_size"] == 1), None)
                meas = c.get("overhead_vs_bare") if c else None
                p = prof[op]
                ab = p.get("ab") or {}
                lines.append(f"| {name} | {op} | {_pct(ab.get('overhead'))} | {_signed_us(ab.get('median_diff_us'))} | "
                             f"{_us(p.get('bare_p50_us'))} | {_pct(meas)} | {p['overhead_us']:.2f} µs |")
        name, prof = profs[0]
        lines += ["", f"Where the wrapper's time goes ({name}; {prof['method']}):", ""]
        for op, what in (("sample", "`Runtime.sample(1)`"), ("encode", "`Runtime.encode(x[1])`")):
            p = prof[op]
            lines.append(f"- {what}: {p['runtime_us']:.2f} µs vs bare {p['bare_us']:.2f} µs "
                         f"(+{p['overhead_us']:.2f} µs):")
            for step, us in p["steps_us"].items():
                indent = "    " if step.startswith("  ") else "  "
                lines.append(f"{indent}- {step.strip()}: {us:.2f} µs")
        lines.append("")

    lines += ["## Micro-batcher", ""]
    if report["batcher"]:
        lines += ["| model | clients | samples/s | offline batch-N samples/s | ratio | mean batch | p50 / p99 latency |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for b in report["batcher"]:
            if "error" in b:
                lines.append(f"| {b['model']} | – | error: {b['error']} | | | | |")
                continue
            st = b.get("batcher_stats")
            mean_batch = (f"{st['items'] / st['batches']:.1f}" if isinstance(st, dict) and st.get("batches")
                          and "items" in st else "–")
            lines.append(f"| {b['model']} | {b['clients']} | {_sps(b['samples_per_s'])} | "
                         f"{_sps(b['offline_samples_per_s'])} (N={b['max_batch']}) | {b['ratio']:.0%} | {mean_batch} | "
                         f"{_ms(b['latency_ms']['p50'])} / {_ms(b['latency_ms']['p99'])} |")
        b0 = report["batcher"][0]
        lines.append("")
        lines.append(f"Each client thread asks for one sample at a time in a loop (`MicroBatcher.sample(1)`, "
                     f"max_batch {b0.get('max_batch')}, max_delay {b0.get('max_delay_ms')} ms); windows of "
                     f"{b0.get('window_s')} s alternate with offline `Runtime.sample({b0.get('max_batch')})` windows.")
    else:
        lines.append("Not measured.")
    lines.append("")

    if report["skipped"]:
        lines += ["## Skipped", ""]
        seen = set()
        for s in report["skipped"]:
            key = (s.get("backend"), s.get("op"), s["reason"])
            if key in seen:
                continue
            seen.add(key)
            where = s.get("model", "all models")
            op = f" {s['op']}" if s.get("op") else ""
            lines.append(f"- {s['backend']}{op} ({where}): {s['reason']}")
        lines.append("")

    lines += ["## Method", "",
              f"- Each (model, op, batch size) group: a cold call and {cfg['warmup_s']} s of warm-up per backend, "
              f"then up to {cfg['rounds']} rounds (fewer, never under {cfg['min_rounds']}, for groups longer than "
              f"{cfg['max_group_s']} s); in each round every backend runs about {cfg['round_s'] * 1e3:.0f} ms of "
              "back-to-back calls, in an order rotated every round; one untimed call re-warms a backend after a "
              "switch; the garbage collector is off while timing.",
              "- samples/s is the median of the rounds' throughputs; latencies are percentiles of every timed call.",
              f"- A cell is flagged † when its rounds' IQR/median exceeds {cfg['spread_threshold']}, its "
              f"p95/p50 latency exceeds {cfg['tail_threshold']}, or other processes used more than "
              f"{cfg.get('contention_threshold', 0.25):.0%} of the CPUs while its group was timed (`/proc/stat`).",
              "- GFLOP/s counts 2 x the multiply-accumulates of Gemm/MatMul/Conv/ConvTranspose in the fp32 ONNX "
              "graph (the same count for every backend of a model); sampling time includes the host noise.",
              "- `ort-cpu` is `Runtime.load(..., provider='cpu')`; `ort-cpu-bare` calls the same sessions' "
              "`InferenceSession.run` directly (noise drawn the same way); `ort-cpu-<p>` is the precision "
              "variant `p` listed in the export's manifest.",
              ""]
    if plots_note:
        lines += [plots_note, ""]
    else:
        lines += ["![throughput](throughput.png)", "", "![latency](latency.png)", ""]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1%}"


def _signed_us(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f} µs"


def _us(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f} µs"


def _gf(v: float | None) -> str:
    return "–" if v is None else f"{v / 1e6:.3g}"


def _load(v: Any) -> str:
    return "?" if not v else "/".join(f"{x:.1f}" for x in v)


def plot(report: dict[str, Any], path: Path, kind: str) -> Path:
    """One panel per model (columns) and op (rows); one line per backend; log-log axes."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    models = [m["name"] for m in report["models"]]
    ops = [op for op in report["config"]["ops"] if any(c["op"] == op for c in report["cells"])]
    backends = list(dict.fromkeys(c["backend"] for c in report["cells"]))
    sizes = list(report["config"]["batch_sizes"])
    cmap = plt.get_cmap("tab20" if len(backends) > 10 else "tab10")
    colors = {b: cmap(i % cmap.N) for i, b in enumerate(backends)}
    markers = "osD^vP*Xh<>p"
    marker = {b: markers[i % len(markers)] for i, b in enumerate(backends)}
    ncols, nrows = max(1, len(models)), max(1, len(ops))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for r, op in enumerate(ops):
        for col, model in enumerate(models):
            ax = axes[r][col]
            for b in backends:
                cells = sorted((c for c in report["cells"] if c["model"] == model and c["op"] == op
                                and c["backend"] == b and "error" not in c), key=lambda c: c["batch_size"])
                if not cells:
                    continue
                xs = [c["batch_size"] for c in cells]
                style = {"color": colors[b], "marker": marker[b], "ms": 4, "lw": 1.5,
                         "ls": "--" if b.endswith("-bare") else "-"}
                if kind == "throughput":
                    ax.plot(xs, [c["samples_per_s"] for c in cells], label=b, **style)
                else:
                    p50 = [c["latency_ms"]["p50"] for c in cells]
                    p99 = [c["latency_ms"]["p99"] for c in cells]
                    ax.plot(xs, p50, label=b, **style)
                    ax.fill_between(xs, p50, p99, color=colors[b], alpha=0.12, lw=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sizes)
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.grid(True, which="both", alpha=0.3)
            what = "sampling" if op == "sample" else "encoder"
            ax.set_title(f"{model}: {what}", fontsize=10)
            if r == nrows - 1:
                ax.set_xlabel("batch size")
            if col == 0:
                ax.set_ylabel("samples/s" if kind == "throughput" else "latency per call, ms (p50, band to p99)")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    m = report["machine"]
    title = ("throughput (higher is better)" if kind == "throughput" else "latency (lower is better)")
    # Title on two lines and the legend in its own column right of the panels; bbox_inches="tight"
    # grows the saved image to whatever they need, so neither is cut at any number of backends.
    fig.suptitle(f"vae-deploy {title}\n{m['cpu_model']}, {m['usable_cores']} cores, {m['date'][:10]}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False,
               title="backend", ncol=1 if len(labels) <= 3 * max(4, nrows * 4) else 2)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)
    return path


def ceilings_table(ceilings: dict[str, Any] | None) -> list[str]:
    """Practical (best GEMM per engine) and theoretical (flags x cores x clock) ceilings per precision."""
    if not ceilings:
        return []
    lines = [f"CPU class **{ceilings['cpu_class']}**. Ceilings per precision ({ceilings['method']}); every row's "
             "\"ceiling\" share is against the practical ceiling of its own precision:", "",
             "| precision | practical GFLOP/s | by | per engine | theoretical peak | practical / peak |",
             "|---|---:|---|---|---:|---:|"]
    for precision, c in ceilings["by_precision"].items():
        per = {}
        for g in ceilings["gemm_measurements"]:
            if g["precision"] == precision and g.get("gflops"):
                per[g["engine"]] = max(per.get(g["engine"], 0.0), g["gflops"])
        peak = c.get("peak") or {}
        peak_s = (f"{peak['gflops']:.0f} ({peak['unit']}, {peak['per_cycle']}/cycle x {peak['cores']} cores x "
                  f"{peak['ghz']:.2f} GHz)" if peak.get("gflops") else "n/a")
        share = f"{c['share_of_peak']:.0%}" if c.get("share_of_peak") else "n/a"
        lines.append(f"| {precision} | {c['gflops']:.1f} | {c['engine']} | "
                     + ", ".join(f"{k} {v:.1f}" for k, v in per.items()) + f" | {peak_s} | {share} |")
    lines.append("")
    return lines
