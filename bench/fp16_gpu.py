"""fp16 variants on a CUDA GPU: parity against eager (float32, CPU) and decode throughput.

    python bench/fp16_gpu.py [--batch 4096] [--rounds 30]

Exits 0 with a message where onnxruntime has no working CUDA provider (e.g. on CPU machines).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {
    "conv28": dict(family="conv", input_shape=(1, 28, 28), latent_dim=16, hidden=(32, 64)),
    "mlp784": dict(family="mlp", input_shape=(1, 28, 28), latent_dim=16, hidden=(512, 256)),
    "conv64x3": dict(family="conv", input_shape=(3, 64, 64), latent_dim=128, hidden=(32, 64)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    from vae_deploy.adapters import from_vae
    from vae_deploy.checks.parity import compare_backends
    from vae_deploy.exporters import export
    from vae_deploy.runtime.backends import TorchBackend
    from vae_deploy.runtime.core import Runtime
    from vae_deploy.runtime.providers import provider_works
    from vae_deploy.training.model import VAE, VAEConfig

    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    if not provider_works("cuda"):
        print("no working CUDA provider in this onnxruntime: nothing to measure")
        return 0
    for name, cfg in MODELS.items():
        torch.manual_seed(0)
        model = VAE(VAEConfig(**cfg)).eval()
        exp = from_vae(model)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            export(exp, folder, formats=("onnx",), precisions=("fp32", "fp16"), batch_sizes=(1, 37))
            eager = TorchBackend(exp.encoder, exp.decoder, exp.spec, name="eager")
            x, _ = np.random.default_rng(0).random((256, *cfg["input_shape"]), dtype=np.float32), None
            z = np.random.default_rng(1).standard_normal((args.batch, cfg["latent_dim"]), dtype=np.float32)
            rts = {p: Runtime.load(folder, provider="cuda", precision=p, max_batch=args.batch) for p in ("fp32", "fp16")}
            for p, rt in rts.items():
                rep = compare_backends(eager, rt, x, batch_sizes=(1, 37, 512), precision=p)
                s = rep["summary"]
                print(f"{name:<9} {p:<5} on {rt.provider}: parity {'PASS' if s['passed'] else 'FAIL'} "
                      f"max abs {s['max_abs_error']:.2e} mean abs {s['mean_abs_error']:.2e} "
                      f"nonfinite {sum(o['nan_out'] + o['inf_out'] for c in rep['cases'] for o in c.get('outputs', {}).values())}")
            for rt in rts.values():
                rt.decode(z)
            times: dict[str, list[float]] = {p: [] for p in rts}
            for _ in range(args.rounds):
                for p, rt in rts.items():
                    t = time.perf_counter()
                    rt.decode(z)
                    times[p].append(time.perf_counter() - t)
            base = statistics.median(times["fp32"])
            for p, v in times.items():
                m = statistics.median(v)
                print(f"{name:<9} {p:<5} decode batch {args.batch}: {m * 1e3:8.2f} ms  {args.batch / m:10.0f} samples/s "
                      f"x{base / m:.2f} vs fp32 (host<->device copies included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
