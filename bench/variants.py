"""Sampling throughput of every precision variant against torch eager, side by side.

    python bench/variants.py                      # 2 threads, wall clock
    python bench/variants.py --threads 1 --clock cpu   # robust on a busy machine

For each model (random weights, seed 0) the decoder is exported with the fp32, fp32-fast
and int8 variants through ``vae_deploy.exporters.export`` (so each one passed its parity
check), plus both int8 methods for comparison. Then every backend decodes the same
``z ~ N(0, I)`` batch in interleaved rounds (A B C ... A B C ...), so that load from other
processes hits all of them alike; the table gives medians. ``--clock cpu`` times the
calling thread's CPU time, which preemption does not inflate; it is only meaningful with
``--threads 1`` (then both torch and onnxruntime compute on the calling thread).

``--quality`` also trains an MLP and a conv VAE on digits and reports what int8 costs there
(max/mean error against eager, test -ELBO and reconstruction error), as recorded at export.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODELS: dict[str, dict[str, Any]] = {
    "conv28": dict(family="conv", input_shape=(1, 28, 28), latent_dim=16, hidden=(32, 64)),
    "mlp784": dict(family="mlp", input_shape=(1, 28, 28), latent_dim=16, hidden=(512, 256)),
    "conv64x3": dict(family="conv", input_shape=(3, 64, 64), latent_dim=128, hidden=(32, 64)),
}
TARGETS = {("conv28", "fp32-fast"): 3.0, ("mlp784", "int8"): 4.5, ("conv64x3", "fp32-fast"): 2.2}


def _session(path: Path, threads: int):
    import onnxruntime as ort

    from vae_deploy.runtime.core import default_session_options

    return ort.InferenceSession(str(path), default_session_options(threads), providers=["CPUExecutionProvider"])


def build_backends(name: str, cfg: dict[str, Any], folder: Path, threads: int, batch: int
                   ) -> tuple[dict[str, Callable[[], np.ndarray]], dict[str, Any]]:
    import onnx
    import torch

    from vae_deploy.adapters import from_vae
    from vae_deploy.exporters import export
    from vae_deploy.exporters.quantize import quantize_int8
    from vae_deploy.exporters.variants import calibration_inputs
    from vae_deploy.training.model import VAE, VAEConfig

    torch.manual_seed(0)
    model = VAE(VAEConfig(**cfg)).eval()
    exp = from_vae(model)
    res = export(exp, folder, formats=("onnx",), precisions=("fp32", "fp32-fast", "int8"), batch_sizes=(1, 37))
    info = {v.precision: {"status": v.status, "reason": v.reason, "info": v.info} for v in res.variants}
    z = np.random.default_rng(1).standard_normal((batch, cfg["latent_dim"]), dtype=np.float32)
    zt = torch.from_numpy(z)

    def eager() -> np.ndarray:
        with torch.inference_mode():
            return model.decode(zt).numpy()

    backends: dict[str, Callable[[], np.ndarray]] = {"torch-eager": eager}
    files = {"onnxruntime-fp32": folder / "decoder.onnx", "onnxruntime-fp32-fast": folder / "decoder.fp32-fast.onnx",
             "onnxruntime-int8": folder / "decoder.int8.onnx"}
    # both int8 methods, on the graph int8 is made from, to show why `auto` picks what it picks
    src = files["onnxruntime-fp32-fast"] if files["onnxruntime-fp32-fast"].is_file() else files["onnxruntime-fp32"]
    cal, _ = calibration_inputs(exp)
    from vae_deploy.exporters.rewrite import optimize_for_cpu

    alt = optimize_for_cpu(onnx.load(str(folder / "decoder.onnx")), chain=False)
    if alt.changed and files["onnxruntime-fp32-fast"].is_file():  # the interleave form the chain avoids
        onnx.save(alt.model, str(folder / "decoder.interleave.bench.onnx"))
        files["  fp32-fast interleave"] = folder / "decoder.interleave.bench.onnx"
    for method in ("dynamic", "static"):
        try:
            q, _ = quantize_int8(onnx.load(str(src)), method=method, calibration=cal["decoder"])
        except Exception as e:  # e.g. nothing to quantise
            info[f"int8-{method}"] = str(e)
            continue
        p = folder / f"decoder.int8-{method}.bench.onnx"
        onnx.save(q, str(p))
        files[f"  int8 {method}"] = p
    for label, path in files.items():
        if path.is_file():
            sess = _session(path, threads)
            backends[label] = lambda s=sess: s.run(None, {"z": z})[0]
    return backends, info


def measure(backends: dict[str, Callable[[], np.ndarray]], rounds: int, clock: Callable[[], float]
            ) -> dict[str, dict[str, float]]:
    ref = backends["torch-eager"]()
    errors = {k: float(np.abs(f() - ref).max()) for k, f in backends.items()}  # also warms up
    for f in backends.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in backends}
    for _ in range(rounds):
        for k, f in backends.items():
            t = clock()
            f()
            times[k].append(clock() - t)
    eager = statistics.median(times["torch-eager"])
    return {k: {"median_ms": statistics.median(v) * 1e3, "p90_ms": float(np.percentile(v, 90)) * 1e3,
                "speedup_vs_eager": eager / statistics.median(v), "max_abs_error_vs_eager": errors[k]}
            for k, v in times.items()}


def quality() -> dict[str, Any]:
    """Train small VAEs on digits and export int8: what does it cost on a real model?"""
    import torch

    from vae_deploy.exporters import export
    from vae_deploy.exporters.variants import parity_digest
    from vae_deploy.training.data import load_dataset
    from vae_deploy.training.model import VAEConfig
    from vae_deploy.training.train import TrainConfig, checkpoint_meta, train

    torch.set_num_threads(1)
    ds = load_dataset("digits")
    out = {}
    for name, cfg in {"mlp-digits": VAEConfig(family="mlp", input_shape=(1, 8, 8), latent_dim=16, hidden=(512, 256)),
                      "conv-digits": VAEConfig(family="conv", input_shape=(1, 8, 8), latent_dim=16, hidden=(32, 64))
                      }.items():
        tcfg = TrainConfig(epochs=150, batch_size=128, seed=0)
        result = train(cfg, ds, tcfg, progress=False)
        from vae_deploy.training.checkpoint import save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Path(tmp) / "ckpt.pt", result.model, checkpoint_meta(ds, tcfg, result))
            res = export(ckpt, Path(tmp) / "export", formats=("onnx",), precisions=("fp32", "fp32-fast", "int8", "fp16"))
        out[name] = {v.precision: ({"status": v.status, **parity_digest(v.report)} if v.report else
                                   {"status": v.status, "reason": v.reason}) for v in res.variants}
        out[name]["trained_test_nelbo"] = result.metrics["test_nelbo"]
    return out


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--quality", action="store_true", help="also train on digits and report int8's cost")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures the calling thread only: use it with --threads 1")
    import torch

    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    report: dict[str, Any] = {"machine": machine(), "threads": args.threads, "batch": args.batch,
                              "rounds": args.rounds, "clock": args.clock, "models": {}}
    print(f"# {report['machine']['cpu']}, {report['machine']['cores']} cores, load {report['machine']['load_average']}, "
          f"threads {args.threads}, batch {args.batch}, {args.rounds} interleaved rounds, {args.clock} clock")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            backends, info = build_backends(name, MODELS[name], Path(tmp), args.threads, args.batch)
            results = measure(backends, args.rounds, clock)
        report["models"][name] = {"config": MODELS[name], "results": results, "variants": info}
        print(f"\n## {name} decoder {MODELS[name]}")
        print(f"{'backend':<24} {'median ms':>10} {'p90 ms':>9} {'samples/s':>10} {'x eager':>8} {'max err':>9}")
        for k, r in results.items():
            print(f"{k:<24} {r['median_ms']:>10.2f} {r['p90_ms']:>9.2f} {args.batch / r['median_ms'] * 1e3:>10.0f} "
                  f"{r['speedup_vs_eager']:>8.2f} {r['max_abs_error_vs_eager']:>9.1e}")
        for (m, prec), target in TARGETS.items():
            if m == name:
                got = results.get(f"onnxruntime-{prec}", {}).get("speedup_vs_eager")
                print(f"target {prec} >= {target}x eager: " + ("n/a" if got is None else
                                                              f"{got:.2f}x {'met' if got >= target else 'MISSED'}"))
        for prec, v in info.items():
            if isinstance(v, dict) and v["status"] != "written":
                print(f"{prec}: {v['status']}: {v['reason']}")
    report["machine"]["load_average_end"] = os.getloadavg()
    if args.quality:
        report["quality"] = quality()
        print("\n## int8/fp16 cost on trained digits models (parity at export vs eager)")
        for name, q in report["quality"].items():
            for prec, d in q.items():
                if isinstance(d, dict) and "max_abs_error" in d:
                    print(f"{name:<12} {prec:<9} max abs {d['max_abs_error']:.2e}  mean abs {d['mean_abs_error']:.2e}  "
                          f"-ELBO {d['reference_nelbo']:.3f} -> {d['candidate_nelbo']:.3f} ({d['elbo_rel_diff']:.2e})  "
                          f"recon MAE {d['reference_recon_mae']:.4f} -> {d['candidate_recon_mae']:.4f}")
                elif isinstance(d, dict):
                    print(f"{name:<12} {prec:<9} {d['status']}: {d.get('reason', '')[:100]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nreport: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
