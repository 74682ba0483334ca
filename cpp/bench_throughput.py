"""Sampling throughput, C++ (vae_sample --repeat) against onnxruntime in Python, side by side.

Both draw z ~ N(0, I) of shape [batch, *latent_shape] and run decoder.onnx on it, with the
same intra-op thread count and ONNX Runtime library; blocks of rounds alternate between the
two so that the machine's noise falls on both.

    python cpp/bench_throughput.py --model export/ [--batch 64] [--threads 1] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def python_block(sess: ort.InferenceSession, latent_shape, batch: int, repeat: int, warmup: int) -> float:
    """Median seconds per batch over `repeat` rounds of draw + decode."""
    rng = np.random.default_rng(0)
    shape = (batch, *latent_shape)
    for _ in range(warmup):
        sess.run(None, {"z": rng.standard_normal(shape, dtype=np.float32)})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, {"z": rng.standard_normal(shape, dtype=np.float32)})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpp_block(exe: Path, model: Path, batch: int, threads: int, repeat: int, warmup: int) -> float:
    out = subprocess.run(
        [str(exe), "--model", str(model), "--n", str(batch), "--threads", str(threads),
         "--repeat", str(repeat), "--warmup", str(warmup)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return float(re.search(r"median_ms=([0-9.]+)", out).group(1)) / 1000


def main() -> None:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="export folder with decoder.onnx")
    p.add_argument("--exe", type=Path, default=here / "build" / "vae_sample")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2000, help="rounds per block")
    p.add_argument("--blocks", type=int, default=3, help="alternating blocks per side")
    args = p.parse_args()

    decoder = args.model / "decoder.onnx"
    props = {e.key: e.value for e in onnx.load(str(decoder)).metadata_props}
    latent_shape = tuple(int(s) for s in props["vae_deploy.latent_shape"].split(","))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(decoder), opts, providers=["CPUExecutionProvider"])

    cpp, py = [], []
    for _ in range(args.blocks):
        cpp.append(cpp_block(args.exe, args.model, args.batch, args.threads, args.repeat, 50))
        py.append(python_block(sess, latent_shape, args.batch, args.repeat, 50))
    c, q = statistics.median(cpp), statistics.median(py)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; onnxruntime {ort.__version__}; "
          f"model {props.get('vae_deploy.family', '?')} latent {latent_shape}; batch {args.batch}, "
          f"threads {args.threads}, {args.blocks} blocks x {args.repeat} rounds")  # fmt: skip
    print(
        f"C++    median {c * 1e3:8.4f} ms/batch  {args.batch / c:12.0f} samples/s  (blocks: "
        + ", ".join(f"{args.batch / t:.0f}" for t in cpp)
        + ")"
    )
    print(
        f"Python median {q * 1e3:8.4f} ms/batch  {args.batch / q:12.0f} samples/s  (blocks: "
        + ", ".join(f"{args.batch / t:.0f}" for t in py)
        + ")"
    )
    print(f"C++ / Python throughput: {q / c:.2f}x")


if __name__ == "__main__":
    main()
