"""The accuracy gate a candidate engine x precision passes before ``tune`` may time it.

The reference is onnxruntime fp32 on the same export (itself verified against eager torch at
export, within 1e-5), so the gate needs no torch: element-wise parity at the precision's
tolerance (``tolerance.tolerance_for``, the policy verify uses too) on seeded inputs, and, where the likelihood is known,
the negative ELBO through both backends within ``elbo_rtol`` (0.5% for lossy precisions).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vae_deploy.backends import Backend
from vae_deploy.parity import compare_arrays
from vae_deploy.tolerance import Tolerance, tolerance_for


def gate_inputs(backend: Backend, n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded inputs: x uniform [0, 1) (binarised for a Bernoulli likelihood) and z ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    shape = tuple(d if d > 0 else 16 for d in backend.spec.concrete_input_shape)
    x = rng.random((n, *shape), dtype=np.float32)
    if backend.spec.likelihood == "bernoulli":
        x = (x > 0.5).astype(np.float32)
    z = rng.standard_normal((n, *backend.sample_latent_shape()), dtype=np.float32)
    return x, z


def negative_elbo(backend: Backend, x: np.ndarray, likelihood: str, obs_std: float = 0.1, seed: int = 1234) -> float:
    """-ELBO (nats/example) through the backend's graphs with fixed noise, in numpy."""
    mu, logvar = backend.encode(x)
    eps = np.random.default_rng(seed).standard_normal(mu.shape, dtype=np.float32)
    x_hat = backend.decode((mu + np.exp(0.5 * logvar) * eps).astype(np.float32)).astype(np.float64)
    xd = x.astype(np.float64)
    if likelihood == "bernoulli":
        p = np.clip(x_hat, 1e-7, 1 - 1e-7)
        nll = -(xd * np.log(p) + (1 - xd) * np.log1p(-p))
    else:
        nll = 0.5 * ((xd - x_hat) / obs_std) ** 2 + math.log(obs_std) + 0.5 * math.log(2 * math.pi)
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    kl = 0.5 * (mu64**2 + np.exp(lv64) - 1.0 - lv64)
    return float(nll.reshape(len(x), -1).sum(1).mean() + kl.reshape(len(x), -1).sum(1).mean())


def gate(reference: Backend, candidate: Backend, precision: str, *, max_error: float | None = None,
         n: int = 16) -> dict[str, Any]:
    """Pass/fail of ``candidate`` against ``reference`` with the figures that decided it."""
    tol: Tolerance = tolerance_for(precision, reference.spec.family)
    x, z = gate_inputs(reference, n)
    out: dict[str, Any] = {"precision": precision, "atol": tol.atol, "rtol": tol.rtol, "elbo_rtol": tol.elbo_rtol}
    try:
        checks = {"decoder": compare_arrays(reference.decode(z), candidate.decode(z), tol),
                  "encoder": compare_arrays(reference.encode(x)[0], candidate.encode(x)[0], tol)}
    except Exception as e:
        return {**out, "passed": False, "reason": f"failed to run: {type(e).__name__}: {e}"}
    out["max_abs_error"] = max(float(c.get("max_abs", math.inf))
                               for c in checks.values())
    reasons = [f"{k} outside atol {tol.atol:g} / rtol {tol.rtol:g}" for k, c in checks.items() if not c["passed"]]
    lik = reference.spec.likelihood
    if lik in ("bernoulli", "gaussian"):
        obs_std = float((reference.spec.config or {}).get("obs_std", 0.1))
        ref, cand = negative_elbo(reference, x, lik, obs_std), negative_elbo(candidate, x, lik, obs_std)
        out["elbo_rel_diff"] = abs(cand - ref) / max(abs(ref), 1e-12)
        if out["elbo_rel_diff"] > tol.elbo_rtol:
            reasons.append(f"-ELBO differs by {out['elbo_rel_diff']:.2%} (limit {tol.elbo_rtol:.2%})")
    if max_error is not None and out["max_abs_error"] > max_error:
        reasons.append(f"max abs error {out['max_abs_error']:.2e} above --max-error {max_error:g}")
    out["passed"] = not reasons
    if reasons:
        out["reason"] = "; ".join(reasons)
    return out
