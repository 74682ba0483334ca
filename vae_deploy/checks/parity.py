"""Parity between backends, reported the way Polygraphy does it.

For each graph, input kind and batch size, every output is compared element-wise: max, mean,
median and p99 of the absolute and relative errors, the worst element's index and values,
NaN/Inf counts on both sides, and the smallest tolerances that would have passed. An element
passes when ``|cand - ref| <= atol + rtol * |ref|`` (numpy's ``allclose`` rule) and NaN/Inf
appear in the same places on both sides.

The export-time check (``vae-deploy export``) and ``vae-deploy verify`` both call
:func:`compare_backends`, so there is one definition of "agrees".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vae_deploy.runtime.backends import Backend
from vae_deploy.tolerance import (  # noqa: F401 (re-exported: one definition of "agrees")
    DEFAULT_TOLERANCES,
    REL_FLOOR,
    Tolerance,
    compare_arrays,
    tolerance_for,
)
from vae_deploy.tolerance import json_float as _json_float

SCHEMA = "vae-deploy-parity/1"

def _e(v: Any, spec: str = ".2e") -> str:
    """Format a number that may be None (not measurable, e.g. NaN outputs) for a table."""
    return "n/a" if v is None else format(v, spec)


def _batch(data: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of ``data``, cycling when it is shorter."""
    idx = np.arange(n) % len(data)
    return np.ascontiguousarray(data[idx], dtype=np.float32)


@dataclass
class Case:
    graph: str  # "encoder" | "decoder" | "reconstruct"
    input: str  # "real", "normal", "zeros", "ones", "+4sigma", "-4sigma"
    batch_size: int
    data: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.graph}/{self.input}/bs={self.batch_size}"


def input_range(spec: Any) -> tuple[float, float]:
    """The encoder's input range, for stand-in inputs: the export's declared ``output_range``
    (what it decodes to is what it encodes from), else (-1, 1) for diffusers' VAEs, else (0, 1)
    (Bernoulli data, and this project's image models)."""
    declared = tuple(getattr(spec, "output_range", ()) or ())
    if len(declared) == 2 and declared[0] < declared[1]:
        return float(declared[0]), float(declared[1])
    if str(getattr(spec, "family", "")).startswith("diffusers."):
        return -1.0, 1.0
    return 0.0, 1.0


def uniform_inputs(rng: np.random.Generator, shape: Sequence[int], spec: Any) -> np.ndarray:
    """Seeded uniform float32 inputs over :func:`input_range`."""
    low, high = input_range(spec)
    x = rng.random(tuple(shape), dtype=np.float32)
    return x if (low, high) == (0.0, 1.0) else (x * np.float32(high - low) + np.float32(low)).astype(np.float32)


def make_cases(
    x_data: np.ndarray, latent_shape: Sequence[int], batch_sizes: Iterable[int], *, seed: int = 0,
    edge_cases: bool = True, data_label: str = "real", edge_batch: int = 4, recon_n: int = 64,
    user_latent: Sequence[int] = (),
) -> list[Case]:
    """The standard input set: real data for the encoder, seeded N(0, I) for the decoder, and edges.

    ``data_label`` names the encoder's input in case names: "real" only when ``x_data`` is
    real data ("random" for stand-ins), so a report never claims evidence it does not have.
    ``latent_shape`` must be concrete: with a dynamic latent (spatial VAEs) use the latent
    shape that ``x_data``'s examples encode to (:func:`concrete_latent_shape`).
    """
    if any(d < 0 for d in latent_shape):
        raise ValueError(f"make_cases needs a concrete latent shape, got {list(latent_shape)} (-1 is dynamic)")
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    for bs in batch_sizes:
        cases.append(Case("encoder", data_label, bs, _batch(x_data, bs)))
        cases.append(Case("decoder", "normal", bs, rng.standard_normal((bs, *latent_shape), dtype=np.float32)))
    if edge_cases:
        shape = x_data.shape[1:]
        e = edge_batch
        cases.append(Case("encoder", "zeros", e, np.zeros((e, *shape), np.float32)))
        cases.append(Case("encoder", "ones", e, np.ones((e, *shape), np.float32)))
        cases.append(Case("decoder", "+4sigma", e, np.full((e, *latent_shape), 4.0, np.float32)))
        cases.append(Case("decoder", "-4sigma", e, np.full((e, *latent_shape), -4.0, np.float32)))
        alt = np.where(np.arange(math.prod(latent_shape)) % 2 == 0, 4.0, -4.0).astype(np.float32)
        cases.append(Case("decoder", "alternating4sigma", e, np.tile(alt.reshape(latent_shape), (e,) + (1,) * len(latent_shape))))
        n = min(recon_n, len(x_data))
        cases.append(Case("reconstruct", data_label, n, _batch(x_data, n)))
    if user_latent:  # one latent at the size users decode (the example is small to keep tracing cheap)
        cases.append(Case("decoder", "user-size", 1, rng.standard_normal((1, *user_latent), dtype=np.float32)))
    return cases


