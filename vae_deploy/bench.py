"""The measuring harness behind ``make bench``, ``vae-deploy bench`` and ``bench/``.

Discipline (this machine is shared and noisy, so comparisons are made *within* one run):

- every backend of a (model, op, batch size) group is warmed up, then the group is timed in
  ``rounds``; each round times every backend once, one after the other, in an order that
  rotates from round to round (round-robin interleaving), so a noisy neighbour or a clock
  change hits all backends alike. One untimed call re-warms a backend after a switch.
- each round of one backend is ``k`` back-to-back calls (``k`` chosen so a round lasts about
  ``round_s``); every call is timed on its own for the latency percentiles; the round's
  throughput (samples/s) is one observation of the cell. The garbage collector is off while
  timing.
- a cell reports the median round throughput, p50/p95/p99/mean/min latency over all its calls,
  and ``disturbed`` when its rounds spread widely (IQR/median of round throughputs or p95/p50
  of call latencies above thresholds): read such cells with care.
- ratios between backends (speed-up vs eager, the Runtime's overhead over a bare
  ``InferenceSession.run``, the micro-batcher vs offline batching) are *paired*: the median,
  over rounds, of the ratio measured within each round.
- achieved GFLOP/s counts the graph's multiply-accumulates (Gemm/MatMul/Conv/ConvTranspose,
  2 FLOPs each) and is compared with the fp32 matrix-multiply ceiling measured in the same run
  (best of several large ``torch.mm`` and ``numpy`` products at the same thread count, at the
  start and at the end of the run).
- the machine is recorded: cores, CPU model, thread settings, library versions, relevant
  environment variables, load average at start and end.

"Sample" means host noise ``z ~ N(0, I)`` (numpy, float32) followed by the decoder, for every
backend, the bare ``InferenceSession`` included, so wrapper overhead is comparable. "Encode"
runs the encoder on a fixed batch of uniform [0, 1) inputs.

Reference architectures with seeded random weights make results comparable across machines;
they are exported once with the project's own ``export()`` into a cache folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import gc
import hashlib
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError

SCHEMA = {"name": "vae-deploy-bench", "version": 1}
OPS = ("sample", "encode")
DEFAULT_BATCH_SIZES = (1, 8, 64, 512)
QUICK_BATCH_SIZES = (1, 8)
EAGER = "eager"
ORT = "ort-cpu"
BARE = "ort-cpu-bare"
BASE_BACKENDS = (EAGER, "torchscript", ORT, BARE, "ort-cuda", "ort-tensorrt")

# Reference architectures: random (seeded) weights, so any machine can rebuild them. Names are
# stable: they appear in report.json, pytest ids and the targets.
REFERENCE_MODELS: dict[str, dict[str, Any]] = {
    # decoder 16 -> 256 -> 512 -> 784 (the MLP decoder mirrors the encoder widths 784 -> 512 -> 256)
    "ref-mlp28": {
        "config": {"family": "mlp", "input_shape": [1, 28, 28], "latent_dim": 16, "hidden": [512, 256]},
        "description": "MLP 28x28x1, latent 16; decoder 16->256->512->784 (ReLU), sigmoid",
    },
    # decoder 16 -> Linear 3136 (64x7x7) -> ConvT 64->32 (14x14) -> ConvT 32->1 (28x28), 4x4 kernels stride 2
    "ref-conv28": {
        "config": {"family": "conv", "input_shape": [1, 28, 28], "latent_dim": 16, "hidden": [32, 64]},
        "description": "conv 28x28x1, latent 16; decoder 16->Linear 64x7x7->ConvT 32@14x14->ConvT 1@28x28",
    },
    # decoder 128 -> Linear 16384 (64x16x16) -> ConvT 64->32 (32x32) -> ConvT 32->3 (64x64)
    "ref-conv64": {
        "config": {"family": "conv", "input_shape": [3, 64, 64], "latent_dim": 128, "hidden": [32, 64]},
        "description": "conv 64x64x3, latent 128; decoder 128->Linear 64x16x16->ConvT 32@32x32->ConvT 3@64x64",
    },
}
REFERENCE_SEED = 0

# The targets, all measured in one run. (kind, model, op, batch size, threshold, label)
TARGETS: tuple[dict[str, Any], ...] = (
    {"metric": "speedup_vs_eager", "model": "ref-mlp28", "op": "sample", "batch_size": 1, "backend": ORT,
     "target": 3.0, "label": "MLP decoder sampling, Runtime vs eager, batch 1"},
    {"metric": "speedup_vs_eager", "model": "ref-mlp28", "op": "sample", "batch_size": 512, "backend": ORT,
     "target": 1.5, "label": "MLP decoder sampling, Runtime vs eager, batch 512"},
    {"metric": "speedup_vs_eager", "model": "ref-conv28", "op": "sample", "batch_size": 1, "backend": ORT,
     "target": 4.5, "label": "28x28 conv decoder sampling, Runtime vs eager, batch 1"},
    {"metric": "speedup_vs_eager", "model": "ref-conv28", "op": "sample", "batch_size": 512, "backend": ORT,
     "target": 2.0, "label": "28x28 conv decoder sampling, Runtime vs eager, batch 512"},
    {"metric": "ceiling_fraction", "model": "ref-mlp28", "op": "sample", "batch_size": 512, "backend": ORT,
     "target": 0.85, "label": "MLP decoder batch 512 (Runtime), fraction of the matmul ceiling"},
    {"metric": "overhead_vs_bare", "model": "ref-mlp28", "op": "sample", "batch_size": 1, "backend": ORT,
     "target": 0.05, "label": "Runtime overhead over bare InferenceSession.run, MLP sampling, batch 1",
     "lower_is_better": True},
    {"metric": "batcher_ratio", "model": "ref-mlp28", "op": "sample", "batch_size": 64, "backend": ORT,
     "target": 0.70, "label": "micro-batcher, 64 concurrent single-sample callers vs offline batch 64"},
)


@dataclass
class BenchConfig:
    """What to measure and how hard. ``quick`` gives a seconds-long smoke run."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    backends: tuple[str, ...] | None = None  # names or fnmatch patterns; None: every available one
    ops: tuple[str, ...] = OPS
    reference_models: bool = True
    rounds: int = 7
    round_s: float = 0.04  # target duration of one backend's round
    switch_warm_s: float = 0.003  # untimed calls after switching to a backend (cheap calls only)
    warmup_s: float = 0.1  # per backend and group, after one cold call
    max_group_s: float = 12.0  # fewer rounds (never under min_rounds) for very slow groups
    min_rounds: int = 3
    max_calls_per_round: int = 2000
    threads: int | None = None  # torch and onnxruntime intra-op threads; None: library defaults
    spread_threshold: float = 0.10  # IQR / median of round throughputs
    tail_threshold: float = 2.0  # p95 / p50 of call latencies
    contention_threshold: float = 0.25  # share of the machine's CPU time other processes used
    ceiling_size: int = 2048
    ceiling_repeats: int = 5
    batcher: bool = True
    batcher_clients: int = 64
    batcher_max_batch: int = 64
    batcher_max_delay_ms: float = 2.0
    batcher_window_s: float = 1.0
    batcher_rounds: int = 3
    batcher_models: tuple[str, ...] | None = None  # None: every model
    parity_check: bool = True
    quick: bool = False
    cache_dir: str | None = None  # reference exports; None: $XDG_CACHE_HOME/vae-deploy/bench-models

    @classmethod
    def make(cls, quick: bool = False, **overrides: Any) -> BenchConfig:
        """Defaults for a full or quick run, then explicit overrides (None means default)."""
        base: dict[str, Any] = {}
        if quick:
            base = dict(batch_sizes=QUICK_BATCH_SIZES, reference_models=False, rounds=3, round_s=0.004, switch_warm_s=0.0005,
                        warmup_s=0.005, max_group_s=2.0, min_rounds=2, ceiling_size=512, ceiling_repeats=3,
                        batcher_window_s=0.25, batcher_rounds=1, quick=True)
        base.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**base)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        self.batch_sizes = tuple(sorted({int(b) for b in self.batch_sizes}))
        bad = [o for o in self.ops if o not in OPS]
        if bad or not self.ops:
            raise ConfigError(f"unknown op(s) {bad or list(self.ops)}; expected some of {list(OPS)}")
        if self.rounds < 1 or self.min_rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------
