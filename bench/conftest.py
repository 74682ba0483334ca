"""Models and backends for the pytest-benchmark suite, discovered at collection time.

Environment variables (all optional):

- ``VAE_BENCH_EXPORT``: comma-separated export folders (default: ``export/`` when it holds a
  manifest);
- ``VAE_BENCH_REFERENCE``: ``0`` to leave out the seeded reference architectures;
- ``VAE_BENCH_BATCH_SIZES``: e.g. ``1,64`` (default ``1,8,64,512``);
- ``VAE_BENCH_BACKENDS``: comma-separated names or patterns, e.g. ``eager,ort-cpu*``.

Every backend of every model is parametrized, so a backend that cannot run here (no GPU,
say) shows up as a skip with its reason rather than vanishing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vae_deploy import benchmarking as vb

ROOT = Path(__file__).resolve().parent.parent


def _env_list(name: str) -> list[str] | None:
    v = os.environ.get(name)
    return [s.strip() for s in v.split(",") if s.strip()] if v else None


BATCH_SIZES = tuple(int(b) for b in (_env_list("VAE_BENCH_BATCH_SIZES") or vb.DEFAULT_BATCH_SIZES))
BACKENDS = _env_list("VAE_BENCH_BACKENDS")
CFG = vb.BenchConfig(batch_sizes=BATCH_SIZES, backends=tuple(BACKENDS) if BACKENDS else None)

_models: dict[str, vb.BenchModel] | None = None
_backends: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}


def models() -> dict[str, vb.BenchModel]:
    """Every model of the suite (exports first), prepared once per session."""
    global _models
    if _models is None:
        _models = {}
        exports = _env_list("VAE_BENCH_EXPORT")
        if exports is None:
            exports = [str(ROOT / "export")] if (ROOT / "export" / "manifest.json").is_file() else []
        for d in exports:
            m = vb.prepare_export(d)
            _models[m.name] = m
        if os.environ.get("VAE_BENCH_REFERENCE", "1") != "0":
            for name in vb.REFERENCE_MODELS:
                _models[name] = vb.prepare_reference(name, vb.default_cache_dir())
    return _models


def backend(model: str, name: str) -> Any:
    """The opened backend, or a pytest skip with the reason it cannot run here."""
    if model not in _backends:
        _backends[model] = vb.build_backends(models()[model], CFG)
    opened, skipped = _backends[model]
    if name in skipped:
        pytest.skip(f"{name}: {skipped[name]}")
    return opened[name]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases, ids = [], []
        for mname, m in models().items():
            for b in vb.candidate_backends(m):
                if not vb.selected(b, CFG.backends):
                    continue
                for bs in BATCH_SIZES:
                    cases.append((mname, b, bs))
                    ids.append(f"{mname}-{b}-bs{bs}")
        metafunc.parametrize("case", cases, ids=ids)
    if "batcher_model" in metafunc.fixturenames:
        names = list(models())
        metafunc.parametrize("batcher_model", names, ids=names)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for opened, _ in _backends.values():
        for b in opened.values():
            b.close()