def concrete_latent_shape(reference: Backend, x_data: np.ndarray) -> tuple[int, ...]:
    """The per-example latent shape to test the decoder at: the spec's when it is fixed, else
    the shape ``x_data``'s examples encode to (so decoder cases match the size under test)."""
    shape = tuple(reference.latent_shape)
    if all(d > 0 for d in shape):
        return shape
    mu, _ = reference.encode(x_data[:1])
    return tuple(int(d) for d in mu.shape[1:])


def _run(backend: Backend, case: Case) -> dict[str, np.ndarray]:
    if case.graph == "encoder":
        mu, logvar = backend.encode(case.data)
        return {"mu": mu, "logvar": logvar}
    if case.graph == "decoder":
        return {"x_hat": backend.decode(case.data)}
    return {"x_hat": backend.reconstruct(case.data)}


def negative_elbo(backend: Backend, x: np.ndarray, likelihood: str, *, seed: int = 1234, obs_std: float = 0.1,
                  samples: int = 1) -> float:
    """Test-set negative ELBO (nats/example) computed through a backend's two graphs, with
    host-side reparameterisation and fixed noise: the end-to-end quantity users care about.

    numpy only (the same formulas as ``model.recon_nll``/``kl_normal`` on probabilities), so
    verify runs in the lean install without torch."""
    rng = np.random.default_rng(seed)
    x64 = np.asarray(x, np.float64)
    total = 0.0
    for _ in range(samples):
        mu, logvar = backend.encode(x)
        eps = rng.standard_normal(mu.shape, dtype=np.float32)
        z = (mu + np.exp(0.5 * logvar) * eps).astype(np.float32)
        m = np.asarray(backend.decode(z), np.float32).astype(np.float64)
        if likelihood == "bernoulli":
            p = np.clip(m, 1e-7, 1 - 1e-7)
            nll = -(x64 * np.log(p) + (1.0 - x64) * np.log1p(-p))
        else:
            nll = 0.5 * ((x64 - m) / obs_std) ** 2 + math.log(obs_std) + 0.5 * math.log(2 * math.pi)
        mu64, lv64 = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
        kl = 0.5 * (mu64 ** 2 + np.exp(lv64) - 1.0 - lv64)
        per_example = nll.reshape(len(x64), -1).sum(1) + kl.reshape(len(mu64), -1).sum(1)
        total += float(per_example.mean())
    return total / samples