MAC_OPS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Conv", "ConvInteger",
           "QLinearConv", "ConvTranspose")


def onnx_flops(path: str | Path, item_shape: Sequence[int] | None = None) -> float | None:
    """FLOPs per example of an ONNX graph: 2 x the MACs of Gemm/MatMul/Conv/ConvTranspose
    (and their integer/quantised forms). Shapes come from ONNX shape inference with the batch
    axis set to 1 and other dynamic input axes taken from ``item_shape`` (the example shape the
    harness feeds); where inference cannot tell (data-dependent reshapes, e.g. attention), from
    one onnxruntime run at batch 1. None when neither gives the shapes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    feeds_shape: dict[str, list[int]] = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if not d.HasField("dim_value"):
                if axis == 0:
                    d.dim_value = 1
                elif item_shape is not None and axis - 1 < len(item_shape) and item_shape[axis - 1] > 0:
                    d.dim_value = int(item_shape[axis - 1])
        feeds_shape[inp.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = _count_macs(model, shapes)
    if macs is None and all(all(d > 0 for d in s) for s in feeds_shape.values()):
        shapes.update(_shapes_by_running(model, feeds_shape))
        macs = _count_macs(model, shapes)
    return None if macs is None else 2.0 * macs


def _count_macs(model: Any, shapes: dict[str, list[int]]) -> int | None:
    import onnx

    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(d > 0 for d in s) else None

    macs = 0
    for node in model.graph.node:
        op = node.op_type
        if op not in MAC_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
            a_name = node.input[0]
            b_name = node.input[3] if op == "QLinearMatMul" else node.input[1]
            a, b, out = known(a_name), known(b_name), known(node.output[0])
            if a is None or b is None or out is None:
                return None
            if op == "Gemm":
                k = a[0] if attrs.get("transA", 0) else a[-1]
            else:
                k = a[-1]
            macs += math.prod(out) * k
        elif op in ("Conv", "ConvInteger", "QLinearConv"):
            w_name = node.input[3] if op == "QLinearConv" else node.input[1]
            w, out = known(w_name), known(node.output[0])
            if w is None or out is None:
                return None
            macs += math.prod(out) * math.prod(w[1:])  # per output: Cin/groups * prod(kernel)
        else:  # ConvTranspose
            x, w = known(node.input[0]), known(node.input[1])
            if x is None or w is None:
                return None
            macs += math.prod(x) * math.prod(w[1:])  # per input element: Cout/groups * prod(kernel)
    return macs


def _shapes_by_running(model: Any, feeds_shape: dict[str, list[int]]) -> dict[str, list[int]]:
    """Concrete shapes of the tensors around the MAC ops, from one unoptimised onnxruntime run
    on zeros (the graph is copied with those tensors added as outputs)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.initializer} | set(feeds_shape)
    wanted = []
    for node in m.graph.node:
        if node.op_type in MAC_OPS:
            for name in [*node.input[:4], node.output[0]]:
                if name and name not in have:
                    have.add(name)
                    wanted.append(name)
    for name in wanted:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        types = {i.name: i.type for i in sess.get_inputs()}
        feeds = {n: np.zeros(s, dtype=np.float16 if "float16" in types.get(n, "") else np.float32)
                 for n, s in feeds_shape.items()}
        names = [o.name for o in sess.get_outputs()]
        return {n: list(v.shape) for n, v in zip(names, sess.run(names, feeds))}
    except Exception:
        return {}


