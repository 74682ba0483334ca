"""Who computes the shards: this process (``--workers 1``, no Ray needed) or a pool of Ray
actors, each holding one ``Runtime``. Both call ``tasks.compute_shard``; both hand each result
to the same ``on_result`` (the driver writes every shard), so their outputs are identical.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import VaeDeployError
from vae_deploy.serving.batch.output import BatchError
from vae_deploy.serving.batch.plan import Shard
from vae_deploy.serving.batch.tasks import TaskSpec, compute_shard

RAY_HINT = "pip install 'vae-deploy[ray]'"
ReadRows = Callable[[Shard], "np.ndarray | None"]
OnResult = Callable[[Shard, dict[str, np.ndarray], str], None]


@dataclass
class RunStats:
    """What the summary reports about execution (beyond rows and time)."""

    workers: int = 1
    failures_retried: int = 0  # shard attempts lost with a worker and run again
    workers_replaced: int = 0
    worker_ids: list[str] = field(default_factory=list)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def load_runtime(export_dir: str | Path, runtime_options: dict[str, Any]) -> Any:
    """``Runtime.load`` with the user's options passed through (engine, precision, provider,
    threads, ...); an option this Runtime does not take is a clear error, not a TypeError."""
    from vae_deploy.runtime.core import Runtime

    check_runtime_options(runtime_options)
    try:
        return Runtime.load(export_dir, **runtime_options)
    except TypeError as e:
        raise BatchError(f"the Runtime does not take these options {sorted(runtime_options)}: {e}") from None


def check_runtime_options(runtime_options: dict[str, Any]) -> None:
    """Name the options ``Runtime.load`` does not take (only those: the ones the job sets itself,
    such as max_batch, are no business of the user's), and refuse a thread count out of range."""
    import inspect

    from vae_deploy.limits import check_threads
    from vae_deploy.runtime.core import Runtime

    internal = {"self", "cls", "path", "kwargs", "encoder_path", "decoder_path", "spec"}
    known = (set(inspect.signature(Runtime.__init__).parameters)
             | set(inspect.signature(Runtime.load).parameters)) - internal
    unknown = sorted(set(runtime_options) - known)
    if unknown:
        raise BatchError(f"--runtime-option: the Runtime takes no option {', '.join(unknown)}; expected one of "
                         f"{', '.join(sorted(known - {'max_batch'}))}")
    try:
        check_threads(runtime_options.get("threads"))
    except ValueError as e:
        raise BatchError(f"--threads / --runtime-option threads: {e}") from None


def worker_id() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def run_in_process(export_dir: Path, runtime_options: dict[str, Any], task: TaskSpec, shards: list[Shard],
                   read_rows: ReadRows, on_result: OnResult) -> RunStats:
    """The plain loop: one Runtime here, shards in order."""
    rt = load_runtime(export_dir, runtime_options)
    me = worker_id()
    for shard in shards:
        on_result(shard, compute_shard(rt, task, shard, read_rows(shard)), me)
    return RunStats(workers=1, worker_ids=[me])


class BatchWorker:
    """A Ray actor's state: one Runtime, loaded once, reused for every shard it is given."""

    def __init__(self, export_dir: str, runtime_options: dict[str, Any]) -> None:
        self.id = worker_id()
        self.error = ""
        try:
            self.rt = load_runtime(export_dir, runtime_options)
        except Exception as e:  # reported by info(): one line at the driver, not a remote traceback
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, VaeDeployError) else str(e)

    def info(self) -> dict[str, Any]:
        return {"worker": self.id, "pid": os.getpid(), "error": self.error}

    def run(self, task: TaskSpec, shard: Shard, rows: np.ndarray | None) -> tuple[dict[str, np.ndarray], str]:
        return compute_shard(self.rt, task, shard, rows), self.id