def compare_backends(
    reference: Backend,
    candidate: Backend,
    x_data: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 7, 64, 257),
    tolerance: Tolerance | None = None,
    precision: str = "fp32",
    seed: int = 0,
    edge_cases: bool = True,
    elbo: bool = True,
    data_description: str = "",
    data_label: str = "real",
    on_case: Callable[[str], None] | None = None,
    edge_batch: int = 4,
    recon_n: int = 64,
    user_latent: Sequence[int] = (),
) -> dict[str, Any]:
    """Run the standard cases through both backends and return the JSON-able report.

    ``on_case(name)`` is called before each case runs (progress display); ``edge_batch`` and
    ``recon_n`` size the edge and reconstruction cases (smaller for costly models)."""
    tol = tolerance or DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
    latent_shape = concrete_latent_shape(reference, x_data)
    cases = make_cases(x_data, latent_shape, batch_sizes, seed=seed, edge_cases=edge_cases, data_label=data_label,
                       edge_batch=edge_batch, recon_n=recon_n, user_latent=user_latent)
    results = []
    for case in cases:
        if on_case is not None:
            on_case(case.name)
        entry: dict[str, Any] = {"name": case.name, "graph": case.graph, "input": case.input,
                                 "batch_size": case.batch_size}
        try:
            ref, out = _run(reference, case), _run(candidate, case)
            entry["outputs"] = {k: compare_arrays(ref[k], out[k], tol) for k in ref}
            entry["passed"] = all(o["passed"] for o in entry["outputs"].values())
        except Exception as e:  # a backend that crashes on an input fails that case, loudly
            entry.update(passed=False, error=f"{type(e).__name__}: {e}")
        results.append(entry)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "reference": reference.name,
        "candidate": candidate.name,
        "precision": precision,
        "tolerance": asdict(tol),
        "rule": "|candidate - reference| <= atol + rtol * |reference|, NaN/Inf in the same places",
        "inputs": {
            "encoder": f"{data_label} data: {data_description or 'given array'} ({len(x_data)} examples, cycled to each batch size); "
                       "edge inputs all-zero and all-one images",
            "decoder": f"z ~ N(0, I) of shape [N, {', '.join(map(str, latent_shape))}] drawn with numpy seed {seed}; "
                       "edge inputs z = +4, -4 and alternating +-4 sigma",
            "reconstruct": f"posterior mean decoded, {data_label} data",
            "batch_sizes": list(batch_sizes),
        },
        "data_label": data_label,
        "cases": results,
    }
    if elbo and reference.spec.likelihood in ("bernoulli", "gaussian"):
        report["elbo"] = _elbo_check(reference, candidate, x_data, tol)
    elif elbo:
        report["elbo_skipped"] = (f"likelihood {reference.spec.likelihood!r}: an ELBO needs a known likelihood; "
                                  "the outputs are compared element-wise above")
    report["summary"] = summarize(report)
    return report


def reconstruction_error(backend: Backend, x: np.ndarray) -> float:
    """Mean absolute error between the data and its reconstruction (posterior mean decoded)."""
    return float(np.abs(backend.reconstruct(x).astype(np.float64) - np.asarray(x, np.float64)).mean())


