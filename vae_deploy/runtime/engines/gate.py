"""The accuracy gate a candidate engine x precision passes before ``tune`` may time it.

The reference is onnxruntime fp32 on the same export (itself verified against eager torch at
export), so the gate needs no torch. Two questions, both from :mod:`vae_deploy.tolerance` (the
one policy verify uses too): does the candidate agree at its precision's tolerance
(``tolerance_for``: element-wise on the decoder and the encoder's mean, and the negative ELBO
within ``elbo_rtol`` where the likelihood is known), and does the budget the user tuned with
accept it (``budget_accepts``: exact class, lossy within 2% of the output range and 1 level of 8 bits,
or the user's ``--max-error``)? Inputs are seeded and sized to the latent shape being tuned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vae_deploy.runtime.backends import Backend
from vae_deploy.tolerance import (
    Budget,
    Tolerance,
    budget_accepts,
    compare_arrays,
    measure_decoder,
    tolerance_for,
)

#: Decoder output elements per gate (n examples x output size): n shrinks at large sizes, >= 2.
MAX_GATE_ELEMENTS = 1 << 20


def input_shape_for(backend: Backend, latent_shape: Sequence[int]) -> tuple[int, ...]:
    """The per-example input that encodes to ``latent_shape`` (spatial exports scale H and W)."""
    spec = backend.spec
    shape = tuple(d if d > 0 else 16 for d in spec.concrete_input_shape)
    lat, ex_lat = tuple(latent_shape), tuple(spec.concrete_latent_shape)
    if len(lat) == 3 and len(shape) == 3 and len(ex_lat) == 3 and min(ex_lat[1:]) > 0 and lat != ex_lat:
        ry, rx = shape[1] // ex_lat[1], shape[2] // ex_lat[2]
        shape = (shape[0], lat[1] * ry, lat[2] * rx)
    return shape


def gate_inputs(backend: Backend, n: int = 16, seed: int = 0, latent_shape: Sequence[int] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded inputs: x uniform [0, 1) (binarised for a Bernoulli likelihood) and z ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    lat = backend.sample_latent_shape(latent_shape)
    shape = input_shape_for(backend, lat)
    n = max(2, min(n, MAX_GATE_ELEMENTS // max(1, math.prod(shape))))
    x = rng.random((n, *shape), dtype=np.float32)
    if backend.spec.likelihood == "bernoulli":
        x = (x > 0.5).astype(np.float32)
    z = rng.standard_normal((n, *lat), dtype=np.float32)
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


def gate(reference: Backend, candidate: Backend, precision: str, *, budget: Budget | None = None,
         latent_shape: Sequence[int] | None = None, n: int = 16) -> dict[str, Any]:
    """Pass/fail of ``candidate`` against ``reference`` with the figures that decided it
    (``measured``: what :func:`vae_deploy.tolerance.budget_accepts` judges, kept in the record so
    ``auto`` can re-check it)."""
    spec = reference.spec
    tol: Tolerance = tolerance_for(precision, spec.family)
    x, z = gate_inputs(reference, n, latent_shape=latent_shape)
    out: dict[str, Any] = {"precision": precision, "atol": tol.atol, "rtol": tol.rtol, "elbo_rtol": tol.elbo_rtol,
                           "latent_shape": list(z.shape[1:]), "n": len(z)}
    try:
        ref_dec, cand_dec = reference.decode(z), candidate.decode(z)
        checks = {"decoder": compare_arrays(ref_dec, cand_dec, tol),
                  "encoder": compare_arrays(reference.encode(x)[0], candidate.encode(x)[0], tol)}
    except Exception as e:
        return {**out, "passed": False, "reason": f"failed to run: {type(e).__name__}: {e}"}
    out["max_abs_error"] = max(float(c.get("max_abs", math.inf)) for c in checks.values())
    out["measured"] = measure_decoder(ref_dec, cand_dec, family=spec.family,
                                      output_range=tuple(getattr(spec, "output_range", ()) or ()))
    reasons = [f"{k} outside atol {tol.atol:g} / rtol {tol.rtol:g}" for k, c in checks.items() if not c["passed"]]
    lik = spec.likelihood
    if lik in ("bernoulli", "gaussian"):
        obs_std = float((spec.config or {}).get("obs_std", 0.1))
        ref, cand = negative_elbo(reference, x, lik, obs_std), negative_elbo(candidate, x, lik, obs_std)
        out["elbo_rel_diff"] = abs(cand - ref) / max(abs(ref), 1e-12)
        if out["elbo_rel_diff"] > tol.elbo_rtol:
            reasons.append(f"-ELBO differs by {out['elbo_rel_diff']:.2%} (limit {tol.elbo_rtol:.2%})")
    ok, why = budget_accepts(precision, out["measured"], budget)
    out["budget"] = why
    if not ok:
        reasons.append(f"budget: {why}")
    out["passed"] = not reasons
    if reasons:
        out["reason"] = "; ".join(reasons)
    return out
