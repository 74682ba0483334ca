"""What a user would try instead of vae-deploy, timed beside it: torch eager with bf16 autocast
and ``torch.compile`` of the same eager modules (where it compiles on this machine)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vae_deploy.runtime.backends import TorchBackend

EAGER_BF16 = "eager-bf16"
TORCH_COMPILE = "torch-compile"
ORT_PLAIN = "ort-plain"
PEERS = (EAGER_BF16, TORCH_COMPILE, ORT_PLAIN)


class PlainOrtSession:
    """What HF Optimum's ``ORTModel`` does on a CPU: ``InferenceSession(path)`` with onnxruntime's
    default session options and provider, on the export's fp32 files, nothing tuned."""

    def __init__(self, folder: Any, latent_shape: tuple[int, ...], name: str = ORT_PLAIN) -> None:
        import onnxruntime as ort

        self.name = name
        self.enc = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
        self.latent_shape = tuple(latent_shape)
        self.rng = np.random.default_rng()

    def sample(self, n: int, latent_shape: Any = None) -> np.ndarray:
        z = self.rng.standard_normal((n, *(latent_shape or self.latent_shape)), dtype=np.float32)
        return self.decode(z)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.dec.run(None, {self.dec.get_inputs()[0].name: z})[0]

    def encode(self, x: np.ndarray) -> list[np.ndarray]:
        return self.enc.run(None, {self.enc.get_inputs()[0].name: x})

    def close(self) -> None:
        pass


class AutocastBackend(TorchBackend):
    """Eager torch under ``torch.autocast("cpu", dtype=torch.bfloat16)``; outputs back to float32."""

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self._torch
        with t.inference_mode(), t.autocast("cpu", dtype=t.bfloat16):
            mu, logvar = self.encoder(t.from_numpy(x))
        return mu.float().numpy(), logvar.float().numpy()

    def _decode(self, z: np.ndarray) -> np.ndarray:
        t = self._torch
        with t.inference_mode(), t.autocast("cpu", dtype=t.bfloat16):
            return self.decoder(t.from_numpy(z)).float().numpy()


def compiled_backend(encoder: Any, decoder: Any, spec: Any, **kwargs: Any) -> TorchBackend:
    """``torch.compile`` (inductor) of both halves; compilation happens at the first call, so the
    harness's cold call pays it and a failure there skips the row with the compiler's message.
    ``dynamic=True``: one compilation per half serves every batch size (static shapes would
    recompile for each, minutes per model on 2 cores)."""
    import torch

    return TorchBackend(torch.compile(encoder, dynamic=True), torch.compile(decoder, dynamic=True), spec,
                        name=TORCH_COMPILE, **kwargs)


def compile_unavailable_reason() -> str | None:
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        return "torch.compile (inductor) needs a C/C++ compiler on the CPU, and none is on PATH"
    return None
