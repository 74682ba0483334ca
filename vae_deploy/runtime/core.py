"""``Runtime``: the exported encoder and decoder on an engine (onnxruntime or OpenVINO), for
Python services.

``Runtime.load`` is the one entry point: it reads the manifest and checks the checksums before
any engine opens a file, resolves ``auto`` from the tuning file, and checks the graphs' declared
shapes against the contract. The engine runs one chunk; ``Backend`` validates inputs with clear
errors, chunks large batches and samples. onnxruntime sessions and OpenVINO compiled models (one
infer request per thread) are thread-safe, so one Runtime serves many threads. No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.artifacts import (
    META_PREFIX,
    ExportSpec,
    load_manifest,
    parse_shape,
    spec_from_manifest,
)
from vae_deploy.errors import ArtifactError, ConfigError
from vae_deploy.limits import check_threads
from vae_deploy.runtime.backends import Backend
from vae_deploy.runtime.engines import check_choice, file_precision, open_engine, variant_file  # noqa: F401 (re-exported)
from vae_deploy.runtime.engines.onnxruntime import default_session_options

__all__ = ["Runtime", "default_session_options", "spec_from_session", "variant_file"]



class Runtime(Backend):
    """Batched sampling, encoding, decoding and reconstruction on an engine."""

    name = "ort"
    precision = "fp32"
    choice_reason = "asked for explicitly"

    def __init__(
        self,
        encoder_path: str | Path,
        decoder_path: str | Path,
        spec: ExportSpec | None = None,
        *,
        engine: str = "onnxruntime",
        precision: str = "fp32",
        provider: str = "auto",
        max_batch: int = 1024,
        threads: int | None = None,
        session_options: Any = None,
        cache_dir: str | Path | None = None,
        check_finite: bool = True,
        device_id: int = 0,
        force_bf16: bool = False,
    ) -> None:
        check_threads(threads)
        if engine == "onnxruntime" and session_options is None and spec is not None \
                and any(d < 0 for d in spec.latent_shape):
            # Sizes vary call to call (any image size, tiles of several shapes): onnxruntime's CPU
            # arena only grows (chunks rounded up, kept per size), which took tiled decode of an SD
            # VAE at 768 px to 2.40 GB peak RSS; without it 1.59 GB (bench/tiled_memory.py).
            session_options = default_session_options(threads)
            session_options.enable_cpu_mem_arena = False
        extra = {"session_options": session_options, "device_id": device_id} if engine == "onnxruntime" else (
            {"session_options": session_options} if session_options is not None else {})
        self.engine = open_engine(engine, encoder_path, decoder_path, precision=precision, provider=provider,
                                  threads=threads, cache_dir=cache_dir, force_bf16=force_bf16, **extra)
        self.requested_provider = provider
        self.precision = precision
        self._threads = threads
        self.files = {"encoder": str(encoder_path), "decoder": str(decoder_path)}
        if spec is None:
            if engine != "onnxruntime":
                raise ArtifactError("pass spec= (or use Runtime.load) to open graphs on engine " + repr(engine))
            spec = spec_from_session(self.engine.decoder_session)
        super().__init__(spec, max_batch=max_batch, check_finite=check_finite)
        self.provider = self.engine.device  # what is really running
        self.name = self.engine.label  # the backend naming scheme: ort-cpu, openvino-cpu-bf16
        # One chunk runs straight on the engine: no extra Python frame on the hot path.
        self._encode = self.engine.encode  # type: ignore[method-assign]
        self._decode = self.engine.decode  # type: ignore[method-assign]
        self._use_iobinding = bool(getattr(self.engine, "use_iobinding", False))
        self._check_contract()

    @classmethod
    def load(
        cls, path: str | Path = "export", *, engine: str = "onnxruntime", precision: str = "fp32",
        verify_checksums: bool = True, batch_size: int | None = None, tuning_file: str | Path | None = None,
        max_error: float | None = None, fp32_only: bool = False, latent_shape: Any = None, **kwargs: Any,
    ) -> Runtime:
        """Open an export folder (checksums checked before any engine reads a file) on ``engine`` at
        ``precision``. ``"auto"`` for either loads the fastest pair that passed its accuracy gate on this
        machine, from the tuning file (``vae-deploy tune``; tuned now when no record fits), at
        ``batch_size`` (default: the largest tuned batch size), under the accuracy budget
        ``max_error`` / ``fp32_only`` (default: the default budget, ``tolerance.budget_accepts``), for
        the decode size ``latent_shape`` (default: the export's example latent shape).

        The export contract (paths inside the folder, checksums unless ``verify_checksums=False``,
        no random ops, declared shapes) must hold for the two graphs first:
        :func:`vae_deploy.contract.check_export`."""
        from vae_deploy.contract import check_export

        check_choice(engine, precision)
        check_threads(kwargs.get("threads"))
        folder = Path(path)
        manifest = load_manifest(folder, verify=False)
        reason = "asked for explicitly"
        if engine == "auto" or precision == "auto":
            engine, precision, reason = _choose_auto(folder, manifest, engine, precision, kwargs, batch_size=batch_size,
                                                     tuning_file=tuning_file, verify_checksums=verify_checksums,
                                                     max_error=max_error, fp32_only=fp32_only,
                                                     latent_shape=latent_shape)
        elif max_error is not None or fp32_only:
            raise ConfigError("max_error/fp32_only are auto's accuracy budget: they need engine or precision 'auto'")
        enc, dec = variant_file(manifest, "encoder", precision), variant_file(manifest, "decoder", precision)
        check_export(folder, manifest, [enc, dec], checksums=verify_checksums)
        rt = cls(folder / enc, folder / dec, spec_from_manifest(manifest), engine=engine, precision=precision,
                 **kwargs)
        rt.choice_reason = reason
        return rt

    # --- compatibility: the onnxruntime engine's sessions -------------------------------------
    @property
    def encoder_session(self) -> Any:
        return getattr(self.engine, "encoder_session", None)

    @property
    def decoder_session(self) -> Any:
        return getattr(self.engine, "decoder_session", None)

    def _check_contract(self) -> None:
        """The graphs' declared shapes must agree with the spec the host validates against."""
        for role, item, what in (("encoder", self.input_shape, "encoder input"),
                                 ("decoder", self.latent_shape, "decoder input")):
            declared = self.engine.declared_input(role)
            ok = len(declared) == len(item) and all(
                not isinstance(d, int) or e < 0 or d == e for d, e in zip(declared, item)
            )
            if not ok:
                shown = ", ".join(str(d) if isinstance(d, int) else "?" for d in declared)
                raise ArtifactError(
                    f"{what} is declared as [N, {shown}] in the graph but the "
                    f"metadata/manifest says [N, {', '.join(map(str, item))}]"
                )

    def reconstruct(self, x: Any, sample: bool = False, seed: int | None = None, *,
                    tile: int | None = None) -> np.ndarray:
        """On CUDA the posterior mean stays on the device between encoder and decoder."""
        if not self._use_iobinding or sample or tile is not None:
            return super().reconstruct(x, sample=sample, seed=seed, tile=tile)
        x, single = self._prepare(x, self.input_shape, "x")
        (x_hat,) = self._chunked(lambda c: (self.engine.reconstruct_on_device(c),), x, 1)  # type: ignore[attr-defined]
        return x_hat[0] if single else x_hat

    def describe(self) -> dict[str, Any]:
        """What runs (engine, device, precision, files) and why it was chosen."""
        d = self.engine.describe()
        d.setdefault("provider", self.provider)
        d.update({"backend": self.engine.label, "precision": self.precision, "files": self.files,
                  "max_batch": self.max_batch, "why": self.choice_reason})
        return d

    def close(self) -> None:
        self.engine.close()


def _choose_auto(folder: Path, manifest: dict[str, Any], engine: str, precision: str, kwargs: dict[str, Any],
                 **how: Any) -> tuple[str, str, str]:
    """Resolve ``auto`` (tuning file, re-checked; see ``engines.tune.choose``); sets the provider
    (CPU: what was tuned) and lets bf16 load (the tuner only measures it where it is native)."""
    from vae_deploy.runtime.engines.tune import choose

    provider = kwargs.get("provider", "auto")
    if provider not in ("auto", "cpu"):
        raise ConfigError(f"engine/precision 'auto' tunes and loads CPU engines; provider {provider!r} was asked "
                          "for: pick engine and precision explicitly for it")
    pick = choose(folder, manifest, engine=engine, precision=precision, threads=kwargs.get("threads"),
                  open_runtime=Runtime.load, **how)
    kwargs["provider"] = "cpu"
    kwargs["force_bf16"] = True
    return pick["engine"], pick["precision"], pick["reason"]


def spec_from_session(sess: Any) -> ExportSpec:
    """Rebuild the spec from a graph's metadata alone (how a C++ consumer does it)."""
    meta = sess.get_modelmeta().custom_metadata_map
    try:
        return ExportSpec(
            input_shape=parse_shape(meta[f"{META_PREFIX}input_shape"]),
            latent_shape=parse_shape(meta[f"{META_PREFIX}latent_shape"]),
            likelihood=meta.get(f"{META_PREFIX}likelihood", "bernoulli"),
            family=meta.get(f"{META_PREFIX}family", ""),
            scaling_factor=float(meta.get(f"{META_PREFIX}scaling_factor", "1.0")),
            shift_factor=float(meta.get(f"{META_PREFIX}shift_factor", "0.0")),
            dynamic_axes=tuple(meta.get(f"{META_PREFIX}dynamic_axes", "batch").split(",")),
            example_input_shape=parse_shape(meta.get(f"{META_PREFIX}example_input_shape", "")),
            example_latent_shape=parse_shape(meta.get(f"{META_PREFIX}example_latent_shape", "")),
            source_sha256=meta.get(f"{META_PREFIX}source_sha256", ""),
            latents_mean=_floats(meta.get(f"{META_PREFIX}latents_mean", "")),
            latents_std=_floats(meta.get(f"{META_PREFIX}latents_std", "")),
            latent_layouts=tuple(v for v in meta.get(f"{META_PREFIX}latent_layouts", "").split(",") if v),
            output_range=_floats(meta.get(f"{META_PREFIX}output_range", "")),
            posterior=meta.get(f"{META_PREFIX}posterior", "gaussian"),
        )
    except KeyError as e:
        raise ArtifactError(f"ONNX model lacks the vae-deploy metadata key {e.args[0]!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())
