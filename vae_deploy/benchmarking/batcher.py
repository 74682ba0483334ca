"""The micro-batcher under concurrent single-sample clients vs offline batching."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vae_deploy.benchmarking.config import BenchConfig
from vae_deploy.benchmarking.timing import paired_ratio, percentile


def batcher_unavailable_reason() -> str | None:
    try:
        from vae_deploy.runtime.batcher import MicroBatcher  # noqa: F401
    except ImportError as e:
        return f"vae_deploy.runtime.batcher not available ({e})"
    return None


def measure_batcher(runtime: Any, cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """N concurrent clients, each asking for one sample at a time in a loop, through the
    micro-batcher; interleaved, window by window, with offline ``runtime.sample(max_batch)``."""
    from vae_deploy.runtime.batcher import MicroBatcher

    clients, mb_size = cfg.batcher_clients, cfg.batcher_max_batch
    window = cfg.batcher_window_s
    warm = min(0.2, window * 0.25)
    offline_sps: list[float] = []
    online_sps: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    stats: Any = None
    with MicroBatcher(runtime, max_batch=mb_size, max_delay_ms=cfg.batcher_max_delay_ms) as mb:
        for _ in range(3):  # warm the batcher's path and the batch-64 kernels
            mb.sample(1)
        for _ in range(cfg.batcher_rounds):
            # offline batch-64 window
            runtime.sample(mb_size)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < window:
                runtime.sample(mb_size)
                n += mb_size
            offline_sps.append(n / (time.perf_counter() - t0))
            # online window: clients loop on one-sample requests
            stop = threading.Event()
            done: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
            barrier = threading.Barrier(clients + 1)

            def client(i: int, stop: threading.Event = stop, done: list = done,
                       barrier: threading.Barrier = barrier) -> None:
                rec = done[i]
                barrier.wait()
                try:
                    while not stop.is_set():
                        s = time.perf_counter()
                        mb.sample(1)
                        e = time.perf_counter()
                        rec.append((e, e - s))
                except Exception as e:  # pragma: no cover - reported, not raised from a thread
                    errors.append(f"{type(e).__name__}: {e}")

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
            for t in threads:
                t.start()
            barrier.wait()
            start = time.perf_counter()
            time.sleep(warm + window)
            end = time.perf_counter()
            stop.set()
            for t in threads:
                t.join(timeout=30)
            lo = start + warm
            got = [(e, d) for rec in done for (e, d) in rec if lo <= e <= end]
            online_sps.append(len(got) / (end - lo))
            latencies.extend(d for _, d in got)
        stats = getattr(mb, "stats", None)
        if callable(stats):
            stats = stats()
    ratio = paired_ratio(online_sps, offline_sps)
    ratio_best = max(online_sps) / max(offline_sps) if online_sps and max(offline_sps) > 0 else None
    res: dict[str, Any] = {
        "clients": clients,
        "max_batch": mb_size,
        "max_delay_ms": cfg.batcher_max_delay_ms,
        "window_s": window,
        "rounds": cfg.batcher_rounds,
        "samples_per_s": float(np.median(online_sps)),
        "offline_samples_per_s": float(np.median(offline_sps)),
        "round_samples_per_s": online_sps,
        "round_offline_samples_per_s": offline_sps,
        "ratio": ratio,
        "ratio_best": ratio_best,
        "latency_ms": {
            "p50": percentile(latencies, 50) * 1e3, "p95": percentile(latencies, 95) * 1e3,
            "p99": percentile(latencies, 99) * 1e3,
        },
        "requests": len(latencies),
    }
    if errors:
        res["errors"] = sorted(set(errors))[:5]
    if stats is not None:
        try:
            res["batcher_stats"] = json.loads(json.dumps(stats, default=str))
        except (TypeError, ValueError):
            res["batcher_stats"] = str(stats)
    return res
