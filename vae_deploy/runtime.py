"""``Runtime``: the exported encoder and decoder on onnxruntime, for Python services.

Opens the two ONNX sessions after checking the manifest's checksums, picks the execution
provider that really works (and says which one is active), validates inputs with clear
errors, chunks large batches, and on CUDA keeps chunks on the device with IO binding.
Sessions are thread-safe in onnxruntime, so one Runtime serves many threads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vae_deploy import providers
from vae_deploy.artifacts import (
    META_PREFIX,
    ExportSpec,
    load_manifest,
    parse_shape,
    spec_from_manifest,
)
from vae_deploy.backends import Backend
from vae_deploy.errors import ArtifactError


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


def variant_file(manifest: dict[str, Any], role: str, precision: str) -> str:
    """The ONNX file for ``role`` at ``precision``; the encoder falls back to fp32 when a
    precision was only produced for the decoder (sampling needs only the decoder)."""
    files = manifest.get("files", {})
    for name, e in files.items():
        if e.get("format") == "onnx" and e.get("role") == role and e.get("precision") == precision:
            return name
    if precision != "fp32" and role == "encoder":
        return variant_file(manifest, role, "fp32")
    have = sorted({e.get("precision") for e in files.values() if e.get("format") == "onnx" and e.get("role") == role})
    raise ArtifactError(f"no {role} ONNX file at precision {precision!r} in this export (has {have})")


class Runtime(Backend):
    """Batched sampling, encoding, decoding and reconstruction on onnxruntime."""

    name = "onnxruntime"

    def __init__(
        self,
        encoder_path: str | Path,
        decoder_path: str | Path,
        spec: ExportSpec | None = None,
        *,
        provider: str = "auto",
        max_batch: int = 1024,
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
        cache_dir: str | Path | None = None,
        check_finite: bool = True,
        device_id: int = 0,
    ) -> None:
        self.provider_chain = providers.resolve(provider)
        self.requested_provider = provider
        self.device_id = device_id
        self._threads = threads
        self._session_options = session_options
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self.encoder_session = self._open(Path(encoder_path))
        self.decoder_session = self._open(Path(decoder_path))
        self.files = {"encoder": str(encoder_path), "decoder": str(decoder_path)}
        super().__init__(spec or spec_from_session(self.decoder_session), max_batch=max_batch,
                         check_finite=check_finite)
        active = self.decoder_session.get_providers()[0]
        self.provider = providers.short_name(active)  # what is really running
        self.name = f"onnxruntime-{self.provider}"
        self._x_name = self.encoder_session.get_inputs()[0].name
        self._z_name = self.decoder_session.get_inputs()[0].name
        self._enc_out = [o.name for o in self.encoder_session.get_outputs()]
        self._dec_out = [o.name for o in self.decoder_session.get_outputs()]
        self._use_iobinding = self.provider in ("cuda", "tensorrt")
        self._check_contract()

    @classmethod
    def load(
        cls, path: str | Path = "export", *, precision: str = "fp32", verify_checksums: bool = True, **kwargs: Any
    ) -> Runtime:
        """Open an export folder at the given precision variant, after the export contract
        (paths inside the folder, checksums unless ``verify_checksums=False``, no random ops,
        declared shapes) holds for the two graphs: :func:`vae_deploy.contract.check_export`."""
        from vae_deploy.contract import check_export

        folder = Path(path)
        manifest = load_manifest(folder, verify=False)
        enc, dec = variant_file(manifest, "encoder", precision), variant_file(manifest, "decoder", precision)
        check_export(folder, manifest, [enc, dec], checksums=verify_checksums)
        rt = cls(folder / enc, folder / dec, spec_from_manifest(manifest), **kwargs)
        rt.precision = precision
        return rt

    precision = "fp32"

    # --- sessions --------------------------------------------------------------------------
    def _open(self, path: Path) -> ort.InferenceSession:
        if not path.is_file():
            raise ArtifactError(f"ONNX file {str(path)!r} does not exist")
        so = self._session_options or default_session_options(self._threads)
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

    def _check_contract(self) -> None:
        """The graphs' declared shapes must agree with the spec the host validates against."""
        for sess, item, what in ((self.encoder_session, self.input_shape, "encoder input"),
                                 (self.decoder_session, self.latent_shape, "decoder input")):
            declared = sess.get_inputs()[0].shape[1:]
            ok = len(declared) == len(item) and all(
                not isinstance(d, int) or e < 0 or d == e for d, e in zip(declared, item)
            )
            if not ok:
                raise ArtifactError(
                    f"{what} is declared as [N, {', '.join(map(str, declared))}] in the graph but the "
                    f"metadata/manifest says [N, {', '.join(map(str, item))}]"
                )

    # --- one chunk -------------------------------------------------------------------------
    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._use_iobinding:
            mu, logvar = self._run_bound(self.encoder_session, self._x_name, x, self._enc_out)
            return mu, logvar
        mu, logvar = self.encoder_session.run(self._enc_out, {self._x_name: x})
        return mu, logvar

    def _decode(self, z: np.ndarray) -> np.ndarray:
        if self._use_iobinding:
            return self._run_bound(self.decoder_session, self._z_name, z, self._dec_out)[0]
        return self.decoder_session.run(self._dec_out, {self._z_name: z})[0]

    def _run_bound(self, sess: ort.InferenceSession, in_name: str, a: Any, out_names: list[str],
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

    def reconstruct(self, x: Any, sample: bool = False, seed: int | None = None) -> np.ndarray:
        """On CUDA the posterior mean stays on the device between encoder and decoder."""
        if not self._use_iobinding or sample:
            return super().reconstruct(x, sample=sample, seed=seed)
        x, single = self._prepare(x, self.input_shape, "x")

        def chunk(c: np.ndarray) -> tuple[np.ndarray]:
            mu_dev = self._run_bound(self.encoder_session, self._x_name, c, self._enc_out, to_host=False)[0]
            return (self._run_bound(self.decoder_session, self._z_name, mu_dev, self._dec_out)[0],)

        (x_hat,) = self._chunked(chunk, x, 1)
        return x_hat[0] if single else x_hat

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "requested": self.requested_provider,
            "providers": self.decoder_session.get_providers(),
            "precision": self.precision,
            "files": self.files,
            "max_batch": self.max_batch,
            "intra_op_threads": self._threads or "onnxruntime default",
            "io_binding": self._use_iobinding,
        }


def spec_from_session(sess: ort.InferenceSession) -> ExportSpec:
    """Rebuild the spec from a graph's metadata alone (how a C++ consumer does it)."""
    meta = sess.get_modelmeta().custom_metadata_map
    try:
        return ExportSpec(
            input_shape=parse_shape(meta[f"{META_PREFIX}input_shape"]),
            latent_shape=parse_shape(meta[f"{META_PREFIX}latent_shape"]),
            likelihood=meta.get(f"{META_PREFIX}likelihood", "bernoulli"),
            family=meta.get(f"{META_PREFIX}family", ""),
            scaling_factor=float(meta.get(f"{META_PREFIX}scaling_factor", "1.0")),
            dynamic_axes=tuple(meta.get(f"{META_PREFIX}dynamic_axes", "batch").split(",")),
            example_input_shape=parse_shape(meta.get(f"{META_PREFIX}example_input_shape", "")),
            example_latent_shape=parse_shape(meta.get(f"{META_PREFIX}example_latent_shape", "")),
            source_sha256=meta.get(f"{META_PREFIX}source_sha256", ""),
        )
    except KeyError as e:
        raise ArtifactError(f"ONNX model lacks the vae-deploy metadata key {e.args[0]!r}") from None