def torch_flops(module: Any, example: Any) -> float:
    """FLOPs per example of a torch module, analytically from its Linear/Conv layers (a
    cross-check of :func:`onnx_flops`)."""
    import torch
    from torch import nn

    total = [0]

    def hook(mod: Any, inputs: Any, output: Any) -> None:
        if isinstance(mod, nn.Linear):
            total[0] += output.numel() * mod.in_features
        elif isinstance(mod, nn.ConvTranspose2d):
            total[0] += inputs[0].numel() * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Conv2d):
            total[0] += output.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            module(example[:1])
    finally:
        for h in handles:
            h.remove()
    return 2.0 * total[0]


# ---------------------------------------------------------------------------------------------
# Machine and ceiling
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(cfg: BenchConfig) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from vae_deploy import __version__
    from vae_deploy.providers import provider_works

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
                "numpy": np.__version__, "vae_deploy": __version__}
    try:
        import onnx

        versions["onnx"] = onnx.__version__
    except ImportError:  # pragma: no cover
        pass
    env_keys = ("OMP", "MKL", "OPENBLAS", "KMP", "GOMP", "ORT", "CUDA_VISIBLE_DEVICES")
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel_backend": _torch_parallel_backend(torch),
        "ort_intra_op_threads": cfg.threads if cfg.threads else "onnxruntime default (one per physical core)",
        "ort_inter_op_threads": 1,
        "ort_providers_available": ort.get_available_providers(),
        "ort_providers_working": [p for p in ("cpu", "cuda") if provider_works(p)]
        + (["tensorrt"] if provider_works("cuda") and provider_works("tensorrt") else []),
        "versions": versions,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(env_keys)},
    }


def _torch_parallel_backend(torch: Any) -> str:
    try:
        for line in torch.__config__.parallel_info().splitlines():
            if "parallel backend" in line:
                return line.split(":", 1)[1].strip()
    except Exception:  # pragma: no cover
        pass
    return "unknown"


def measure_matmul_ceiling(size: int = 2048, repeats: int = 5, numpy_too: bool = True) -> dict[str, Any]:
    """Best fp32 GFLOP/s of a square ``size`` matmul: torch.mm (at torch's thread count) and,
    with ``numpy_too``, numpy's ``@`` (its BLAS's own thread count, which torch's setting does
    not reach), best of ``repeats`` each after one warm-up."""
    import torch

    flops = 2.0 * size**3
    out: dict[str, Any] = {"size": size, "repeats": repeats}
    gen = torch.Generator().manual_seed(0)
    a = torch.rand((size, size), generator=gen)
    b = torch.rand((size, size), generator=gen)
    an, bn = a.numpy(), b.numpy()
    libs = [("torch.mm", lambda: torch.mm(a, b))]
    if numpy_too:
        libs.append(("numpy.matmul", lambda: an @ bn))
    for name, fn in libs:
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = flops / best / 1e9
    out["gflops"] = max(out[name] for name, _ in libs)
    return out


# ---------------------------------------------------------------------------------------------
# Models and backends
# ---------------------------------------------------------------------------------------------
@dataclass
class BenchModel:
    name: str
    folder: Path
    description: str
    kind: str  # "export" | "reference"
    manifest: dict[str, Any]
    eager: Any = None  # (encoder module, decoder module) for the eager baseline, or None
    eager_note: str = ""
    flops: dict[str, float | None] = field(default_factory=dict)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vae-deploy" / "bench-models"


def reference_model(name: str) -> Any:
    """The seeded reference VAE ``name`` (see ``REFERENCE_MODELS``)."""
    import torch

    from vae_deploy.model import VAE, VAEConfig

    if name not in REFERENCE_MODELS:
        raise ConfigError(f"unknown reference model {name!r}; expected one of {sorted(REFERENCE_MODELS)}")
    torch.manual_seed(REFERENCE_SEED)
    return VAE(VAEConfig.from_dict(dict(REFERENCE_MODELS[name]["config"]))).eval()


