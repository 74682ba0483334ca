"""``run_batch``: plan the shards, resume what a previous run finished, compute the rest in
process or on Ray, write each shard as it arrives, and summarise."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vae_deploy.artifacts import load_manifest, spec_from_manifest
from vae_deploy.images import resolve_output_range
from vae_deploy.runtime.core import variant_file
from vae_deploy.serving.batch.executors import (
    RAY_HINT,
    RayPool,
    RunStats,
    check_runtime_options,
    ray_available,
    run_in_process,
)
from vae_deploy.serving.batch.inputs import InputSource, open_input
from vae_deploy.serving.batch.output import BatchError, OutputFolder
from vae_deploy.serving.batch.plan import Shard, plan_shards
from vae_deploy.serving.batch.tasks import TASKS, TaskSpec, check_row_shape

# A plan past this many shards is a typo (or shard rows of 1 over a huge -n): refused before the
# plan is built, which holds one small object per shard.
MAX_SHARDS = 1 << 20

# Runtime options that change only speed, not results: left out of the job's identity so a
# resumed run may use other threads.
_SPEED_ONLY = ("threads", "max_batch")  # max_batch is batch_size, already in the job


@dataclass
class Progress:
    """Handed to the progress callback after every shard."""

    shards_done: int
    shards_total: int
    rows_done: int
    rows_total: int
    rows_per_s: float
    workers: int


@dataclass
class BatchSummary:
    task: str
    out: str
    rows: int  # rows in the finished output
    rows_computed: int  # by this run (the rest were resumed)
    shards: int
    shards_resumed: int
    seconds: float
    rows_per_s: float  # rows computed by this run / its compute time
    workers: int
    failures_retried: int
    workers_replaced: int
    worker_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_batch(
    task: str,
    export_dir: str | Path,
    out: str | Path,
    *,
    input_path: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    shard_rows: int = 4096,
    batch_size: int = 256,
    workers: int = 1,
    ray_address: str | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    fmt: str = "npy",
    runtime_options: dict[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
    shard_delay_s: float = 0.0,
    latents: str = "raw",
    latent_layout: str = "spatial",
    image_size: tuple[int, int] | None = None,
) -> BatchSummary:
    """Run one batch job into ``out`` (resuming it when ``out`` holds the same job).

    ``task`` is encode (``input_path`` -> mu, logvar), decode (latents -> x) or sample (``n``
    draws seeded by ``seed`` -> x). ``runtime_options`` go to ``Runtime.load`` unchanged. Decode
    takes a pipeline's latents as they are stored: ``latents``, ``latent_layout`` and ``image_size``
    as in ``Runtime.decode`` (:mod:`vae_deploy.runtime.latents`)."""
    if task not in TASKS:
        raise BatchError(f"unknown batch task {task!r}; expected one of {', '.join(TASKS)}")
    if workers < 1 or shard_rows < 1 or batch_size < 1:
        raise BatchError(f"workers, shard rows and batch size must be >= 1, got {workers}, {shard_rows}, {batch_size}")
    use_ray = workers > 1 or ray_address is not None
    if use_ray and not ray_available():
        raise BatchError(f"--workers {workers} runs on Ray, which is not installed: {RAY_HINT} "
                         "(or use --workers 1 to run in this process)")
    options = {k: v for k, v in (runtime_options or {}).items() if v is not None}
    check_runtime_options(options)  # before the export is read or the folder locked
    options["max_batch"] = batch_size
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir, verify=False)
    precision = options.get("precision", "fp32")
    used = [variant_file(manifest, role, precision) for role in ("encoder", "decoder")]
    if use_ray:  # each worker checks again when it loads; this catches a bad export before a cluster starts
        load_manifest(export_dir, verify=True, only=used)
    spec = spec_from_manifest(manifest)

    source: InputSource | None = None
    if task == "sample":
        if n is None or n < 1:
            raise BatchError(f"batch sample needs -n >= 1, got {n}")
        if seed < 0:
            raise BatchError(f"batch sample needs a seed >= 0 (numpy's SeedSequence), got {seed}")
        latent = tuple(spec.concrete_latent_shape)
        if any(d < 0 for d in latent):
            raise BatchError(f"the export's latent shape {list(spec.latent_shape)} is dynamic and it records no "
                             "example latent shape to sample at")
        spec_task = TaskSpec("sample", seed=seed, latent_shape=latent, delay_s=shard_delay_s)
        n_rows, input_id = n, None
    else:
        if input_path is None:
            raise BatchError(f"batch {task} needs an INPUT")
        item = tuple(spec.input_shape if task == "encode" else spec.latent_shape)
        if task == "decode" and (latents != "raw" or latent_layout != "spatial"):
            from vae_deploy.runtime.latents import check_choice, layout_item_shape

            check_choice(spec, latents, latent_layout)
            item = layout_item_shape(spec, latent_layout)
        source = open_input(input_path, item_shape=item if task == "encode" else None)
        check_row_shape(source.item_shape, item, f"input {str(input_path)!r}")
        spec_task = TaskSpec(task, item_shape=item, delay_s=shard_delay_s, latents=latents,
                             latent_layout=latent_layout, image_size=image_size)
        n_rows, input_id = source.n_rows, source.fingerprint()

    job = {
        "task": task,
        "export": {"path": str(export_dir.resolve()),
                   "files": {f: manifest["files"][f]["sha256"] for f in used}},
        "input": input_id,
        "n": n_rows,
        "seed": seed if task == "sample" else None,
        **({"latents": [latents, latent_layout, list(image_size or ())]}
           if (latents, latent_layout) != ("raw", "spatial") else {}),
        "shard_rows": shard_rows,
        "batch_size": batch_size,
        "format": fmt,
        "runtime": {k: v for k, v in sorted(options.items()) if k not in _SPEED_ONLY},
    }
    if -(-n_rows // shard_rows) > MAX_SHARDS:
        raise BatchError(f"{n_rows:,} rows in shards of {shard_rows:,} would make {-(-n_rows // shard_rows):,} shards; "
                         f"at most {MAX_SHARDS:,} are planned: raise --shard-rows to at least "
                         f"{-(-n_rows // MAX_SHARDS):,}")
    folder = OutputFolder(Path(out), job, fmt, output_range=resolve_output_range(spec)[0] if fmt == "png" else None)
    plan = plan_shards(n_rows, shard_rows)
    folder.open()
    try:
        return _run_planned(folder, plan, source, spec_task, task, out, n_rows, export_dir, options, use_ray,
                            workers, ray_address, cpus_per_worker, gpus_per_worker, progress)
    finally:
        folder.close()


def _run_planned(folder: OutputFolder, plan: list[Shard], source: InputSource | None, spec_task: TaskSpec,
                 task: str, out: str | Path, n_rows: int, export_dir: Path, options: dict[str, Any], use_ray: bool,
                 workers: int, ray_address: str | None, cpus_per_worker: float, gpus_per_worker: float,
                 progress: Callable[[Progress], None] | None) -> BatchSummary:
    """Compute the shards the folder lacks and record each; the caller holds the folder's lock."""
    todo = [s for s in plan if s.index not in folder.shards]

    t0 = time.perf_counter()
    computed = 0

    def on_result(shard: Shard, arrays: dict, who: str) -> None:
        nonlocal computed
        folder.write_shard(shard, arrays, who)
        computed += shard.rows
        if progress:
            dt = time.perf_counter() - t0
            progress(Progress(len(folder.shards), len(plan), folder_rows(), n_rows, computed / dt if dt else 0.0,
                              workers))

    def folder_rows() -> int:
        return sum(e["rows"] for e in folder.shards.values())

    def read_rows(shard: Shard):
        return None if source is None else source.read(shard.start, shard.stop)

    stats: RunStats
    if not todo:
        stats = RunStats(workers=0)
    elif use_ray:
        pool = RayPool(export_dir, options, workers=workers, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker, address=ray_address)
        try:
            pool.start()
            t0 = time.perf_counter()  # rows/s counts compute, not cluster start-up
            stats = pool.run(spec_task, todo, read_rows, on_result)
            seconds = time.perf_counter() - t0
        finally:
            pool.close()
    else:
        stats = run_in_process(export_dir, options, spec_task, todo, read_rows, on_result)
    if not use_ray or not todo:
        seconds = time.perf_counter() - t0
    summary = BatchSummary(
        task=task, out=str(out), rows=folder_rows(), rows_computed=computed, shards=len(plan),
        shards_resumed=len(folder.resumed), seconds=round(seconds, 3),
        rows_per_s=round(computed / seconds, 1) if computed and seconds > 0 else 0.0,
        workers=stats.workers, failures_retried=stats.failures_retried, workers_replaced=stats.workers_replaced,
        worker_ids=stats.worker_ids,
    )
    folder.finish(summary.to_dict())
    return summary
