"""The perf regression guard: a ratio drop beyond noise is flagged, noise is not, and baselines
from another CPU class or that are not reports are refused before any measuring."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vae_deploy.benchmarking.guard import compare, describe
from vae_deploy.errors import ConfigError


def _report(cpu_class: str = "amx", ort: float = 3.0, ov: float = 2.0, spread: float = 0.02) -> dict:
    cells = [{"model": "m", "op": "sample", "backend": "eager", "batch_size": 1, "speedup_vs_eager": 1.0,
              "round_spread": spread}]
    for backend, r in (("ort-cpu", ort), ("openvino-cpu", ov)):
        cells.append({"model": "m", "op": "sample", "backend": backend, "batch_size": 1, "speedup_vs_eager": r,
                      "round_spread": spread})
    return {"schema": {"name": "vae-deploy-bench", "version": 1}, "machine": {"cpu_class": cpu_class}, "cells": cells}


@pytest.mark.parametrize("ort_now, flagged", [(3.0, False), (2.7, False), (2.4, True), (1.0, True), (4.0, False)])
def test_a_drop_beyond_the_threshold_is_a_regression(ort_now, flagged):
    res = compare(_report(ort=ort_now), _report())
    assert res["compared"] == 2
    assert [r["backend"] for r in res["regressions"]] == (["ort-cpu"] if flagged else [])
    lines = describe(res)
    assert len(lines) == int(flagged)
    if flagged:
        assert "ort-cpu" in lines[0] and "baseline x3.00" in lines[0]


def test_noisy_cells_widen_the_threshold():
    # a 25% drop: a regression with quiet rounds, noise when the rounds spread by 20%
    assert compare(_report(ort=2.25), _report())["regressions"]
    assert not compare(_report(ort=2.25, spread=0.2), _report(spread=0.2))["regressions"]


def test_another_cpu_class_is_refused():
    with pytest.raises(ConfigError, match="CPU class 'avx2'"):
        compare(_report("amx"), _report("avx2"))


def test_cells_missing_now_are_listed_not_passed():
    now = _report()
    now["cells"] = [c for c in now["cells"] if c["backend"] != "openvino-cpu"]
    res = compare(now, _report())
    assert res["missing"] == ["m/sample/openvino-cpu/1"] and res["compared"] == 1


@pytest.mark.parametrize("content, expected", [
    ("not json", "is not JSON"),
    (json.dumps({"cells": []}), "not a vae-deploy bench report"),
])
def test_cli_refuses_a_bad_baseline_before_measuring(tmp_path, content, expected):
    from vae_deploy.cli import main

    path = tmp_path / "base.json"
    path.write_text(content)
    res = CliRunner().invoke(main, ["bench", "--quick", "--no-reference-models", "--out", str(tmp_path / "o"),
                                    "--baseline", str(path)])
    assert res.exit_code == 1 and "Error:" in res.output and expected in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o" / "report.json").exists()


def test_cli_missing_baseline_is_one_line(tmp_path):
    from vae_deploy.cli import main

    res = CliRunner().invoke(main, ["bench", "--quick", "--no-reference-models", "--out", str(tmp_path / "o"),
                                    "--baseline", str(tmp_path / "nope.json")])
    assert res.exit_code == 1 and res.output.startswith("Error:") and "nope.json" in res.output
