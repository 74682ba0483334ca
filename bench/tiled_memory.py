"""Peak memory of a tiled decode, ours against diffusers' ``AutoencoderKL.tiled_decode``.

Each measurement runs in a fresh subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss``
is a process-lifetime peak, so two measurements in one process would hide each other).
Used by ``bench/tiled_memory.py`` and by the slow test in ``tests/test_tiling_memory.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

_OURS = """
import json, resource, numpy as np
from vae_deploy.runtime.core import Runtime
rt = Runtime.load({export!r}, provider="cpu", threads={threads})
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
z = np.random.default_rng(0).standard_normal((1, {channels}, {size}, {size}), dtype=np.float32)
x = rt.decode(z, tile={tile})
print(json.dumps({{"loaded_kb": loaded, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "shape": list(x.shape)}}))
"""

_DIFFUSERS = """
import json, resource, numpy as np, torch
import diffusers
torch.set_num_threads({threads})
vae = diffusers.AutoencoderKL.from_pretrained({folder!r}, local_files_only=True, low_cpu_mem_usage=False).eval()
vae.enable_tiling()
vae.tile_latent_min_size = {tile}
vae.tile_sample_min_size = {tile} * {ratio}
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
z = torch.from_numpy(np.random.default_rng(0).standard_normal((1, {channels}, {size}, {size}), dtype=np.float32))
with torch.no_grad():
    x = vae.tiled_decode(z).sample
print(json.dumps({{"loaded_kb": loaded, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "shape": list(x.shape)}}))
"""


def measure(kind: str, *, size: int, tile: int, channels: int = 4, ratio: int = 8, threads: int = 2,
            export: str | Path = "", folder: str | Path = "", timeout: float = 1800) -> dict[str, float]:
    """Peak RSS (bytes) of one tiled decode of a ``[1, channels, size, size]`` latent in a new
    process: ``kind`` "ours" (``Runtime.decode(z, tile=tile)`` on ``export``) or "diffusers"
    (``tiled_decode`` of the folder's model with the same tile). Also the RSS after loading."""
    template = {"ours": _OURS, "diffusers": _DIFFUSERS}[kind]
    code = textwrap.dedent(template.format(export=str(export), folder=str(folder), size=size, tile=tile,
                                           channels=channels, ratio=ratio, threads=threads))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} tiled decode failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"loaded_bytes": out["loaded_kb"] * 1024, "peak_bytes": out["peak_kb"] * 1024, "shape": out["shape"]}


def main(argv: list[str] | None = None) -> None:
    """``python bench/tiled_memory.py EXPORT DIFFUSERS_FOLDER [--sizes 64,96,128] [--tile 64]``:
    one table row per latent size, ours against diffusers' peak RSS."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("export")
    p.add_argument("folder")
    p.add_argument("--sizes", default="64,96,128", help="latent sizes (x8 = image px for SD)")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    print(f"{'image px':>8} {'ours peak':>10} {'(loaded)':>9} {'diffusers peak':>15} {'(loaded)':>9}  ratio")
    for size in (int(s) for s in a.sizes.split(",")):
        o = measure("ours", size=size, tile=a.tile, threads=a.threads, export=a.export)
        d = measure("diffusers", size=size, tile=a.tile, threads=a.threads, folder=a.folder)
        print(f"{size * 8:>8} {o['peak_bytes'] / 2**30:>9.2f}G {o['loaded_bytes'] / 2**30:>8.2f}G "
              f"{d['peak_bytes'] / 2**30:>14.2f}G {d['loaded_bytes'] / 2**30:>8.2f}G  "
              f"{o['peak_bytes'] / d['peak_bytes']:.2f}", flush=True)


if __name__ == "__main__":
    main()