def _reference_folder(name: str, cache_dir: Path) -> Path:
    import onnxruntime as ort
    import torch

    from vae_deploy import __version__

    key = json.dumps([REFERENCE_MODELS[name]["config"], REFERENCE_SEED, torch.__version__, ort.__version__,
                      __version__], sort_keys=True)
    return cache_dir / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare_reference(name: str, cache_dir: Path, log: Callable[[str], None] | None = None) -> BenchModel:
    """Export the reference model once into the cache (atomic; reused when present)."""
    from vae_deploy.adapters import from_vae
    from vae_deploy.exporters import export
    from vae_deploy.exporters.manifest import load_manifest

    model = reference_model(name)
    folder = _reference_folder(name, cache_dir)
    manifest = None
    if (folder / "manifest.json").is_file():
        try:
            manifest = load_manifest(folder, verify=True)
        except Exception:
            manifest = None
    if manifest is None:
        if log:
            log(f"exporting reference model {name} into {folder}")
        export(model, folder, verify=False)
        manifest = load_manifest(folder, verify=True)
    ex = from_vae(model)
    return BenchModel(name=name, folder=folder, description=REFERENCE_MODELS[name]["description"],
                      kind="reference", manifest=manifest, eager=(ex.encoder, ex.decoder),
                      eager_note="the same seeded random weights as the export")


def prepare_export(folder: str | Path, name: str | None = None) -> BenchModel:
    """An existing export folder. The eager baseline is rebuilt from the source checkpoint when
    it is still there (and its sha256 matches), else from the manifest's config with random
    weights (same architecture, same cost), else it is skipped."""
    from vae_deploy.exporters.manifest import load_manifest

    folder = Path(folder)
    manifest = load_manifest(folder, verify=True)
    m = manifest["model"]
    name = name or folder.resolve().name
    dims = "x".join(str(d) if d > 0 else "?" for d in m["input_shape"])
    latent = "x".join(str(d) if d > 0 else "?" for d in m["latent_shape"])
    desc = f"{m.get('family', '?')} {dims}, latent {latent}"
    eager, note = None, ""
    src = manifest.get("source") or {}
    try:
        from vae_deploy.adapters import from_checkpoint, from_vae
        from vae_deploy.checkpoint import load_checkpoint

        path = src.get("path")
        candidates = [Path(path)] if path else []
        if path and not Path(path).is_absolute():
            candidates.append(folder.parent / path)
        ckpt_path = next((p for p in candidates if p.is_file()), None)
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path)
            if src.get("sha256") and ckpt.sha256 != src["sha256"]:
                raise ValueError("checkpoint changed since export")
            ex = from_checkpoint(ckpt)
            eager, note = (ex.encoder, ex.decoder), f"checkpoint {ckpt_path}"
        elif m.get("config") and m.get("family") in ("mlp", "conv") and "adapter" not in m["config"]:
            import torch

            from vae_deploy.model import VAE, VAEConfig

            torch.manual_seed(0)
            ex = from_vae(VAE(VAEConfig.from_dict(dict(m["config"]))))
            eager = (ex.encoder, ex.decoder)
            note = "checkpoint not found: same architecture with random weights (same cost)"
        elif m.get("config"):
            note = (f"no eager baseline: a {m.get('family')} model's source module is not part of the export "
                    "(speed-ups are left out)")
        else:
            note = "no checkpoint and no config in the manifest: no eager baseline"
    except Exception as e:
        note = f"eager baseline unavailable: {type(e).__name__}: {e}"
        eager = None
    return BenchModel(name=name, folder=folder, description=desc, kind="export", manifest=manifest,
                      eager=eager, eager_note=note)


class BareSession:
    """onnxruntime with nothing around it: what ``Runtime`` is compared with. Uses the
    Runtime's own sessions, so the graphs and session options are identical."""

    def __init__(self, runtime: Any, name: str = BARE) -> None:
        self.name = name
        self.enc = runtime.encoder_session
        self.dec = runtime.decoder_session
        self.z_name = self.dec.get_inputs()[0].name
        self.x_name = self.enc.get_inputs()[0].name
        self.latent_shape = tuple(concrete_latent_shape(runtime))
        self.rng = np.random.default_rng()

    def sample(self, n: int) -> np.ndarray:
        z = self.rng.standard_normal((n, *self.latent_shape), dtype=np.float32)
        return self.dec.run(None, {self.z_name: z})[0]

    def encode(self, x: np.ndarray) -> list[np.ndarray]:
        return self.enc.run(None, {self.x_name: x})

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.dec.run(None, {self.z_name: z})[0]

    def close(self) -> None:
        pass


def concrete_latent_shape(backend: Any) -> tuple[int, ...]:
    """The latent shape sampling draws (a dynamic latent takes the export's example shape)."""
    if hasattr(backend, "sample_latent_shape"):
        return tuple(backend.sample_latent_shape())
    return tuple(backend.latent_shape)