def _elbo_check(reference: Backend, candidate: Backend, x: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """The test-set -ELBO through both backends (pass/fail at ``elbo_rtol``) and, reported
    alongside, the reconstruction error: what a lower precision costs end to end."""
    lik = reference.spec.likelihood
    obs_std = float(reference.spec.config.get("obs_std", 0.1)) if reference.spec.config else 0.1
    try:
        ref = negative_elbo(reference, x, lik, obs_std=obs_std)
        cand = negative_elbo(candidate, x, lik, obs_std=obs_std)
        ref_rec, cand_rec = reconstruction_error(reference, x), reconstruction_error(candidate, x)
    except Exception as e:
        return {"passed": False, "error": f"{type(e).__name__}: {e}"}
    rel = abs(cand - ref) / max(abs(ref), 1e-12)
    rec_rel = abs(cand_rec - ref_rec) / max(abs(ref_rec), 1e-12)
    out = {"reference_nelbo": _json_float(ref), "candidate_nelbo": _json_float(cand), "rel_diff": _json_float(rel),
           "rtol": tol.elbo_rtol, "reference_recon_mae": _json_float(ref_rec),
           "candidate_recon_mae": _json_float(cand_rec), "recon_rel_diff": _json_float(rec_rel),
           "n_examples": int(len(x)), "passed": bool(math.isfinite(rel) and rel <= tol.elbo_rtol)}
    if not math.isfinite(rel):
        out["error"] = (f"the test-set -ELBO is not finite (reference {ref}, candidate {cand}): "
                        "NaN/Inf outputs")
    return out


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    worst_name, worst = None, -1.0
    failed = []
    abs_sum, n_el = 0.0, 0
    for case in report["cases"]:
        if not case.get("passed"):
            failed.append(case["name"])
        for out_name, s in case.get("outputs", {}).items():
            if s.get("max_abs", -1.0) > worst:
                worst, worst_name = s["max_abs"], f"{case['name']}:{out_name}"
            if "mean_abs" in s:
                n = math.prod(s["shape"])
                abs_sum, n_el = abs_sum + s["mean_abs"] * n, n_el + n
    elbo = report.get("elbo")
    if elbo is not None and not elbo.get("passed"):
        failed.append("elbo")
    return {
        "passed": not failed,
        "n_cases": len(report["cases"]) + (1 if elbo is not None else 0),
        "n_failed": len(failed),
        "failed": failed,
        "max_abs_error": max(worst, 0.0),
        "mean_abs_error": abs_sum / n_el if n_el else 0.0,
        "worst": worst_name,
        "elbo_rel_diff": None if elbo is None else elbo.get("rel_diff"),
        "recon_rel_diff": None if elbo is None else elbo.get("recon_rel_diff"),
    }


EDGE_INPUTS = ("zeros", "ones", "+4sigma", "-4sigma", "alternating4sigma")
REL_NOTE = (f"max rel: over elements with |reference| >= {REL_FLOOR:g}; nearer zero only the absolute error "
            "means something (the rule is |diff| <= atol + rtol * |reference|)")


def _rel(st: dict[str, Any]) -> str:
    value = st.get("max_rel_significant", st.get("max_rel"))
    return f"{'-':>9}" if value is None else f"{value:9.2e}"


def format_report(report: dict[str, Any], *, verbose: bool = False) -> str:
    """A readable table: one row per case and output. Without ``verbose``, the smallest and
    largest batch sizes, the edge inputs, every failure and always the worst case."""
    s = report["summary"]
    t = report["tolerance"]
    sizes = report["inputs"]["batch_sizes"]
    label = report.get("data_label", "real")
    lines = [
        f"{report['candidate']} vs {report['reference']}  [{report['precision']}, atol {t['atol']:g}, rtol {t['rtol']:g}]"
        f"  -> {'PASS' if s['passed'] else 'FAIL'} ({s['n_cases'] - s['n_failed']}/{s['n_cases']} checks)",
        f"  {'case':<30} {'output':<7} {'max abs':>9} {'mean abs':>9} {'p99 abs':>9} {'max rel':>9}  {'worst at':<14} result",
    ]
    for case in report["cases"]:
        if "error" in case:
            lines.append(f"  {case['name']:<30} {'':<7} ERROR: {case['error']}")
            continue
        for name, st in case["outputs"].items():
            is_worst = f"{case['name']}:{name}" == s.get("worst")
            routine = case["input"] not in EDGE_INPUTS and case["batch_size"] not in (min(sizes), max(sizes))
            if not verbose and st["passed"] and routine and not is_worst:
                continue
            if "error" in st:
                lines.append(f"  {case['name']:<30} {name:<7} ERROR: {st['error']}")
                continue
            nf = st["nan_out"] + st["inf_out"]
            lines.append(
                f"  {case['name']:<30} {name:<7} {st['max_abs']:9.2e} {st['mean_abs']:9.2e} {st['p99_abs']:9.2e} "
                f"{_rel(st)}  {str(st['worst_index']):<14} {'ok' if st['passed'] else 'FAIL'}"
                + (f" ({nf} NaN/Inf)" if nf else "")
                + ("" if st["passed"] else "  (NaN/Inf in different places)" if st.get("nonfinite_mismatch")
                   else f"  (would pass at atol {_e(st['min_atol_to_pass'])})")
                + ("  <- worst" if is_worst else "")
            )
    elbo = report.get("elbo")
    what = "test-set -ELBO" if label == "real" else f"-ELBO on {label} inputs (not a test-set figure)"
    if report.get("elbo_skipped"):
        lines.append(f"  {what}: skipped ({report['elbo_skipped']})")
    if elbo:
        if "error" in elbo:
            lines.append(f"  {what}: ERROR {elbo['error']}")
        else:
            lines.append(
                f"  {what}: reference {_e(elbo['reference_nelbo'], '.5f')}, candidate "
                f"{_e(elbo['candidate_nelbo'], '.5f')} nats; rel diff {_e(elbo['rel_diff'])} (limit {elbo['rtol']:g}) "
                f"{'ok' if elbo['passed'] else 'FAIL'}"
            )
            if "reference_recon_mae" in elbo:
                lines.append(
                    f"  reconstruction mean abs error: reference {_e(elbo['reference_recon_mae'], '.5f')}, candidate "
                    f"{_e(elbo['candidate_recon_mae'], '.5f')}; rel diff {_e(elbo['recon_rel_diff'])} (reported, not gated)"
                )
    lines.append(f"  worst: max abs error {_e(s['max_abs_error'])} at {s['worst']}; "
                 f"mean abs error {_e(s.get('mean_abs_error'))}")
    return "\n".join(lines)
