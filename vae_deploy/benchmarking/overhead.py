"""Where the Runtime's per-call overhead goes, measured with stub sessions."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np

from vae_deploy.benchmarking.backends import concrete_latent_shape
from vae_deploy.benchmarking.timing import _per_call_us


class _StubSession:
    """Stands in for an InferenceSession: returns preallocated outputs at once, so timing a
    Runtime around it measures only the Python wrapper."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, names: Any, feeds: Any) -> list[np.ndarray]:
        return self.outputs


def profile_runtime_overhead(runtime: Any, calls: int = 2000, rounds: int = 15) -> dict[str, Any]:
    """Cost of each step of ``Runtime.sample(1)`` and ``Runtime.encode(x[1])`` around the
    session, measured with stub sessions (so onnxruntime's own time and its noise drop out),
    against the bare equivalent (noise + ``session.run``). Microseconds per call."""
    import copy

    from vae_deploy.runtime import backends as _backends

    if hasattr(_backends, "_all_finite"):  # the check _prepare uses, whichever it is
        finite, finite_name = _backends._all_finite, "backends._all_finite"
    else:
        finite, finite_name = (lambda a: np.isfinite(a).all()), "np.isfinite(x).all()"
    lat = concrete_latent_shape(runtime)
    shape = tuple(getattr(runtime.spec, "concrete_input_shape", runtime.input_shape))
    shape = tuple(d if d > 0 else 16 for d in shape)
    z = np.zeros((1, *lat), np.float32)
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    stub = copy.copy(runtime)
    engine = stub.engine = copy.copy(runtime.engine)  # the onnxruntime engine, sessions stubbed
    engine.decoder_session = _StubSession([np.zeros((1, *shape), np.float32)])
    engine.encoder_session = _StubSession([z, z])
    stub._encode, stub._decode = engine.encode, engine.decode
    dec, enc = engine.decoder_session, engine.encoder_session
    rng = np.random.default_rng()
    zn, xn, dec_out = engine._z_name, engine._x_name, engine._dec_out
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t = {
            "sample": _per_call_us(lambda: stub.sample(1), calls, rounds),
            "sample_bare": _per_call_us(lambda: dec.run(None, {zn: rng.standard_normal((1, *lat), dtype=np.float32)})[0],
                                        calls, rounds),
            "noise": _per_call_us(lambda: stub.noise((1, *lat)), calls, rounds),
            "generator": _per_call_us(lambda: rng.standard_normal((1, *lat), dtype=np.float32), calls, rounds),
            "decode_dispatch": _per_call_us(lambda: stub._decode(z), calls, rounds),
            "run_named": _per_call_us(lambda: dec.run(dec_out, {zn: z}), calls, rounds),
            "encode": _per_call_us(lambda: stub.encode(x), calls, rounds),
            "encode_bare": _per_call_us(lambda: enc.run(None, {xn: x}), calls, rounds),
            "prepare": _per_call_us(lambda: stub._prepare(x, stub.input_shape, "x"), calls, rounds),
            "finite": _per_call_us(lambda: finite(x), calls, rounds),
        }
    finally:
        if gc_was:
            gc.enable()
    sample_steps = {
        "Backend.noise: n checks, lock, Generator.standard_normal": t["noise"],
        "  of which Generator.standard_normal itself (the bare path pays it too)": t["generator"],
        "the rest of Backend.sample: dispatch, Runtime._decode, session.run(stub)": max(0.0, t["sample"] - t["noise"]),
        "  of which Runtime._decode (the engine's decode) + session.run(stub)": t["decode_dispatch"],
        "  of which session.run(stub) itself (the bare path pays it too)": t["run_named"],
    }
    encode_steps = {
        "Backend._prepare fast path: type/dtype/shape/contiguity checks + finiteness": t["prepare"],
        f"  of which the finiteness check ({finite_name})": t["finite"],
        "the rest of Backend.encode: dispatch, Runtime._encode, session.run(stub)": max(0.0, t["encode"] - t["prepare"]),
    }
    return {
        "method": f"stub sessions; best of {rounds} rounds x {calls} calls; microseconds per call",
        "sample": {"runtime_us": t["sample"], "bare_us": t["sample_bare"], "overhead_us": t["sample"] - t["sample_bare"],
                   "steps_us": sample_steps},
        "encode": {"runtime_us": t["encode"], "bare_us": t["encode_bare"], "overhead_us": t["encode"] - t["encode_bare"],
                   "steps_us": encode_steps},
    }
