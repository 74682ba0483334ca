"""Opening every backend of one model (eager, TorchScript, onnxruntime at each precision, the
bare session, OpenVINO, torch peers), and the calls the harness times."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vae_deploy.benchmarking.config import BARE, BASE_BACKENDS, EAGER, ORT, BenchConfig
from vae_deploy.benchmarking.models import BenchModel, encoder_precisions, example_shapes, precision_variants
from vae_deploy.benchmarking.peers import (
    EAGER_BF16,
    ORT_PLAIN,
    TORCH_COMPILE,
    AutocastBackend,
    PlainOrtSession,
    compile_unavailable_reason,
    compiled_backend,
)
from vae_deploy.runtime.engines import cpu


class BareSession:
    """onnxruntime with nothing around it: what ``Runtime`` is compared with. Uses the
    Runtime's own sessions, so the graphs and session options are identical."""

    def __init__(self, runtime: Any, name: str = BARE) -> None:
        self.name = name
        self.enc = runtime.encoder_session
        self.dec = runtime.decoder_session
        self.z_name = self.dec.get_inputs()[0].name
        self.x_name = self.enc.get_inputs()[0].name
        self.latent_shape = tuple(concrete_latent_shape(runtime))
        self.rng = np.random.default_rng()

    def sample(self, n: int, latent_shape: Any = None) -> np.ndarray:
        z = self.rng.standard_normal((n, *(latent_shape or self.latent_shape)), dtype=np.float32)
        return self.dec.run(None, {self.z_name: z})[0]

    def encode(self, x: np.ndarray) -> list[np.ndarray]:
        return self.enc.run(None, {self.x_name: x})

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.dec.run(None, {self.z_name: z})[0]

    def close(self) -> None:
        pass


def concrete_latent_shape(backend: Any) -> tuple[int, ...]:
    """The latent shape sampling draws (a dynamic latent takes the export's example shape)."""
    if hasattr(backend, "sample_latent_shape"):
        return tuple(backend.sample_latent_shape())
    return tuple(backend.latent_shape)


OV = "openvino-cpu"


def openvino_rows(model: BenchModel) -> list[str]:
    """OpenVINO on the fp32 graph at f32 and bf16, and on the int8/fp32-fast variants."""
    return [OV, f"{OV}-bf16"] + [f"{OV}-{p}" for p in precision_variants(model.manifest) if p in ("int8", "fp32-fast")]


def candidate_backends(model: BenchModel) -> list[str]:
    """Every engine x precision is its own row, then the peers a user would try instead."""
    names = list(BASE_BACKENDS)
    names[names.index(BARE) + 1:names.index(BARE) + 1] = [f"{ORT}-{p}" for p in precision_variants(model.manifest)]
    return [EAGER, EAGER_BF16, TORCH_COMPILE, ORT_PLAIN, *names[1:], *openvino_rows(model)]


