"""Triton serving under concurrent single-example clients: dynamic batching on vs off.

    python bench/triton_load.py [--export export/] [--clients 16] [--requests 200] [--rounds 2]

Starts two in-process Triton servers (PyTriton) on loopback ports over the same export, one
with dynamic batching and one without, and drives them in alternating rounds (the machine
is shared and noisy: alternating keeps the comparison fair). The clients run in separate
processes so their Python does not compete with the server's callables for one GIL. Reports
requests/s and p50/p99 latency, and where a request's time goes: the client and HTTP/gRPC
(outside Triton), Triton's queue (the batching wait), PyTriton's hop from Triton's Python
stub to this process, the Python callable, and onnxruntime inside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"
OPS = {"decode": ("vae_decoder", "z", "x_hat"), "encode": ("vae_encoder", "x", "mu")}


# --- client side (runs in worker processes) ---------------------------------------------------
def _client_worker(url: str, protocol: str, model: str, in_name: str, out_name: str, example: np.ndarray,
                   threads: int, requests: int, warmup: int) -> dict[str, Any]:
    """``threads`` clients, each sending ``requests`` single-example requests back to back."""
    import threading

    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)
    marks: dict[str, float] = {}

    def one(c: Any) -> None:
        inp = tc.InferInput(in_name, list(example.shape), "FP32")
        inp.set_data_from_numpy(example)
        c.infer(model, [inp], outputs=[tc.InferRequestedOutput(out_name)]).as_numpy(out_name)

    def run() -> None:
        c = tc.InferenceServerClient(url)
        try:
            for _ in range(warmup):
                one(c)
            mine = []
            if barrier.wait() == 0:
                marks["start"] = time.perf_counter()
            for _ in range(requests):
                t = time.perf_counter()
                try:
                    one(c)
                except Exception as e:  # counted and reported, never hidden
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}"[:200])
                    continue
                mine.append(time.perf_counter() - t)
            with lock:
                lat.extend(mine)
        finally:
            c.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"latencies": lat, "errors": errors, "start": marks.get("start", 0.0), "end": time.perf_counter()}


# --- server side -------------------------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _triton_stats(server: Any, model: str) -> dict[str, float]:
    s = server.inference_statistics(model)
    st = s["inference_stats"]
    out = {"inference_count": float(s["inference_count"]), "execution_count": float(s["execution_count"])}
    for k in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        out[f"{k}_ns"] = float(st[k]["ns"])
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def _demo_export(folder: Path) -> Path:
    """The demo's architecture (MLP, latent 8, hidden 256, 1x8x8 digits), seeded weights:
    timing does not depend on the weights' values."""
    import torch

    from vae_deploy.exporters import export
    from vae_deploy.training.model import VAE, VAEConfig

    torch.manual_seed(0)
    return export(VAE(VAEConfig()).eval(), folder / "export", formats=("onnx",), verify=False).out_dir


def _round(server: Any, protocol: str, op: str, example: np.ndarray, clients: int, requests: int,
           procs: int, pool: cf.ProcessPoolExecutor) -> dict[str, Any]:
    model, in_name, out_name = OPS[op]
    url = server.http_url if protocol == "http" else server.grpc_url
    stats = server.stats[model]
    stats.reset()
    before = _triton_stats(server, model)
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    futures = [pool.submit(_client_worker, url, protocol, model, in_name, out_name, example, k, requests, 5)
               for k in per if k]
    results = [f.result() for f in futures]
    tri = _delta(_triton_stats(server, model), before)
    lat = np.concatenate([r["latencies"] for r in results]) if results else np.empty(0)
    errors = [e for r in results for e in r["errors"]]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cs = stats.snapshot()
    return {"latencies_s": lat, "errors": errors, "wall_s": wall, "callable": cs, "triton": tri}


def _summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    lat = np.concatenate([r["latencies_s"] for r in rounds])
    n = len(lat)
    wall = sum(r["wall_s"] for r in rounds)
    tri = {k: sum(r["triton"][k] for r in rounds) for k in rounds[0]["triton"]}
    cs = {k: sum(r["callable"][k] for r in rounds) for k in ("calls", "requests", "rows", "callable_s", "runtime_s")}
    # Triton counts all requests it served in the window, including the workers' warm-up ones.
    count = max(tri["inference_count"], 1.0)
    execs = max(tri["execution_count"], 1.0)
    calls = max(cs["calls"], 1)
    client_ms = float(lat.mean()) * 1e3
    server_ms = tri["success_ns"] / count / 1e6
    compute_ms = (tri["compute_input_ns"] + tri["compute_infer_ns"] + tri["compute_output_ns"]) / count / 1e6
    callable_ms = cs["callable_s"] / calls * 1e3
    runtime_ms = cs["runtime_s"] / calls * 1e3
    return {
        "requests": n,
        "errors": sum(len(r["errors"]) for r in rounds),
        "error_examples": [e for r in rounds for e in r["errors"]][:3],
        "req_per_s": n / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) * 1e3,
        "p99_ms": float(np.percentile(lat, 99)) * 1e3,
        "mean_ms": client_ms,
        "mean_batch": tri["inference_count"] / execs,
        "breakdown_ms": {
            "client + protocol (outside Triton)": client_ms - server_ms,
            "Triton queue (batching wait)": tri["queue_ns"] / count / 1e6,
            "Triton compute, of which:": compute_ms,
            "  PyTriton stub <-> process hop": compute_ms - callable_ms,
            "  Python callable (glue)": callable_ms - runtime_ms,
            "  Runtime call (onnxruntime)": runtime_ms,
            "Triton other": server_ms - tri["queue_ns"] / count / 1e6 - compute_ms,
        },
    }


