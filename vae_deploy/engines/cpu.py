"""What this CPU can do natively: the flags that decide which precision is fast here.

bf16 runs natively only with AVX512-BF16 (dot products, conversions) or AMX-BF16 (tiles); elsewhere
libraries emulate it and it is slower than fp32, so ``bf16`` is refused unless forced. The same
flags key the tuning file, because a winner measured on one CPU says nothing about another.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# The flags that change which engine x precision is fastest (and the tuning key).
KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: no flags known, so nothing is assumed native
        pass
    return model or platform.processor() or platform.machine(), frozenset(flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> dict[str, bool]:
    """The key flags, each True/False (all False where /proc/cpuinfo is unreadable)."""
    have = _cpuinfo()[1]
    return {f: f in have for f in KEY_FLAGS}


def native_bf16(flags: dict[str, bool] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(flags.get(f) for f in BF16_FLAGS)


def bf16_refusal(flags: dict[str, bool] | None = None) -> str | None:
    """None when bf16 is native here, else the reason it is refused (and how to force it)."""
    flags = cpu_flags() if flags is None else flags
    if native_bf16(flags):
        return None
    have = [f for f, v in flags.items() if v]
    return (f"precision 'bf16' needs a CPU with native bf16 ({' or '.join(BF16_FLAGS)}); this CPU "
            f"({cpu_model()}) has {', '.join(have) or 'none of the flags ' + ', '.join(KEY_FLAGS)}, so bf16 would be "
            "emulated and slower than fp32. Use precision 'fp32', or force it (force_bf16=True, --force-bf16)")