def selected(name: str, patterns: Sequence[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build_backends(model: BenchModel, cfg: BenchConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Open every selected backend that can run here. Returns (backends, skipped reasons)."""
    from vae_deploy.exporters.manifest import spec_from_manifest
    from vae_deploy.runtime import providers
    from vae_deploy.runtime.backends import TorchBackend
    from vae_deploy.runtime.core import Runtime

    spec = spec_from_manifest(model.manifest)
    max_batch = max(1024, *cfg.batch_sizes, cfg.batcher_max_batch)
    files = model.manifest.get("files", {})
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in candidate_backends(model):
        if not selected(name, cfg.backends):
            continue
        engine = "openvino" if name.startswith(OV) else "onnxruntime" if name.startswith("ort-") else None
        if cfg.engines is not None and engine is not None and engine not in cfg.engines:
            continue
        try:
            if name == EAGER:
                if model.eager is None:
                    skipped[name] = model.eager_note or "no eager model"
                    continue
                out[name] = TorchBackend(*model.eager, spec, name=EAGER, threads=cfg.threads, max_batch=max_batch)
            elif name in (EAGER_BF16, TORCH_COMPILE):
                if model.eager is None:
                    skipped[name] = model.eager_note or "no eager model"
                    continue
                if name == EAGER_BF16:
                    if not cpu.native_bf16():
                        skipped[name] = "no native bf16 on this CPU (autocast would emulate it)"
                        continue
                    out[name] = AutocastBackend(*model.eager, spec, name=EAGER_BF16, threads=cfg.threads,
                                                max_batch=max_batch)
                else:
                    why = compile_unavailable_reason() or (
                        "disabled (--no-compile, or --quick)" if not cfg.torch_compile else
                        "left out for this reference model to keep `make bench` near 10 minutes (inductor "
                        "compiles each graph for 20 s to 2 min on 2 cores); --compile-all includes it"
                        if model.kind == "reference" and cfg.compile_models is not None
                        and model.name not in cfg.compile_models else None)
                    if why:
                        skipped[name] = why
                        continue
                    out[name] = compiled_backend(*model.eager, spec, threads=cfg.threads, max_batch=max_batch)
            elif name.startswith(OV):
                precision = name[len(OV) + 1:] or "fp32"
                if precision == "bf16" and (why := cpu.bf16_refusal()):
                    skipped[name] = why
                    continue
                out[name] = Runtime.load(model.folder, engine="openvino", precision=precision, threads=cfg.threads,
                                         max_batch=max_batch)
            elif name == ORT_PLAIN:
                out[name] = PlainOrtSession(model.folder, model.latent_shape or example_shapes(model.manifest)[1])
            elif name == "torchscript":
                if not {"encoder.ts", "decoder.ts"} <= set(files):
                    skipped[name] = "the export has no TorchScript files"
                    continue
                out[name] = TorchBackend.from_torchscript(model.folder, threads=cfg.threads, max_batch=max_batch)
            elif name == ORT:
                out[name] = Runtime.load(model.folder, provider="cpu", threads=cfg.threads, max_batch=max_batch)
            elif name == BARE:
                if ORT in out:
                    out[name] = BareSession(out[ORT])
                else:
                    rt = Runtime.load(model.folder, provider="cpu", threads=cfg.threads, max_batch=max_batch)
                    out[name] = BareSession(rt)
            elif name in ("ort-cuda", "ort-tensorrt"):
                prov = name.split("-", 1)[1]
                if prov == "tensorrt" and not providers.provider_works("cuda"):
                    # TensorRT runs on a CUDA device; probing it without one only prints errors.
                    skipped[name] = "needs a working CUDA device (CUDAExecutionProvider cannot run here)"
                    continue
                if not providers.provider_works(prov):
                    skipped[name] = (f"{providers.PROVIDERS[prov]} cannot run here (available: "
                                     f"{', '.join(_available_providers())}; no GPU or missing libraries)")
                    continue
                out[name] = Runtime.load(model.folder, provider=prov, max_batch=max_batch)
            else:  # ort-cpu-<precision>
                precision = name[len(ORT) + 1:]
                out[name] = Runtime.load(model.folder, provider="cpu", precision=precision, threads=cfg.threads,
                                         max_batch=max_batch)
        except Exception as e:
            skipped[name] = f"could not open: {type(e).__name__}: {e}"
    return out, skipped


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def op_supported(model: BenchModel, backend_name: str, op: str) -> str | None:
    """None when the backend runs ``op`` of this model; otherwise why the cell is skipped."""
    if backend_name.startswith(f"{OV}-") and op == "encode":
        precision = backend_name[len(OV) + 1:]
        if precision not in ("bf16", *encoder_precisions(model.manifest)):
            return f"no encoder at precision {precision} (OpenVINO uses the fp32 encoder: same as {OV})"
    if op == "encode" and backend_name.startswith(f"{ORT}-") and backend_name != BARE:
        precision = backend_name[len(ORT) + 1:]
        if precision not in encoder_precisions(model.manifest):
            return f"no encoder at precision {precision} (the Runtime uses the fp32 encoder: same as {ORT})"
    return None


def make_call(backend: Any, op: str, batch_size: int, x: np.ndarray | None,
              latent_shape: tuple[int, ...] | None = None) -> Callable[[], Any]:
    if op == "sample":
        sample = backend.sample
        if latent_shape:  # a dynamic export sampled at another size than its example
            return lambda: sample(batch_size, latent_shape=latent_shape)
        return lambda: sample(batch_size)
    encode = backend.encode
    return lambda: encode(x)


def parity_check(model: BenchModel, backends: dict[str, Any], n: int = 8) -> dict[str, float]:
    """Max |difference| of each backend's decode and encode against the first backend (eager when
    present), on a fixed input: a sanity check that every timed backend computes the same model."""
    return parity_details(model, backends, n)[0]


def parity_details(model: BenchModel, backends: dict[str, Any], n: int = 8
                   ) -> tuple[dict[str, float], float, float]:
    """(max abs difference per backend, max |reference decode output|, its range) on fixed inputs; the
    encoder is compared only for models whose encode op is measured (the SD model decodes only)."""
    rng = np.random.default_rng(123)
    shape, lat = example_shapes(model.manifest)
    encode = model.ops is None or "encode" in model.ops
    n = n if model.batch_sizes is None else min(n, max(model.batch_sizes))
    x = rng.random((n, *shape), dtype=np.float32)
    z = rng.standard_normal((n, *lat), dtype=np.float32)
    ref_name = EAGER if EAGER in backends else next(iter(backends), None)
    if ref_name is None:
        return {}, float("nan"), float("nan")
    ref = backends[ref_name]
    ref_dec = ref.decode(z)
    ref_mu = ref.encode(x)[0] if encode else None
    out = {}
    for name, b in backends.items():
        if name == ref_name:
            continue
        try:
            err = float(np.max(np.abs(np.asarray(b.decode(z)) - ref_dec)))
            if encode:
                err = max(err, float(np.max(np.abs(np.asarray(b.encode(x)[0]) - ref_mu))))
            out[name] = err
        except Exception:
            out[name] = float("nan")
    return out, float(np.max(np.abs(ref_dec))), float(np.max(ref_dec) - np.min(ref_dec))