def example_shapes(manifest: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input, latent) per-example shapes the harness feeds: the export's recorded example
    shapes where axes are dynamic (16 when none is recorded)."""
    m = manifest["model"]
    x = tuple(m.get("example_input_shape") or m["input_shape"])
    z = tuple(m.get("example_latent_shape") or m["latent_shape"])
    return tuple(d if d > 0 else 16 for d in x), tuple(d if d > 0 else 16 for d in z)


def precision_variants(manifest: dict[str, Any]) -> list[str]:
    """Every non-fp32 decoder precision listed in the manifest, in file order."""
    seen: list[str] = []
    for e in manifest.get("files", {}).values():
        p = e.get("precision", "fp32")
        if e.get("format") == "onnx" and e.get("role") == "decoder" and p != "fp32" and p not in seen:
            seen.append(p)
    return seen


def encoder_precisions(manifest: dict[str, Any]) -> set[str]:
    return {e.get("precision", "fp32") for e in manifest.get("files", {}).values()
            if e.get("format") == "onnx" and e.get("role") == "encoder"}


def candidate_backends(model: BenchModel) -> list[str]:
    names = list(BASE_BACKENDS)
    names[names.index(BARE) + 1:names.index(BARE) + 1] = [f"{ORT}-{p}" for p in precision_variants(model.manifest)]
    return names


def selected(name: str, patterns: Sequence[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build_backends(model: BenchModel, cfg: BenchConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Open every selected backend that can run here. Returns (backends, skipped reasons)."""
    from vae_deploy import providers
    from vae_deploy.backends import TorchBackend
    from vae_deploy.exporters.manifest import spec_from_manifest
    from vae_deploy.runtime import Runtime

    spec = spec_from_manifest(model.manifest)
    max_batch = max(1024, *cfg.batch_sizes, cfg.batcher_max_batch)
    files = model.manifest.get("files", {})
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in candidate_backends(model):
        if not selected(name, cfg.backends):
            continue
        try:
            if name == EAGER:
                if model.eager is None:
                    skipped[name] = model.eager_note or "no eager model"
                    continue
                out[name] = TorchBackend(*model.eager, spec, name=EAGER, threads=cfg.threads, max_batch=max_batch)
            elif name == "torchscript":
                if not {"encoder.ts", "decoder.ts"} <= set(files):
                    skipped[name] = "the export has no TorchScript files"
                    continue
                out[name] = TorchBackend.from_torchscript(model.folder, threads=cfg.threads, max_batch=max_batch)
            elif name == ORT:
                out[name] = Runtime.load(model.folder, provider="cpu", threads=cfg.threads, max_batch=max_batch)
            elif name == BARE:
                if ORT in out:
                    out[name] = BareSession(out[ORT])
                else:
                    rt = Runtime.load(model.folder, provider="cpu", threads=cfg.threads, max_batch=max_batch)
                    out[name] = BareSession(rt)
            elif name in ("ort-cuda", "ort-tensorrt"):
                prov = name.split("-", 1)[1]
                if prov == "tensorrt" and not providers.provider_works("cuda"):
                    # TensorRT runs on a CUDA device; probing it without one only prints errors.
                    skipped[name] = "needs a working CUDA device (CUDAExecutionProvider cannot run here)"
                    continue
                if not providers.provider_works(prov):
                    skipped[name] = (f"{providers.PROVIDERS[prov]} cannot run here (available: "
                                     f"{', '.join(_available_providers())}; no GPU or missing libraries)")
                    continue
                out[name] = Runtime.load(model.folder, provider=prov, max_batch=max_batch)
            else:  # ort-cpu-<precision>
                precision = name[len(ORT) + 1:]
                out[name] = Runtime.load(model.folder, provider="cpu", precision=precision, threads=cfg.threads,
                                         max_batch=max_batch)
        except Exception as e:
            skipped[name] = f"could not open: {type(e).__name__}: {e}"
    return out, skipped


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def op_supported(model: BenchModel, backend_name: str, op: str) -> str | None:
    """None when the backend runs ``op`` of this model; otherwise why the cell is skipped."""
    if op == "encode" and backend_name.startswith(f"{ORT}-") and backend_name != BARE:
        precision = backend_name[len(ORT) + 1:]
        if precision not in encoder_precisions(model.manifest):
            return f"no encoder at precision {precision} (the Runtime uses the fp32 encoder: same as {ORT})"
    return None


def make_call(backend: Any, op: str, batch_size: int, x: np.ndarray | None) -> Callable[[], Any]:
    if op == "sample":
        sample = backend.sample
        return lambda: sample(batch_size)
    encode = backend.encode
    return lambda: encode(x)


def parity_check(model: BenchModel, backends: dict[str, Any], n: int = 8) -> dict[str, float]:
    """Max |difference| of each backend's decode and encode against the first backend (eager when
    present), on a fixed input: a sanity check that every timed backend computes the same model."""
    rng = np.random.default_rng(123)
    shape, lat = example_shapes(model.manifest)
    x = rng.random((n, *shape), dtype=np.float32)
    z = rng.standard_normal((n, *lat), dtype=np.float32)
    ref_name = EAGER if EAGER in backends else next(iter(backends), None)
    if ref_name is None:
        return {}
    ref = backends[ref_name]
    ref_dec, (ref_mu, _) = ref.decode(z), ref.encode(x)
    out = {}
    for name, b in backends.items():
        if name == ref_name:
            continue
        try:
            err = float(np.max(np.abs(np.asarray(b.decode(z)) - ref_dec)))
            mu = b.encode(x)[0]
            out[name] = max(err, float(np.max(np.abs(np.asarray(mu) - ref_mu))))
        except Exception:
            out[name] = float("nan")
    return out