def _direct_runtime_ms(rt: Any, op: str, example: np.ndarray, n: int = 2000) -> float:
    fn = rt.decode if op == "decode" else rt.encode
    for _ in range(100):
        fn(example)
    t = time.perf_counter()
    for _ in range(n):
        fn(example)
    return (time.perf_counter() - t) / n * 1e3


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import pytriton

    from vae_deploy.runtime.core import Runtime
    from vae_deploy.serving.serve import ServeOptions, VaeTritonServer

    tmp = tempfile.TemporaryDirectory(prefix="vae-triton-bench-")
    export_dir = Path(args.export) if args.export else _demo_export(Path(tmp.name))
    modes = {"dynamic batching on": True, "dynamic batching off": False}
    servers = {}
    try:
        for name, on in modes.items():
            http, grpc, metrics = _free_ports(3)
            rt = Runtime.load(export_dir, provider="cpu", max_batch=args.max_batch, check_finite=False,
                              threads=args.ort_threads)
            opts = ServeOptions(host=HOST, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                max_batch=args.max_batch, max_delay_us=args.max_delay_us, dynamic_batching=on,
                                log_file=Path(tmp.name) / f"tritonserver-{'on' if on else 'off'}.log")
            servers[name] = VaeTritonServer(rt, opts).start()
        rt = next(iter(servers.values())).runtime
        shape = rt.sample_latent_shape() if args.op == "decode" else rt.spec.concrete_input_shape
        example = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        direct_ms = _direct_runtime_ms(rt, args.op, example)
        per_mode: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=args.client_procs, mp_context=ctx) as pool:
            for _ in range(args.rounds):
                for name, srv in servers.items():
                    per_mode[name].append(_round(srv, args.protocol, args.op, example, args.clients,
                                                 args.requests, args.client_procs, pool))
    finally:
        for srv in servers.values():
            srv.stop()
        tmp.cleanup()
    return {
        "setup": {
            "op": args.op, "protocol": args.protocol, "clients": args.clients, "requests_per_client": args.requests,
            "rounds": args.rounds, "client_processes": args.client_procs, "max_batch": args.max_batch,
            "max_delay_us": args.max_delay_us, "ort_threads": args.ort_threads or "onnxruntime default",
            "model": {"input_shape": list(rt.input_shape), "latent_shape": list(rt.latent_shape)},
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "pytriton": getattr(pytriton, "__version__", "?"),
                    "load_average": os.getloadavg()},
        "direct_runtime_ms": direct_ms,
        "results": {name: _summarise(rounds) for name, rounds in per_mode.items()},
    }


def format_report(report: dict[str, Any]) -> str:
    s, res = report["setup"], report["results"]
    names = list(res)
    lines = [
        f"Triton via PyTriton, {s['op']} over {s['protocol']}: {s['clients']} concurrent single-example clients x "
        f"{s['requests_per_client']} requests x {s['rounds']} rounds (max batch {s['max_batch']}, max delay "
        f"{s['max_delay_us']} us); {report['machine']['cpus']} CPUs, load average "
        f"{', '.join(f'{v:.1f}' for v in report['machine']['load_average'])}",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def row(label: str, fmt: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt.format(get(res[n])) for n in names) + " |")

    row("requests/s", "{:.0f}", lambda r: r["req_per_s"])
    row("p50 latency (ms)", "{:.2f}", lambda r: r["p50_ms"])
    row("p99 latency (ms)", "{:.2f}", lambda r: r["p99_ms"])
    row("mean batch Triton formed", "{:.2f}", lambda r: r["mean_batch"])
    row("errors", "{}", lambda r: r["errors"])
    row("**mean latency (ms)**", "{:.3f}", lambda r: r["mean_ms"])
    for k in res[names[0]]["breakdown_ms"]:
        row(k.replace("  ", "&nbsp;&nbsp;"), "{:.3f}", lambda r, k=k: r["breakdown_ms"][k])
    lines.append("")
    lines.append(f"direct Runtime.{s['op']} of one example in this process: {report['direct_runtime_ms']:.3f} ms")
    lines.append("Per-request means; the callable and Runtime rows are per execution (one batch), which every "
                 "request in that batch waits for.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", default=None, help="export folder (default: a demo-sized MLP, exported to a temp dir)")
    p.add_argument("--op", choices=sorted(OPS), default="decode")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=200, help="per client per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--client-procs", type=int, default=2, help="processes the clients' threads are spread over")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-delay-us", type=int, default=100)
    p.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads per session (0: default)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    args.ort_threads = args.ort_threads or None
    report = run(args)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(r["errors"] for r in report["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
