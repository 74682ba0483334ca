"""Every script of the benchmark suite (``bench/``, ``cpp/bench_throughput.py``) runs as the docs
write it: ``python bench/NAME.py``, from any folder, with no ``PYTHONPATH``: the installed package
is all it needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py")
                 if p.name not in ("__init__.py", "conftest.py") and not p.name.startswith("test_"))
SCRIPTS.append(ROOT / "cpp" / "bench_throughput.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_runs_without_pythonpath(script: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage" in res.stdout.lower()


def test_docs_name_no_pythonpath():
    """The docs and the scripts' own usage lines show the plain command."""
    texts = [*ROOT.glob("docs/*.md"), ROOT / "README.md", ROOT / "bench" / "README.md", *SCRIPTS]
    offenders = [str(p.relative_to(ROOT)) for p in texts if "PYTHONPATH=." in p.read_text()]
    assert not offenders, f"PYTHONPATH=. still shown in {offenders}"
