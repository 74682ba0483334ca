"""Targets stated for one CPU class are evaluated only on that class."""

from __future__ import annotations

import pytest

from vae_deploy.benchmarking.targets import TARGETS, evaluate_targets


@pytest.mark.parametrize("klass, sd512_target", [("amx", 6.0), ("avx512-bf16", 2.5), ("avx2", 1.3), ("avx512", 1.3)])
def test_each_class_gets_its_own_sd_target(klass, sd512_target):
    report = {"machine": {"cpu_class": klass}, "cells": [], "models": [], "batcher": [], "skipped": []}
    rows = evaluate_targets(report)
    sd512 = [r for r in rows if r["model"] == "ref-sd-vae-512" and r["metric"] == "auto_speedup_vs_eager"]
    assert [r["target"] for r in sd512] == [sd512_target]
    assert all(r["met"] is None for r in rows)  # nothing measured: nothing claimed
    unclassed = [t for t in TARGETS if not t.get("cpu_classes")]
    assert len(rows) == len(unclassed) + sum(klass in t.get("cpu_classes", ()) for t in TARGETS)


def test_auto_picks_the_fastest_gated_row_against_the_class_target():
    cells = [{"model": "ref-sd-vae-512", "op": "sample", "batch_size": 1, "backend": b, "samples_per_s": s,
              "samples_per_s_best": s, "speedup_vs_eager": s / 0.1, "speedup_vs_eager_best": s / 0.1}
             for b, s in (("eager", 0.1), ("ort-cpu", 0.15), ("openvino-cpu-bf16", 0.7))]
    models = [{"name": "ref-sd-vae-512", "family": "diffusers.AutoencoderKL", "parity_output_max_abs": 2.0,
               "parity_output_range": 4.0, "parity_max_abs_diff": {"ort-cpu": 1e-5, "openvino-cpu-bf16": 0.05}}]
    report = {"machine": {"cpu_class": "amx"}, "cells": cells, "models": models, "batcher": [], "skipped": []}
    (row,) = [r for r in evaluate_targets(report) if r["model"] == "ref-sd-vae-512"
              and r["metric"] == "auto_speedup_vs_eager"]
    assert row["measured"] == pytest.approx(7.0) and row["met"] is True and "openvino-cpu-bf16" in row["note"]
