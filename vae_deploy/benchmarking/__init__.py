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

Parts: ``config`` (BenchConfig, names), ``timing`` (the harness), ``flops``, ``machine``,
``models`` (exports and reference models, the SD-architecture AutoencoderKL in ``sd``),
``backends`` and ``peers`` (what is timed), ``overhead``, ``batcher``, ``run``, ``targets``,
``report`` (Markdown, JSON, plots).
"""

from __future__ import annotations

from vae_deploy.benchmarking.backends import (
    BareSession,
    _available_providers,
    build_backends,
    candidate_backends,
    concrete_latent_shape,
    make_call,
    op_supported,
    parity_check,
    selected,
)
from vae_deploy.benchmarking.batcher import batcher_unavailable_reason, measure_batcher
from vae_deploy.benchmarking.ceiling import measure_matmul_ceiling
from vae_deploy.benchmarking.config import (
    BARE,
    BASE_BACKENDS,
    DEFAULT_BATCH_SIZES,
    EAGER,
    OPS,
    ORT,
    QUICK_BATCH_SIZES,
    SCHEMA,
    BenchConfig,
)
from vae_deploy.benchmarking.machine import _torch_parallel_backend, cpu_model, machine_info
from vae_deploy.benchmarking.models import (
    REFERENCE_MODELS,
    REFERENCE_SEED,
    BenchModel,
    _reference_folder,
    default_cache_dir,
    encoder_precisions,
    example_shapes,
    input_batch,
    precision_variants,
    prepare_export,
    prepare_reference,
    reference_model,
)
from vae_deploy.benchmarking.overhead import _StubSession, profile_runtime_overhead
from vae_deploy.benchmarking.run import run_benchmark
from vae_deploy.benchmarking.targets import BEST_OF, TARGETS, evaluate_targets, find_cell, print_summary
from vae_deploy.benchmarking.timing import (
    CpuMonitor,
    _per_call_us,
    cell_stats,
    measure_ab,
    paired_ratio,
    percentile,
    round_orders,
    time_group,
)
from vae_deploy.checks.flops import (
    MAC_OPS,
    _count_macs,
    _shapes_by_running,
    onnx_flops,
    torch_flops,
)

__all__ = [
    "SCHEMA",
    "OPS",
    "DEFAULT_BATCH_SIZES",
    "QUICK_BATCH_SIZES",
    "EAGER",
    "ORT",
    "BARE",
    "BASE_BACKENDS",
    "BenchConfig",
    "percentile",
    "cell_stats",
    "CpuMonitor",
    "paired_ratio",
    "round_orders",
    "time_group",
    "_per_call_us",
    "measure_ab",
    "MAC_OPS",
    "onnx_flops",
    "_count_macs",
    "_shapes_by_running",
    "torch_flops",
    "measure_matmul_ceiling",
    "cpu_model",
    "machine_info",
    "_torch_parallel_backend",
    "REFERENCE_MODELS",
    "REFERENCE_SEED",
    "BenchModel",
    "default_cache_dir",
    "reference_model",
    "_reference_folder",
    "prepare_reference",
    "prepare_export",
    "example_shapes",
    "precision_variants",
    "encoder_precisions",
    "input_batch",
    "BareSession",
    "concrete_latent_shape",
    "candidate_backends",
    "selected",
    "build_backends",
    "_available_providers",
    "op_supported",
    "make_call",
    "parity_check",
    "_StubSession",
    "profile_runtime_overhead",
    "batcher_unavailable_reason",
    "measure_batcher",
    "run_benchmark",
    "TARGETS",
    "find_cell",
    "BEST_OF",
    "evaluate_targets",
    "print_summary",
]
