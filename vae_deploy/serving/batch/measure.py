"""Throughput of batch encoding: a plain in-process ``Runtime.encode`` loop against
``run_batch`` in process and on Ray with 1 and 2 workers, on the same rows.

    python -m vae_deploy.serving.batch.measure EXPORT_DIR INPUT.npy [--workers 1,2] [--shard-rows N]

Ray rows/s count compute only (the summary's figure; cluster start-up is reported apart), so
the comparison shows the cost of sharding, shipping rows and writing shards, not of start-up.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np


def plain_loop(export_dir: Path, x: np.ndarray, batch_size: int, threads: int | None) -> float:
    """rows/s of the loop a user would write: one Runtime, batches in order, results kept."""
    from vae_deploy.runtime.core import Runtime
    from vae_deploy.serving.batch.tasks import to_model_rows

    rt = Runtime.load(export_dir, threads=threads, max_batch=batch_size)
    item = rt.input_shape
    rt.encode(to_model_rows(x[:batch_size], item))  # warm-up, as the batch workers get on load
    t0 = time.perf_counter()
    outs = [rt.encode(to_model_rows(x[i:i + batch_size], item)) for i in range(0, len(x), batch_size)]
    dt = time.perf_counter() - t0
    assert sum(len(m) for m, _ in outs) == len(x)
    return len(x) / dt


def measure(export_dir: Path, input_path: Path, *, workers: tuple[int, ...], shard_rows: int,
            batch_size: int) -> list[dict[str, Any]]:
    from vae_deploy.serving.batch import run_batch
    from vae_deploy.training.data.arrays import check_array_file

    check_array_file(input_path, in_memory=False)  # a regular .npy whose header fits the file
    x = np.load(input_path, mmap_mode="r", allow_pickle=False)
    rows: list[dict[str, Any]] = []
    for threads in (1, None):
        rows.append({"mode": f"plain loop, {threads or 'default'} thread(s)",
                     "rows_per_s": round(plain_loop(export_dir, x, batch_size, threads), 1)})
    with tempfile.TemporaryDirectory() as tmp:
        for label, w, address in [("batch in process, 1 thread", 1, None)] + [
                (f"batch on Ray, {w} worker(s) x 1 CPU", w, "local") for w in workers]:
            t0 = time.perf_counter()
            s = run_batch("encode", export_dir, Path(tmp) / label.replace(" ", "_"), input_path=input_path,
                          shard_rows=shard_rows, batch_size=batch_size, workers=w, ray_address=address,
                          runtime_options={"threads": 1})
            rows.append({"mode": label, "rows_per_s": s.rows_per_s,
                         "wall_s_with_startup": round(time.perf_counter() - t0, 2)})
    return rows


@click.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workers", default="1,2", show_default=True)
@click.option("--shard-rows", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
def main(export_dir: Path, input_path: Path, workers: str, shard_rows: int, batch_size: int) -> None:
    rows = measure(export_dir, input_path, workers=tuple(int(w) for w in workers.split(",")),
                   shard_rows=shard_rows, batch_size=batch_size)
    for r in rows:
        extra = f"  (wall incl. start-up {r['wall_s_with_startup']} s)" if "wall_s_with_startup" in r else ""
        click.echo(f"{r['mode']:<36} {r['rows_per_s']:>12,.0f} rows/s{extra}")
    click.echo(json.dumps(rows))


if __name__ == "__main__":
    main()
