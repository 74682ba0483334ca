"""Progress lines for long steps (export stages, parity cases): what runs, how long it took,
and the process's peak memory so far, on stderr.

Exporting a Stable Diffusion VAE on a CPU takes a minute or more; silence for that long
reads as a hang. Each stage prints one line when it starts and one when it ends; the
numbers also end up in the manifest (``export.seconds``, ``export.peak_rss_bytes``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size so far (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


class Progress:
    """Stage timer and printer; ``enabled=False`` keeps the timing and prints nothing."""

    def __init__(self, label: str = "export", enabled: bool | None = None, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.stages: dict[str, float] = {}

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[{self.label} {self.seconds:6.1f}s] {message}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage; print its start and its end with the peak memory so far."""
        self.say(f"{name} ...")
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.stages[name] = self.stages.get(name, 0.0) + took
        # CPU time too: on a shared machine wall time says more about the neighbours than about us
        self.say(f"{name}: {took:.1f} s, {cpu:.1f} s CPU (peak RSS {format_bytes(peak_rss_bytes())})")

    def summary(self) -> dict[str, object]:
        return {"seconds": round(self.seconds, 2), "cpu_seconds": round(time.process_time() - self.cpu_start, 2),
                "peak_rss_bytes": peak_rss_bytes(),
                "stages": {k: round(v, 2) for k, v in self.stages.items()}}


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
