"""The timing harness: warm-up, interleaved rounds, per-cell statistics, paired ratios and
the A/B alternation for small overheads (see the package docstring for the discipline)."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vae_deploy.benchmarking.config import BenchConfig


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def cell_stats(round_times: list[float], call_times: list[float], round_calls: list[int], batch_size: int,
               cfg: BenchConfig) -> dict[str, Any]:
    """Summary of one cell from its per-round totals, calls per round and per-call latencies (s)."""
    sps = [c * batch_size / t for c, t in zip(round_calls, round_times)]
    med = float(np.median(sps))
    q1, q3 = percentile(sps, 25), percentile(sps, 75)
    p50, p95, p99 = (percentile(call_times, q) for q in (50, 95, 99))
    spread = (q3 - q1) / med if med > 0 else float("inf")
    tail = p95 / p50 if p50 > 0 else float("inf")
    reasons = []
    if spread > cfg.spread_threshold:
        reasons.append(f"round IQR/median {spread:.2f} > {cfg.spread_threshold}")
    if tail > cfg.tail_threshold:
        reasons.append(f"latency p95/p50 {tail:.2f} > {cfg.tail_threshold}")
    return {
        "rounds": len(round_times),
        "calls_per_round": max(round_calls),
        "calls": len(call_times),
        "samples_per_s": med,
        "samples_per_s_best": float(max(sps)),
        "round_samples_per_s": sps,
        "latency_ms": {
            "p50": p50 * 1e3, "p95": p95 * 1e3, "p99": p99 * 1e3,
            "mean": float(np.mean(call_times)) * 1e3, "min": float(np.min(call_times)) * 1e3,
        },
        "round_spread": spread,
        "tail_ratio": tail,
        "disturbed": bool(reasons),
        "disturbed_reasons": reasons,
    }


class CpuMonitor:
    """How much of the machine *other* processes used while a block ran: the busy CPU time of
    the whole machine (``/proc/stat``, steal included) minus this process's own, over the
    elapsed time x the CPUs. None where ``/proc/stat`` is unavailable."""

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")

    def start(self) -> CpuMonitor:
        busy = self._busy()
        t = os.times()
        self._start = None if busy is None else (busy, t.user + t.system, time.perf_counter())
        return self

    def stop(self) -> float | None:
        busy = self._busy()
        if self._start is None or busy is None:
            return None
        t = os.times()
        b0, own0, w0 = self._start
        elapsed = time.perf_counter() - w0
        if elapsed <= 0:
            return None
        others = (busy - b0) - (t.user + t.system - own0)
        return min(1.0, max(0.0, others / (elapsed * (os.cpu_count() or 1))))


def paired_ratio(num_sps: Sequence[float], den_sps: Sequence[float]) -> float | None:
    """Median over rounds of num/den measured in the same round (robust to drifting noise)."""
    if not num_sps or len(num_sps) != len(den_sps):
        return None
    return float(np.median(np.asarray(num_sps) / np.asarray(den_sps)))


def round_orders(names: Sequence[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of the backends in each round: a rotation, reversed every other round, then
    shuffled in blocks, so over the rounds each backend starts, ends and follows every other
    about equally often (the previous backend's lingering threads tax whoever comes next)."""
    import random

    names = list(names)
    n = len(names)
    if n == 0:
        return [[] for _ in range(rounds)]
    base = []
    for r in range(max(rounds, 2 * n)):
        rot = names[(r // 2) % n:] + names[: (r // 2) % n]
        base.append(rot if r % 2 == 0 else rot[::-1])
    rng = random.Random(seed)
    block = base[: 2 * n]
    rng.shuffle(block)
    orders = (block * (rounds // len(block) + 1))[:rounds]
    return [list(o) for o in orders]


def time_group(calls: dict[str, Callable[[], Any]], batch_size: int, cfg: BenchConfig,
               log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Warm up, then time every callable in interleaved rounds. Returns stats per name.

    A callable that raises during warm-up is reported as ``{"error": ...}`` and left out.
    """
    per_call: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, fn in calls.items():
        try:
            t0 = time.perf_counter()
            fn()  # cold call: allocations, kernel selection, oneDNN primitive creation
            cold = time.perf_counter() - t0
            warm: list[float] = []
            start = time.perf_counter()
            while not warm or (time.perf_counter() - start < cfg.warmup_s and cold < cfg.warmup_s):
                t0 = time.perf_counter()
                fn()
                warm.append(time.perf_counter() - t0)
            per_call[name] = max(float(np.median(warm)), 1e-7)
        except Exception as e:  # a backend that cannot run this cell: report, do not abort the run
            errors[name] = f"{type(e).__name__}: {e}"
            if log:
                log(f"    {name}: failed ({errors[name]})")
    names = [n for n in calls if n in per_call]
    k = {n: int(min(cfg.max_calls_per_round, max(1, round(cfg.round_s / per_call[n])))) for n in names}
    round_cost = sum(max(cfg.round_s, per_call[n] * k[n]) + (per_call[n] if per_call[n] < 0.02 else 0.0)
                     for n in names)
    rounds = cfg.rounds
    if round_cost * rounds > cfg.max_group_s:
        rounds = max(min(cfg.min_rounds, cfg.rounds), int(cfg.max_group_s / max(round_cost, 1e-9)))
    round_times: dict[str, list[float]] = {n: [] for n in names}
    call_times: dict[str, list[float]] = {n: [] for n in names}
    round_calls: dict[str, list[int]] = {n: [] for n in names}
    perf = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    monitor = CpuMonitor().start()
    try:
        for order in round_orders(names, rounds):
            for n in order:
                fn = calls[n]
                if per_call[n] < 0.02:
                    # Re-warm after the switch: caches, and the previous backend's thread pool
                    # still spinning (OpenMP, onnxruntime) would otherwise tax this one's first calls.
                    t_end = perf() + cfg.switch_warm_s
                    fn()
                    while perf() < t_end:
                        fn()
                times = []
                limit = perf() + max(2.0 * cfg.round_s, 2.0 * per_call[n] * k[n])
                for _ in range(k[n]):  # k calls, cut short if the machine got much slower
                    t0 = perf()
                    fn()
                    t1 = perf()
                    times.append(t1 - t0)
                    if t1 > limit:
                        break
                round_times[n].append(sum(times))
                round_calls[n].append(len(times))
                call_times[n].extend(times)
    finally:
        if gc_was_enabled:
            gc.enable()
    contention = monitor.stop()
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        st = cell_stats(round_times[n], call_times[n], round_calls[n], batch_size, cfg)
        st["contention"] = contention
        if contention is not None and contention > cfg.contention_threshold:
            st["disturbed"] = True
            st["disturbed_reasons"].append(f"other processes used {contention:.0%} of the CPUs")
        out[n] = st
    for n, e in errors.items():
        out[n] = {"error": e}
    return out


def _per_call_us(fn: Callable[[], Any], calls: int, rounds: int) -> float:
    """Best-of-rounds mean time per call, in microseconds (pure-Python code: the minimum is the
    cost without interference)."""
    best = float("inf")
    perf = time.perf_counter
    for _ in range(rounds):
        t0 = perf()
        for _ in range(calls):
            fn()
        best = min(best, (perf() - t0) / calls)
    return best * 1e6


def measure_ab(bare: Callable[[], Any], wrapped: Callable[[], Any], seconds: float = 1.0,
               max_pairs: int = 5000, min_pairs: int = 50) -> dict[str, Any]:
    """The wrapper's cost on real sessions, robust to a drifting machine: alternate single calls
    (bare, wrapped), (wrapped, bare), ... so both see the same moment, and take the median of the
    per-pair differences. Times in microseconds."""
    perf = time.perf_counter
    for _ in range(50):
        bare()
        wrapped()
    a: list[float] = []
    b: list[float] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        end = perf() + seconds
        i = 0
        while i < max_pairs and (i < min_pairs or perf() < end):
            if i & 1:
                t0 = perf()
                wrapped()
                t1 = perf()
                bare()
                t2 = perf()
                b.append(t1 - t0)
                a.append(t2 - t1)
            else:
                t0 = perf()
                bare()
                t1 = perf()
                wrapped()
                t2 = perf()
                a.append(t1 - t0)
                b.append(t2 - t1)
            i += 1
    finally:
        if gc_was:
            gc.enable()
    aa, bb = np.asarray(a) * 1e6, np.asarray(b) * 1e6
    diff = float(np.median(bb - aa))
    bare_p50 = float(np.median(aa))
    return {"pairs": len(a), "bare_p50_us": bare_p50, "runtime_p50_us": float(np.median(bb)),
            "median_diff_us": diff, "overhead": diff / bare_p50 if bare_p50 > 0 else None,
            "overhead_min": float(bb.min() / aa.min() - 1.0) if aa.min() > 0 else None}
