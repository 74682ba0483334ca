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


# ``ONEDNN_MAX_CPU_ISA`` caps what oneDNN (torch's convolutions, OpenVINO) may use, to emulate an
# older CPU class; the flags above the cap are then reported absent, so bf16 is refused as it
# would be there (OpenVINO would otherwise fail to compile a bf16 graph: no primitive). Note that
# onnxruntime's MLAS dispatches on CPUID alone and ignores the cap.
ISA_CAPS: dict[str, frozenset[str]] = {
    "SSE41": frozenset(KEY_FLAGS),
    "AVX": frozenset(KEY_FLAGS),
    "AVX2": frozenset(f for f in KEY_FLAGS if f != "avx2"),
    "AVX2_VNNI": frozenset(f for f in KEY_FLAGS if f != "avx2"),
    "AVX2_VNNI_2": frozenset(f for f in KEY_FLAGS if f != "avx2"),
    "AVX512_CORE": frozenset({"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}),
    "AVX512_CORE_VNNI": frozenset({"avx512_bf16", "amx_bf16", "amx_int8"}),
    "AVX512_CORE_BF16": frozenset({"amx_bf16", "amx_int8"}),
    "AVX10_1_512": frozenset({"amx_bf16", "amx_int8"}),
}


def isa_cap() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` in force (upper case), or None."""
    import os

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return cap or None


def cpu_flags() -> dict[str, bool]:
    """The key flags, each True/False (all False where /proc/cpuinfo is unreadable), less those
    above an ``ONEDNN_MAX_CPU_ISA`` cap."""
    have = _cpuinfo()[1]
    hidden = ISA_CAPS.get(isa_cap() or "", frozenset())
    return {f: f in have and f not in hidden for f in KEY_FLAGS}


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


# --- the CPU class and its theoretical peak (bench ceilings) ----------------------------------
# FLOPs per cycle per core at the widest native unit, assuming two FMA ports (server cores;
# some client SKUs have one, so the peak is an upper bound). fp32: 2 ports x lanes x 2 (FMA).
# bf16: AMX TMUL 1024/cycle; AVX512-BF16 vdpbf16ps 2 ports x 16 lanes x 2 products x 2.
# int8 ("ops"): AMX 2048/cycle; VNNI vpdpbusd 2 x 16 x 4 x 2; AVX2 vpmaddubsw+vpmaddwd ~ half.
PEAK_PER_CYCLE: dict[str, tuple[tuple[str, int], ...]] = {
    "fp32": (("avx512f", 64), ("avx2", 32)),
    "bf16": (("amx_bf16", 1024), ("avx512_bf16", 128)),
    "int8": (("amx_int8", 2048), ("avx512_vnni", 256), ("avx2", 64)),
}


def cpu_class(flags: dict[str, bool] | None = None) -> str:
    """The class that decides which precision and engine win: amx, avx512-bf16, avx512, avx2 or
    baseline (the widest of the key flags), as every bench line states it."""
    flags = cpu_flags() if flags is None else flags
    for name, flag in (("amx", "amx_bf16"), ("avx512-bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flags.get(flag):
            return name
    return "baseline"


def _clock_ghz() -> tuple[float | None, str]:
    """The clock the peak assumes: cpufreq's maximum, else the model name's "@ x GHz", else
    /proc/cpuinfo's "cpu MHz" (a VM's nominal clock)."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    model = cpu_model()
    if "GHz" in model and "@" in model:
        try:
            return float(model.rsplit("@", 1)[1].replace("GHz", "").strip()), "model name"
        except ValueError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":", 1)[1]) / 1000, "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError):
        pass
    return None, "unknown"


def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may use (SMT siblings share
    one core's FMA units, so they add no peak)."""
    import os

    try:
        usable = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        usable = set(range(os.cpu_count() or 1))
    cores, cpu, pkg = set(), None, "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                pkg = value
            elif key == "core id" and cpu in usable:
                cores.add((pkg, value))
    except (OSError, ValueError):
        pass
    return len(cores) or len(usable) or 1


def theoretical_peak(precision: str, flags: dict[str, bool] | None = None, *, cores: int | None = None,
                     ghz: float | None = None) -> dict[str, object]:
    """GFLOP/s (int8: GOP/s) this CPU could reach at ``precision`` from its flags, cores and clock:
    ``{"gflops": float | None, "unit": flag, "per_cycle": n, "cores": c, "ghz": f, "clock_from": ...}``;
    gflops is None where the precision has no native unit here (bf16 without AVX512-BF16/AMX) or
    the clock cannot be read."""
    flags = cpu_flags() if flags is None else flags
    unit, per_cycle = next(((f, n) for f, n in PEAK_PER_CYCLE.get(precision, ()) if flags.get(f)), (None, 0))
    if precision == "fp32" and unit is None:
        unit, per_cycle = "sse", 8
    clock_from = "given"
    if ghz is None:
        ghz, clock_from = _clock_ghz()
    cores = physical_cores() if cores is None else cores
    gflops = per_cycle * cores * ghz if unit and ghz else None
    return {"precision": precision, "gflops": gflops, "unit": unit, "per_cycle": per_cycle, "cores": cores,
            "ghz": ghz, "clock_from": clock_from}