def input_batch(model: BenchModel, batch_size: int, seed: int = 0) -> np.ndarray:
    shape = example_shapes(model.manifest)[0]
    return np.random.default_rng(seed).random((batch_size, *shape), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Where the Runtime's per-call overhead goes
# ---------------------------------------------------------------------------------------------
class _StubSession:
    """Stands in for an InferenceSession: returns preallocated outputs at once, so timing a
    Runtime around it measures only the Python wrapper."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, names: Any, feeds: Any) -> list[np.ndarray]:
        return self.outputs


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


def profile_runtime_overhead(runtime: Any, calls: int = 2000, rounds: int = 15) -> dict[str, Any]:
    """Cost of each step of ``Runtime.sample(1)`` and ``Runtime.encode(x[1])`` around the
    session, measured with stub sessions (so onnxruntime's own time and its noise drop out),
    against the bare equivalent (noise + ``session.run``). Microseconds per call."""
    import copy

    from vae_deploy import backends as _backends

    if hasattr(_backends, "_all_finite"):  # the check _prepare uses, whichever it is
        finite, finite_name = _backends._all_finite, "backends._all_finite"
    else:
        finite, finite_name = (lambda a: np.isfinite(a).all()), "np.isfinite(x).all()"
    lat = concrete_latent_shape(runtime)
    shape = tuple(getattr(runtime.spec, "concrete_input_shape", runtime.input_shape))
    shape = tuple(d if d > 0 else 16 for d in shape)
    z = np.zeros((1, *lat), np.float32)
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    stub = copy.copy(runtime)
    stub.decoder_session = _StubSession([np.zeros((1, *shape), np.float32)])
    stub.encoder_session = _StubSession([z, z])
    dec, enc = stub.decoder_session, stub.encoder_session
    rng = np.random.default_rng()
    zn, xn, dec_out = runtime._z_name, runtime._x_name, runtime._dec_out
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t = {
            "sample": _per_call_us(lambda: stub.sample(1), calls, rounds),
            "sample_bare": _per_call_us(lambda: dec.run(None, {zn: rng.standard_normal((1, *lat), dtype=np.float32)})[0],
                                        calls, rounds),
            "noise": _per_call_us(lambda: stub.noise((1, *lat)), calls, rounds),
            "generator": _per_call_us(lambda: rng.standard_normal((1, *lat), dtype=np.float32), calls, rounds),
            "decode_dispatch": _per_call_us(lambda: stub._decode(z), calls, rounds),
            "run_named": _per_call_us(lambda: dec.run(dec_out, {zn: z}), calls, rounds),
            "encode": _per_call_us(lambda: stub.encode(x), calls, rounds),
            "encode_bare": _per_call_us(lambda: enc.run(None, {xn: x}), calls, rounds),
            "prepare": _per_call_us(lambda: stub._prepare(x, stub.input_shape, "x"), calls, rounds),
            "finite": _per_call_us(lambda: finite(x), calls, rounds),
        }
    finally:
        if gc_was:
            gc.enable()
    sample_steps = {
        "Backend.noise: n checks, lock, Generator.standard_normal": t["noise"],
        "  of which Generator.standard_normal itself (the bare path pays it too)": t["generator"],
        "the rest of Backend.sample: dispatch, Runtime._decode, session.run(stub)": max(0.0, t["sample"] - t["noise"]),
        "  of which Runtime._decode + session.run(stub)": t["decode_dispatch"],
        "  of which session.run(stub) itself (the bare path pays it too)": t["run_named"],
    }
    encode_steps = {
        "Backend._prepare fast path: type/dtype/shape/contiguity checks + finiteness": t["prepare"],
        f"  of which the finiteness check ({finite_name})": t["finite"],
        "the rest of Backend.encode: dispatch, Runtime._encode, session.run(stub)": max(0.0, t["encode"] - t["prepare"]),
    }
    return {
        "method": f"stub sessions; best of {rounds} rounds x {calls} calls; microseconds per call",
        "sample": {"runtime_us": t["sample"], "bare_us": t["sample_bare"], "overhead_us": t["sample"] - t["sample_bare"],
                   "steps_us": sample_steps},
        "encode": {"runtime_us": t["encode"], "bare_us": t["encode_bare"], "overhead_us": t["encode"] - t["encode_bare"],
                   "steps_us": encode_steps},
    }


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


# ---------------------------------------------------------------------------------------------
# Micro-batcher
# ---------------------------------------------------------------------------------------------
def batcher_unavailable_reason() -> str | None:
    try:
        from vae_deploy.batcher import MicroBatcher  # noqa: F401
    except ImportError as e:
        return f"vae_deploy.batcher not available ({e})"
    return None


def measure_batcher(runtime: Any, cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """N concurrent clients, each asking for one sample at a time in a loop, through the
    micro-batcher; interleaved, window by window, with offline ``runtime.sample(max_batch)``."""
    from vae_deploy.batcher import MicroBatcher

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


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run_benchmark(export_dirs: Sequence[str | Path] = (), cfg: BenchConfig | None = None, *,
                  names: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every model (the given export folders, then the reference models) and return
    the report dictionary (see ``bench_report.write_report`` for the files)."""
    import torch

    cfg = cfg or BenchConfig()
    cfg.validate()
    say = log or (lambda s: None)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    machine = machine_info(cfg)
    say(f"machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, torch threads "
        f"{machine['torch_threads']}, load {machine['load_average_start']}")
    run_monitor = CpuMonitor().start()
    ceiling = [measure_matmul_ceiling(cfg.ceiling_size, cfg.ceiling_repeats, numpy_too=cfg.threads is None)]
    say(f"matmul ceiling: {ceiling[0]['gflops']:.1f} GFLOP/s")

    models: list[BenchModel] = []
    for i, d in enumerate(export_dirs):
        models.append(prepare_export(d, names[i] if names and i < len(names) else None))
    if cfg.reference_models:
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        for ref in REFERENCE_MODELS:
            models.append(prepare_reference(ref, cache, log=say))
    if not models:
        raise ConfigError("nothing to measure: give an export folder or enable the reference models")
    taken = set()
    for m in models:  # unique names
        base, i = m.name, 2
        while m.name in taken:
            m.name, i = f"{base}-{i}", i + 1
        taken.add(m.name)

    report: dict[str, Any] = {"schema": dict(SCHEMA), "config": cfg.to_dict(), "machine": machine,
                              "models": [], "cells": [], "batcher": [], "skipped": []}
    no_batcher = batcher_unavailable_reason() if cfg.batcher else "disabled (--no-batcher)"
    for model in models:
        x_shape, z_shape = example_shapes(model.manifest)
        model.flops["decoder"] = onnx_flops(model.folder / "decoder.onnx", z_shape)
        model.flops["encoder"] = onnx_flops(model.folder / "encoder.onnx", x_shape)
        backends, skipped = build_backends(model, cfg)
        say(f"[{model.name}] {model.description}: backends {', '.join(backends)}"
            + (f"; skipped {', '.join(skipped)}" if skipped else ""))
        parity = parity_check(model, backends) if cfg.parity_check and backends else {}
        report["models"].append({
            "name": model.name, "kind": model.kind, "description": model.description,
            "folder": str(model.folder), "family": model.manifest["model"].get("family"),
            "input_shape": model.manifest["model"]["input_shape"],
            "latent_shape": model.manifest["model"]["latent_shape"],
            "config": model.manifest["model"].get("config") or None,
            "flops_per_sample": dict(model.flops), "backends": list(backends), "skipped_backends": skipped,
            "eager_baseline": model.eager_note, "parity_max_abs_diff": parity,
            "parity_reference": EAGER if EAGER in backends else next(iter(backends), None),
            "precisions": ["fp32", *precision_variants(model.manifest)],
        })
        for name, why in skipped.items():
            report["skipped"].append({"model": model.name, "backend": name, "reason": why})
        for op in cfg.ops:
            for bs in cfg.batch_sizes:
                x = input_batch(model, bs) if op == "encode" else None
                calls = {}
                for name, b in backends.items():
                    why = op_supported(model, name, op)
                    if why:
                        report["skipped"].append({"model": model.name, "backend": name, "op": op,
                                                  "batch_size": bs, "reason": why})
                        continue
                    calls[name] = make_call(b, op, bs, x)
                res = time_group(calls, bs, cfg, log=say)
                eager_rounds = res.get(EAGER, {}).get("round_samples_per_s")
                bare_rounds = res.get(BARE, {}).get("round_samples_per_s")
                flops = model.flops.get("decoder" if op == "sample" else "encoder")
                line = []
                for name, st in res.items():
                    cell = {"model": model.name, "op": op, "backend": name, "batch_size": bs, **st}
                    if "error" not in st:
                        cell["speedup_vs_eager"] = (paired_ratio(st["round_samples_per_s"], eager_rounds)
                                                    if eager_rounds else None)
                        # Best round vs best round: what each backend does when the machine lets it
                        # (noise only ever slows a round down), the contention-robust estimate.
                        cell["speedup_vs_eager_best"] = (st["samples_per_s_best"] / res[EAGER]["samples_per_s_best"]
                                                         if eager_rounds else None)
                        # The wrapper adds a fixed cost per call, so its overhead is read on the
                        # median call (robust to stalls); the paired-throughput figure is kept too.
                        cell["overhead_vs_bare"] = None
                        cell["overhead_vs_bare_paired"] = None
                        cell["overhead_vs_bare_min"] = None
                        if name == ORT and bare_rounds:
                            bare_p50 = res[BARE]["latency_ms"]["p50"]
                            cell["overhead_vs_bare"] = st["latency_ms"]["p50"] / bare_p50 - 1.0
                            cell["overhead_vs_bare_min"] = st["latency_ms"]["min"] / res[BARE]["latency_ms"]["min"] - 1.0
                            r = paired_ratio(bare_rounds, st["round_samples_per_s"])
                            cell["overhead_vs_bare_paired"] = None if r is None else r - 1.0
                        cell["gflops"] = flops * st["samples_per_s"] / 1e9 if flops else None
                        cell["gflops_best"] = flops * st["samples_per_s_best"] / 1e9 if flops else None
                        line.append(f"{name} {st['samples_per_s']:.4g}/s" + ("!" if st["disturbed"] else ""))
                    report["cells"].append(cell)
                say(f"  {model.name} {op} bs {bs}: " + ", ".join(line))
        if ORT in backends:
            prof = profile_runtime_overhead(backends[ORT], calls=200 if cfg.quick else 2000,
                                            rounds=3 if cfg.quick else 15)
            for op in ("sample", "encode"):
                if op not in cfg.ops:
                    continue
                if BARE in backends:
                    x1 = input_batch(model, 1) if op == "encode" else None
                    ab = measure_ab(make_call(backends[BARE], op, 1, x1), make_call(backends[ORT], op, 1, x1),
                                    seconds=0.1 if cfg.quick else 1.0)
                    prof[op]["ab"] = ab
                    p50 = ab["bare_p50_us"]
                    prof[op]["bare_p50_us"] = p50
                    prof[op]["overhead_fraction_of_bare_p50"] = prof[op]["overhead_us"] / p50 if p50 else None
            report["models"][-1]["runtime_overhead_profile"] = prof
        if no_batcher is None and ORT in backends and (cfg.batcher_models is None or model.name in cfg.batcher_models):
            say(f"  {model.name} micro-batcher: {cfg.batcher_clients} clients ...")
            try:
                res = measure_batcher(backends[ORT], cfg, log=say)
                report["batcher"].append({"model": model.name, "backend": ORT, **res})
                say(f"  {model.name} micro-batcher: {res['samples_per_s']:.4g}/s vs offline batch "
                    f"{cfg.batcher_max_batch} {res['offline_samples_per_s']:.4g}/s (ratio {res['ratio']:.2f})")
            except Exception as e:
                report["batcher"].append({"model": model.name, "backend": ORT, "error": f"{type(e).__name__}: {e}"})
        for b in backends.values():
            b.close()
        gc.collect()
        ceiling.append(measure_matmul_ceiling(cfg.ceiling_size, cfg.ceiling_repeats, numpy_too=cfg.threads is None))
    if no_batcher is not None:
        report["skipped"].append({"backend": "micro-batcher", "reason": no_batcher})

    ceiling.append(measure_matmul_ceiling(cfg.ceiling_size, cfg.ceiling_repeats, numpy_too=cfg.threads is None))
    best = max(c["gflops"] for c in ceiling)
    report["matmul_ceiling"] = {"gflops": best, "measurements": ceiling,
                                "method": f"best of {cfg.ceiling_repeats} fp32 {cfg.ceiling_size}^3 torch.mm"
                                          + (" and numpy matmul" if cfg.threads is None else
                                             f" at {cfg.threads} thread(s)")
                                          + ", at the start, after each model and at the end of the run"}
    for cell in report["cells"]:
        if "error" not in cell:
            cell["ceiling_fraction"] = cell["gflops"] / best if cell.get("gflops") else None
            cell["ceiling_fraction_best"] = cell["gflops_best"] / best if cell.get("gflops_best") else None
    report["targets"] = evaluate_targets(report)
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["machine"]["other_processes_cpu_share"] = run_monitor.stop()
    report["duration_s"] = time.perf_counter() - t_start
    return report


def find_cell(report: dict[str, Any], model: str, op: str, backend: str, batch_size: int) -> dict[str, Any] | None:
    for c in report["cells"]:
        if (c["model"], c["op"], c["backend"], c["batch_size"]) == (model, op, backend, batch_size):
            return c
    return None


BEST_OF = {"speedup_vs_eager": "speedup_vs_eager_best", "ceiling_fraction": "ceiling_fraction_best",
           "overhead_vs_bare": "overhead_vs_bare_min", "batcher_ratio": "ratio_best"}


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target on the medians (the verdict) and on the best rounds (contention-robust)."""
    out = []
    for t in TARGETS:
        row = {k: t[k] for k in ("label", "metric", "model", "op", "batch_size", "backend", "target")}
        lower = bool(t.get("lower_is_better"))
        row["comparison"] = "<=" if lower else ">="
        measured, best, note = None, None, ""
        if t["metric"] == "batcher_ratio":
            rec = next((b for b in report["batcher"] if b["model"] == t["model"]), None)
            if rec is None:
                skip = next((s for s in report["skipped"] if s.get("backend") == "micro-batcher"), None)
                note = skip["reason"] if skip else f"model {t['model']} not measured"
            elif "error" in rec:
                note = rec["error"]
            else:
                measured, best = rec["ratio"], rec.get("ratio_best")
        elif t["metric"] == "overhead_vs_bare":
            mod = next((m for m in report["models"] if m["name"] == t["model"]), None)
            ab = ((mod or {}).get("runtime_overhead_profile") or {}).get(t["op"], {}).get("ab")
            if ab is None:
                note = f"{t['model']} {t['op']}: Runtime vs bare not measured"
            else:
                measured, best = ab["overhead"], ab["overhead_min"]
                note = (f"alternating single calls, {ab['pairs']} pairs: median difference "
                        f"{ab['median_diff_us']:+.2f} us on a {ab['bare_p50_us']:.1f} us bare call")
        else:
            cell = find_cell(report, t["model"], t["op"], t["backend"], t["batch_size"])
            if cell is None:
                note = f"{t['model']} {t['op']} batch {t['batch_size']} ({t['backend']}) not measured"
            elif "error" in cell:
                note = cell["error"]
            else:
                measured = cell.get(t["metric"])
                best = cell.get(BEST_OF[t["metric"]])
                if measured is None:
                    note = f"{t['metric']} unavailable (baseline backend missing)"
                if cell.get("disturbed"):
                    note = "disturbed cell: " + "; ".join(cell["disturbed_reasons"])
        row["measured"] = measured
        row["met"] = None if measured is None else (measured <= t["target"] if lower else measured >= t["target"])
        row["measured_best"] = best
        row["met_best"] = None if best is None else (best <= t["target"] if lower else best >= t["target"])
        row["note"] = note
        out.append(row)
    return out


def print_summary(report: dict[str, Any], file: Any = None) -> None:
    file = file or sys.stdout
    for t in report["targets"]:
        m = t["measured"]
        val = "n/a" if m is None else (f"{m:.1%}" if t["metric"] in ("ceiling_fraction", "overhead_vs_bare",
                                                                      "batcher_ratio") else f"{m:.2f}x")
        tgt = (f"{t['target']:.0%}" if t["metric"] in ("ceiling_fraction", "overhead_vs_bare", "batcher_ratio")
               else f"{t['target']}x")
        verdict = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        b = t.get("measured_best")
        best = "" if b is None else (f"; best round {b:.1%}" if t["metric"] in ("ceiling_fraction", "overhead_vs_bare",
                                                                               "batcher_ratio") else f"; best round {b:.2f}x")
        print(f"{verdict:>12}  {t['label']}: {val} ({t['comparison']} {tgt}{best})", file=file)
