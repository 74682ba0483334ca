"""Time to first image and decode latency of the web page, beside the Python Runtime's figures
for the same decoder: ``python -m vae_deploy.serving.web.measure EXPORT_DIR --out bench/results/web``.

The page runs in headless Chromium served from 127.0.0.1: once plain (onnxruntime-web picks 1
WASM thread) and once cross-origin isolated (COOP/COEP headers) with several threads. Latency is
per call, median and p95 over ``reps`` rounds of awaited ``vaeDeploy.decode`` calls after a
warm-up, timed in the page with performance.now(); the Runtime is timed the same way in Python (CPU provider, same threads).
Writes ``web_latency.json`` and ``web_latency.md``; optionally a screenshot of the page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.serving.web import browser
from vae_deploy.serving.web.ortdist import ORT_WEB_VERSION
from vae_deploy.serving.web.prng import normal
from vae_deploy.serving.web.server import serve_site
from vae_deploy.serving.web.site import build_site

# Rounds of CALLS awaited decodes, per-call time = round / CALLS: the page's clock is coarsened
# (100 us without cross-origin isolation), too coarse to time one call of a small decoder.
CALLS = 10
TIME_DECODE_JS = """async ([batch, reps, warmup, calls]) => {
  const api = window.vaeDeploy; await api.ready;
  const { z, dims } = api.noise(batch, 1234);
  for (let i = 0; i < warmup; i++) await api.decode(z, dims);
  const t = [];
  for (let i = 0; i < reps; i++) {
    const s = performance.now();
    for (let k = 0; k < calls; k++) await api.decode(z, dims);
    t.push((performance.now() - s) / calls);
  }
  return t;
}"""


def summary(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "reps": int(a.size)}


def page_rows(chrome: Any, site: Path, modes: list[tuple[bool, int]], batches: list[int], reps: int,
              loads: int, screenshot: Path | None) -> list[dict[str, Any]]:
    """One row per (threading mode, batch) from a launched browser ``chrome``."""
    rows = []
    for isolated, threads in modes:
        with serve_site(site, isolated=isolated) as url:
            first, threads_seen = [], None
            for _ in range(loads):  # a fresh context per load: no warm session
                page = browser.open_page(chrome, f"{url}?threads={threads}")
                err = page.evaluate("window.vaeDeploy.error")
                if err:
                    raise browser.BrowserError(f"the page failed to load: {err}")
                first.append(page.evaluate("window.vaeDeploy.timings.firstImageMs"))
                threads_seen = page.evaluate("window.vaeDeploy.decoder.info.threads")
                if screenshot is not None and not isolated:
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot), full_page=True)
                    screenshot = None
                last = page
                if len(first) < loads:
                    page.context.close()
            for b in batches:
                t = last.evaluate(TIME_DECODE_JS, [b, reps, max(3, reps // 10), CALLS])
                rows.append({"backend": "ort-web-wasm", "threads": threads_seen,
                             "cross_origin_isolated": isolated, "batch": b,
                             "first_image_ms": statistics.median(first), **summary(t)})
            last.context.close()
    return rows


def runtime_rows(export_dir: Path, thread_counts: list[int], batches: list[int], reps: int) -> list[dict[str, Any]]:
    from vae_deploy.runtime.core import Runtime

    rows = []
    for threads in thread_counts:
        t0 = time.perf_counter()
        rt = Runtime.load(export_dir, provider="cpu", threads=threads)
        first_z = normal(int(np.prod(rt.sample_latent_shape())), 0).reshape(1, *rt.sample_latent_shape())
        rt.decode(first_z)
        first_ms = (time.perf_counter() - t0) * 1e3
        for b in batches:
            z = normal(b * first_z.size, 1234).reshape(b, *first_z.shape[1:])
            for _ in range(max(3, reps // 10)):
                rt.decode(z)
            t = []
            for _ in range(reps):
                s = time.perf_counter()
                for _ in range(CALLS):
                    rt.decode(z)
                t.append((time.perf_counter() - s) * 1e3 / CALLS)
            rows.append({"backend": "ort-cpu", "threads": threads, "cross_origin_isolated": None, "batch": b,
                         "first_image_ms": first_ms, **summary(t)})
    return rows


def machine() -> dict[str, Any]:
    import onnxruntime

    chromium = browser.chromium_path()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "chromium": str(chromium), "onnxruntime_web": ORT_WEB_VERSION, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Web page vs Python Runtime: decoder latency ({report['export']})", "",
        "Time to first image: page = navigation start to the sample grid drawn (fresh context, median of "
        f"{report['loads']} loads); Python = Runtime.load + one decode. Decode: per call, median / p95 over "
        f"{report['reps']} rounds of {CALLS} awaited calls after warm-up. Indicative: a shared machine.", "",
        "| backend | threads | cross-origin isolated | batch | first image (ms) | decode median (ms) | decode p95 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        iso = "-" if r["cross_origin_isolated"] is None else ("yes" if r["cross_origin_isolated"] else "no")
        lines.append(f"| {r['backend']} | {r['threads']} | {iso} | {r['batch']} | {r['first_image_ms']:.0f} | "
                     f"{r['median_ms']:.3f} | {r['p95_ms']:.3f} |")
    m = report["machine"]
    lines += ["", f"Machine: {m['cores']} cores, onnxruntime-web {m['onnxruntime_web']}, onnxruntime {m['onnxruntime']}, "
              f"Python {m['python']}."]
    return "\n".join(lines) + "\n"


def measure(export_dir: Path, out: Path, *, reps: int = 50, loads: int = 3, batches: tuple[int, ...] = (1, 16),
            threads: int | None = None, screenshot: Path | None = None, ort_dist: Path | None = None,
            chrome: Any = None) -> dict[str, Any]:
    """Build the site in a temporary folder, measure page and Runtime, write JSON + Markdown.
    ``chrome``: a launched Playwright browser to use (default: start one, then close it)."""
    many = threads or min(4, os.cpu_count() or 1)
    modes = [(False, 1)] + ([(True, many)] if many > 1 else [])
    with tempfile.TemporaryDirectory(prefix="vae-web-") as tmp:
        site = build_site(export_dir, Path(tmp) / "site", ort_dist=ort_dist).out_dir
        if chrome is not None:
            rows = page_rows(chrome, site, modes, list(batches), reps, loads, screenshot)
        else:
            with browser.sync_playwright() as pw:
                chrome = browser.launch(pw)
                try:
                    rows = page_rows(chrome, site, modes, list(batches), reps, loads, screenshot)
                finally:
                    chrome.close()
    rows += runtime_rows(export_dir, sorted({1, many}), list(batches), reps)
    report = {"export": str(export_dir), "reps": reps, "loads": loads, "machine": machine(), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "web_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "web_latency.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vae_deploy.serving.web.measure", description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/web"))
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threads of the isolated run (default min(4, cores))")
    ap.add_argument("--screenshot", type=Path, default=None, help="also save a PNG of the page (e.g. docs/web.png)")
    ap.add_argument("--ort-dist", type=Path, default=None)
    args = ap.parse_args(argv)
    from vae_deploy.errors import VaeDeployError

    try:
        report = measure(args.export_dir, args.out, reps=args.reps, loads=args.loads, threads=args.threads,
                         screenshot=args.screenshot, ort_dist=args.ort_dist)
    except VaeDeployError as e:
        print(f"Error: {e}")
        return 1
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
