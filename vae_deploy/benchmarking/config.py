"""What a benchmark run measures and how hard: ``BenchConfig`` and the backend names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vae_deploy.errors import ConfigError

SCHEMA = {"name": "vae-deploy-bench", "version": 1}


OPS = ("sample", "encode")


DEFAULT_BATCH_SIZES = (1, 8, 64, 512)


QUICK_BATCH_SIZES = (1, 8)


EAGER = "eager"


ORT = "ort-cpu"


BARE = "ort-cpu-bare"


BASE_BACKENDS = (EAGER, "torchscript", ORT, BARE, "ort-cuda", "ort-tensorrt")


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
    engines: tuple[str, ...] | None = None  # None: every installed engine's rows (onnxruntime, openvino)
    torch_compile: bool = True  # time torch.compile as a peer (compiling costs seconds to minutes per model)
    sd_model: bool = True  # the SD-architecture AutoencoderKL (with reference_models; needs diffusers)
    sd_rounds: int = 3  # its rounds: ~6 s per eager fp32 image on 2 cores
    sd_sizes: tuple[int, ...] = (256, 512)  # image sides of the SD rows (one dynamic export serves all)
    # Reference models timed with torch.compile (exports given are always): inductor compiles each
    # graph for 20 s to 2 min on 2 cores, so by default only the two models the targets name.
    compile_models: tuple[str, ...] | None = ("ref-mlp28", "ref-conv28")
    quick: bool = False
    cache_dir: str | None = None  # reference exports; None: $XDG_CACHE_HOME/vae-deploy/bench-models

    @classmethod
    def make(cls, quick: bool = False, **overrides: Any) -> BenchConfig:
        """Defaults for a full or quick run, then explicit overrides (None means default)."""
        base: dict[str, Any] = {}
        if quick:
            base = dict(batch_sizes=QUICK_BATCH_SIZES, reference_models=False, rounds=3, round_s=0.004, switch_warm_s=0.0005,
                        warmup_s=0.005, max_group_s=2.0, min_rounds=2, ceiling_size=512, ceiling_repeats=3,
                        batcher_window_s=0.25, batcher_rounds=1, torch_compile=False, quick=True)
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
        if any(int(s) < 64 or int(s) % 64 for s in self.sd_sizes):
            raise ConfigError(f"SD sizes must be multiples of 64 pixels (latent side multiple of 8), got {list(self.sd_sizes)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d