class RayPool:
    """``workers`` actors on a Ray cluster (joined with ``address``, else a local one started
    here); a worker that dies is replaced and its shards are queued again."""

    def __init__(self, export_dir: Path, runtime_options: dict[str, Any], *, workers: int, cpus_per_worker: float,
                 address: str | None, gpus_per_worker: float = 0.0, max_attempts: int = 3,
                 inflight_per_worker: int = 2) -> None:
        try:
            import ray
        except ImportError:
            raise BatchError(f"--workers {workers} runs on Ray, which is not installed: {RAY_HINT}") from None
        self.ray = ray
        self.export_dir = str(Path(export_dir).resolve())
        self.options = dict(runtime_options)
        from vae_deploy.limits import max_threads

        self.options.setdefault("threads", min(max_threads(), max(1, int(cpus_per_worker))))
        self.workers = workers
        self.cpus = cpus_per_worker
        self.gpus = gpus_per_worker
        self.address = address
        self.max_attempts = max_attempts
        self.inflight_per_worker = inflight_per_worker
        self.owns_ray = False
        self.stats = RunStats(workers=workers)

    # --- cluster and actors ----------------------------------------------------------------
    def start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
            if self.address:
                kw["address"] = self.address
            else:  # "local": a new cluster even when one started by `ray start` runs here
                kw["address"] = "local"
                kw["num_cpus"] = max(1, int(self.workers * self.cpus + 0.999))
            try:
                ray.init(**kw)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray cluster"
                raise BatchError(f"could not start or join {where}: {e}") from None
            self.owns_ray = True
        resources = ray.cluster_resources()
        for key, per, flag in (("CPU", self.cpus, "--cpus-per-worker"), ("GPU", self.gpus, "--gpus-per-worker")):
            have = float(resources.get(key, 0))
            if have < self.workers * per:  # fail now rather than wait forever for actors that cannot fit
                raise BatchError(f"the Ray cluster has {have:g} {key}s; --workers {self.workers} x {flag} "
                                 f"{per:g} needs {self.workers * per:g}")
        self._actor_cls = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                     max_task_retries=0)(BatchWorker)
        self.actors = [self._new_actor() for _ in range(self.workers)]
        self.generation = [0] * self.workers
        infos = ray.get([a.info.remote() for a in self.actors])
        for info in infos:
            if info["error"]:
                raise BatchError(f"a Ray worker could not load the export: {info['error']}")
        self.stats.worker_ids = [i["worker"] for i in infos]

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self.export_dir, self.options)

    def _replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor()
        self.generation[slot] += 1
        self.stats.workers_replaced += 1
        info = self.ray.get(self.actors[slot].info.remote())
        if info["error"]:
            raise BatchError(f"a replacement Ray worker could not load the export: {info['error']}")
        self.stats.worker_ids.append(info["worker"])

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        if self.owns_ray:
            self.ray.shutdown()

    # --- scheduling --------------------------------------------------------------------------
    def run(self, task: TaskSpec, shards: list[Shard], read_rows: ReadRows, on_result: OnResult) -> RunStats:
        ray = self.ray
        from ray.exceptions import RayError, RayTaskError

        pending = deque(shards)
        attempts = {s.index: 0 for s in shards}
        inflight: dict[Any, tuple[int, int, Shard]] = {}  # ref -> (slot, generation, shard)
        load = [0] * self.workers
        task_ref = ray.put(task)
        while pending or inflight:
            for slot in range(self.workers):
                while pending and load[slot] < self.inflight_per_worker:
                    shard = pending.popleft()
                    attempts[shard.index] += 1
                    ref = self.actors[slot].run.remote(task_ref, shard, read_rows(shard))
                    inflight[ref] = (slot, self.generation[slot], shard)
                    load[slot] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                slot, gen, shard = inflight.pop(ref)
                if gen == self.generation[slot]:
                    load[slot] -= 1
                try:
                    arrays, who = ray.get(ref)
                except RayTaskError as e:  # the computation itself failed: retrying cannot help
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, VaeDeployError):
                        raise type(cause)(str(cause)) from None
                    raise BatchError(f"shard {shard.index} failed on a worker: {cause or e}") from None
                except RayError as e:  # the worker (or its node) is gone: run the shard elsewhere
                    if attempts[shard.index] >= self.max_attempts:
                        raise BatchError(f"shard {shard.index} was lost with its worker {attempts[shard.index]} "
                                         f"times; giving up (last: {type(e).__name__})") from None
                    self.stats.failures_retried += 1
                    pending.appendleft(shard)
                    if gen == self.generation[slot]:
                        self._replace(slot)
                        load[slot] = 0
                    continue
                on_result(shard, arrays, who)
        return self.stats
