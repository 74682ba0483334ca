"""The onnxruntime engine: sessions, execution providers, an optional optimised-graph cache,
and IO binding on CUDA so chunks stay on the device between encoder and decoder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vae_deploy.errors import ArtifactError, EngineError
from vae_deploy.runtime import providers
from vae_deploy.runtime.engines.base import Engine

# Precisions that are a file variant for onnxruntime (bf16 is not: its CPU provider has no bf16
# Conv/Gemm kernels on x86, so a bf16 graph would run through casts and be slower than fp32).
FILE_PRECISIONS = ("fp32", "fp32-fast", "int8", "fp16", "fp32-winograd")


def default_session_options(threads: int | None = None) -> ort.SessionOptions:
    """Throughput-oriented defaults: full graph optimisation, one sequential inter-op lane,
    ``threads`` intra-op threads (onnxruntime's default, the physical cores, when None)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3  # errors only: no warning chatter in a service's logs
    return so


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self, encoder_path: Path, decoder_path: Path, *, precision: str = "fp32", provider: str = "auto",
                 threads: int | None = None, session_options: ort.SessionOptions | None = None,
                 cache_dir: str | Path | None = None, device_id: int = 0) -> None:
        if precision not in FILE_PRECISIONS:
            raise EngineError(f"engine 'onnxruntime' runs precisions {list(FILE_PRECISIONS)}, got {precision!r}"
                              + ("; bf16 runs on engine 'openvino' (pip install 'vae-deploy[openvino]')"
                                 if precision == "bf16" else ""))
        self.precision = precision
        self.provider_chain = providers.resolve(provider)
        self.requested_provider = provider
        self.device_id = device_id
        self.threads = threads
        self._session_options = session_options
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self.encoder_session = self._open(Path(encoder_path))
        self.decoder_session = self._open(Path(decoder_path))
        self.device = providers.short_name(self.decoder_session.get_providers()[0])  # what really runs
        self._x_name = self.encoder_session.get_inputs()[0].name
        self._z_name = self.decoder_session.get_inputs()[0].name
        self._enc_out = [o.name for o in self.encoder_session.get_outputs()]
        self._dec_out = [o.name for o in self.decoder_session.get_outputs()]
        self.use_iobinding = self.device in ("cuda", "tensorrt")

    # --- sessions --------------------------------------------------------------------------
    def _open(self, path: Path) -> ort.InferenceSession:
        if not path.is_file():
            raise ArtifactError(f"ONNX file {str(path)!r} does not exist")
        so = self._session_options or default_session_options(self.threads)
        target = str(path)
        if self._cache_dir is not None:
            cached = self._cache_path(path)
            if cached.is_file():
                target = str(cached)
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            else:
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                so.optimized_model_filepath = str(cached)
        try:
            sess = ort.InferenceSession(target, so, providers=self.provider_chain)
        except Exception as e:
            raise ArtifactError(f"onnxruntime could not open {str(path)!r}: {e}") from None
        so.optimized_model_filepath = ""
        return sess

    def _cache_path(self, path: Path) -> Path:
        """Cache key: the source file's bytes, the onnxruntime version and the providers."""
        h = hashlib.sha256(path.read_bytes())
        h.update(f"{ort.__version__}|{self.provider_chain}".encode())
        return self._cache_dir / f"{path.stem}.{h.hexdigest()[:16]}.opt.onnx"  # type: ignore[operator]

    def declared_input(self, role: str) -> tuple[Any, ...]:
        sess = self.encoder_session if role == "encoder" else self.decoder_session
        return tuple(sess.get_inputs()[0].shape[1:])

    # --- one chunk -------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.use_iobinding:
            mu, logvar = self.run_bound(self.encoder_session, self._x_name, x, self._enc_out)
            return mu, logvar
        mu, logvar = self.encoder_session.run(self._enc_out, {self._x_name: x})
        return mu, logvar

    def decode(self, z: np.ndarray) -> np.ndarray:
        if self.use_iobinding:
            return self.run_bound(self.decoder_session, self._z_name, z, self._dec_out)[0]
        return self.decoder_session.run(self._dec_out, {self._z_name: z})[0]

    def reconstruct_on_device(self, x: np.ndarray) -> np.ndarray:
        """Encoder then decoder with the posterior mean kept on the device (CUDA)."""
        mu_dev = self.run_bound(self.encoder_session, self._x_name, x, self._enc_out, to_host=False)[0]
        return self.run_bound(self.decoder_session, self._z_name, mu_dev, self._dec_out)[0]

    def run_bound(self, sess: ort.InferenceSession, in_name: str, a: Any, out_names: list[str],
                  to_host: bool = True) -> list[Any]:
        """Run with inputs and outputs bound to device memory; copy outputs to host once."""
        binding = sess.io_binding()
        if isinstance(a, ort.OrtValue):
            binding.bind_ortvalue_input(in_name, a)
        else:
            binding.bind_ortvalue_input(in_name, ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.device_id))
        for name in out_names:
            binding.bind_output(name, "cuda", self.device_id)
        sess.run_with_iobinding(binding)
        if to_host:
            return binding.copy_outputs_to_cpu()
        return binding.get_outputs()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "provider": self.device,
            "requested": self.requested_provider,
            "providers": self.decoder_session.get_providers(),
            "precision": self.precision,
            "intra_op_threads": self.threads or "onnxruntime default",
            "io_binding": self.use_iobinding,
            "version": ort.__version__,
        }
