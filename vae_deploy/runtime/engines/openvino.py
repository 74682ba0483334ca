"""The OpenVINO engine: the export's own ONNX files, compiled for a device at f32 or bf16.

No new artifact: OpenVINO reads ``decoder.onnx`` itself, and the precision is its
``INFERENCE_PRECISION_HINT`` (bf16 runs on AVX512-BF16/AMX where the CPU has them). Compiled
models can be cached (``CACHE_DIR``: OpenVINO keys the blobs by model, config and version). An
``InferRequest`` is not thread-safe, so each thread gets its own.

``static_shapes``: a graph with dynamic axes is also compiled static for each input shape it
meets (the dynamic model reshaped to it; at most ``MAX_STATIC`` shapes, least recently used
dropped): oneDNN then picks kernels and memory layouts for known sizes (bench/README.md, "Past
the fp32 limit": measured per CPU class). The first call at a new shape pays the compilation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import ArtifactError, EngineError
from vae_deploy.runtime.engines.base import Engine

INSTALL_HINT = "pip install 'vae-deploy[openvino]'"
MAX_STATIC = 4
HINTS = {"fp32": "f32", "fp32-fast": "f32", "int8": "f32", "fp16": "f32", "bf16": "bf16", "fp32-winograd": "f32"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise EngineError(f"engine 'openvino' needs the OpenVINO runtime, which is not installed ({e}); "
                          f"install it with: {INSTALL_HINT}") from None
    return openvino


def version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, encoder_path: Path, decoder_path: Path, *, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None, cache_dir: str | Path | None = None, static_shapes: bool = False) -> None:
        if precision not in HINTS:
            raise EngineError(f"engine 'openvino' runs precisions {list(HINTS)}, got {precision!r}")
        ov = import_openvino()
        self._core = ov.Core()
        ov_device = device.upper()
        if ov_device not in self._core.available_devices:
            raise EngineError(f"OpenVINO device {device!r} is not available here (OpenVINO {ov.__version__} "
                              f"sees {self._core.available_devices})")
        self.device = device.lower()
        self.precision = precision
        self.threads = threads
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                                       "NUM_STREAMS": 1}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if self.cache_dir:
            Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
            self.config["CACHE_DIR"] = self.cache_dir
        self.encoder_model = self._compile(Path(encoder_path), ov_device)
        self.decoder_model = self._compile(Path(decoder_path), ov_device)
        self.version = ov.__version__
        self._local = threading.local()
        self._ov_device = ov_device
        self._paths = {"encoder": Path(encoder_path), "decoder": Path(decoder_path)}
        self.static_shapes = static_shapes
        self._static: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()
        self._static_lock = threading.Lock()

    def _compile(self, path: Path, device: str) -> Any:
        if not path.is_file():
            raise ArtifactError(f"ONNX file {str(path)!r} does not exist")
        try:
            return self._core.compile_model(str(path), device, self.config)
        except Exception as e:
            raise ArtifactError(f"OpenVINO could not compile {str(path)!r} for {device}: {e}") from None

    def _requests(self) -> tuple[Any, Any]:
        reqs = getattr(self._local, "reqs", None)
        if reqs is None:
            reqs = self._local.reqs = (self.encoder_model.create_infer_request(),
                                       self.decoder_model.create_infer_request())
        return reqs

    def declared_input(self, role: str) -> tuple[Any, ...]:
        model = self.encoder_model if role == "encoder" else self.decoder_model
        dims = model.input(0).get_partial_shape()
        return tuple(d.get_length() if d.is_static else None for d in list(dims)[1:])

    def _static_request(self, role: str, shape: tuple[int, ...]) -> Any | None:
        """This thread's request on the graph compiled static for ``shape`` (None when the
        graph is static already or static shapes are off)."""
        model = self.encoder_model if role == "encoder" else self.decoder_model
        if not self.static_shapes or model.input(0).get_partial_shape().is_static:
            return None
        key = (role, shape)
        with self._static_lock:
            compiled = self._static.get(key)
            if compiled is None:
                ov_model = self._core.read_model(str(self._paths[role]))
                ov_model.reshape({ov_model.input(0).get_any_name(): list(shape)})
                compiled = self._core.compile_model(ov_model, self._ov_device, self.config)
                self._static[key] = compiled
                while len(self._static) > MAX_STATIC:
                    self._static.popitem(last=False)
            self._static.move_to_end(key)
        reqs = getattr(self._local, "static", None)
        if reqs is None:
            reqs = self._local.static = {}
        req = reqs.get(key)
        if req is None or req[0] is not compiled:
            req = reqs[key] = (compiled, compiled.create_infer_request())
        return req[1]

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        req = self._static_request("encoder", tuple(x.shape)) or self._requests()[0]
        res = req.infer({0: x}, share_inputs=True)
        mu, logvar = res.to_tuple()[:2]
        return mu, logvar

    def decode(self, z: np.ndarray) -> np.ndarray:
        req = self._static_request("decoder", tuple(z.shape)) or self._requests()[1]
        return req.infer({0: z}, share_inputs=True).to_tuple()[0]

    def describe(self) -> dict[str, Any]:
        actual = self.decoder_model.get_property("INFERENCE_PRECISION_HINT")
        return {
            "engine": self.name,
            "device": self.device,
            "precision": self.precision,
            "inference_precision": str(actual),
            "threads": self.threads or "OpenVINO default",
            "cache_dir": self.cache_dir,
            "static_shapes": self.static_shapes,
            "version": self.version,
        }
