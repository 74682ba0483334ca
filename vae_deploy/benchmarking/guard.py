"""The perf regression guard: does a backend's ratio to eager fall below an earlier run's by more
than noise?

Ratios, not times: CI machines differ and are shared, but a backend's speed-up over eager in the
same run is stable across them (both sides slow down together). A cell regresses when its paired
speed-up vs eager is below the baseline's by more than ``max(min_drop, k x noise)``, where noise is
the relative spread (IQR/median of round throughputs) of the two cells involved, from both runs.
The baseline must come from the same CPU class (a ratio measured with AMX says nothing about an
AVX2 CPU), so a class mismatch is refused rather than compared.
"""

from __future__ import annotations

from typing import Any

from vae_deploy.errors import ConfigError

MIN_DROP = 0.15  # quick runs on shared CI runners move ratios by ~10%: below this is noise
NOISE_K = 2.0

Key = tuple[str, str, str, int]


def _cells(report: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(c["model"], c["op"], c["backend"], int(c["batch_size"])): c for c in report.get("cells", [])
            if "error" not in c}


def _noise(cells: dict[Key, dict[str, Any]], key: Key) -> float:
    """Relative spread of a cell and of the eager cell it is divided by."""
    eager = cells.get((key[0], key[1], "eager", key[3]), {})
    return float(cells.get(key, {}).get("round_spread") or 0.0) + float(eager.get("round_spread") or 0.0)


def compare(report: dict[str, Any], baseline: dict[str, Any], *, min_drop: float = MIN_DROP,
            noise_k: float = NOISE_K) -> dict[str, Any]:
    """``{"regressions": [...], "compared": n, "missing": [...]}``; each regression names the cell,
    the baseline and current speed-up vs eager, the drop and the threshold it broke."""
    now_class = report.get("machine", {}).get("cpu_class")
    base_class = baseline.get("machine", {}).get("cpu_class")
    if now_class and base_class and now_class != base_class:
        raise ConfigError(f"the baseline was measured on CPU class {base_class!r}, this run on {now_class!r}: "
                          "ratios are only comparable within one class; record a baseline on this class")
    now, base = _cells(report), _cells(baseline)
    regressions, missing, compared = [], [], 0
    for key, b in base.items():
        if key[2] == "eager" or b.get("speedup_vs_eager") is None:
            continue
        c = now.get(key)
        if c is None or c.get("speedup_vs_eager") is None:
            missing.append("/".join(map(str, key)))
            continue
        compared += 1
        threshold = max(min_drop, noise_k * (_noise(now, key) + _noise(base, key)) / 2)
        drop = 1.0 - c["speedup_vs_eager"] / b["speedup_vs_eager"]
        if drop > threshold:
            regressions.append({"model": key[0], "op": key[1], "backend": key[2], "batch_size": key[3],
                                "baseline": b["speedup_vs_eager"], "now": c["speedup_vs_eager"], "drop": drop,
                                "threshold": threshold})
    return {"regressions": regressions, "compared": compared, "missing": missing, "min_drop": min_drop,
            "noise_k": noise_k}


def describe(result: dict[str, Any]) -> list[str]:
    """One line per regression (empty when none), for the console and CI logs."""
    return [f"regression: {r['model']} {r['op']} batch {r['batch_size']} {r['backend']}: x{r['now']:.2f} vs eager, "
            f"baseline x{r['baseline']:.2f} ({r['drop']:.0%} lower; noise allows {r['threshold']:.0%})"
            for r in result["regressions"]]
