"""``vae_sampler``: a Triton Python-backend model that samples the VAE's prior.

Copied verbatim to ``<repo>/vae_sampler/1/model.py`` by ``vae_deploy.serving.triton``; it runs
inside Triton's Python backend (``triton_python_backend_utils`` exists only there) and
needs nothing but numpy. One request carries ``n`` and an optional ``seed``; the model
draws z ~ N(0, I) exactly as ``vae_deploy.Runtime.sample`` does (same seed, same samples)
and decodes it through BLS calls to the decoder model, at most ``decoder_max_batch`` rows
each, so the decoder's dynamic batcher also gathers concurrent samplers' chunks.
Everything it needs to know comes from its config's ``parameters``.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def draw_latents(n: int, latent_shape: tuple[int, ...], seed: int | None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """z ~ N(0, I) of shape [n, *latent_shape], float32, drawn as the Runtime draws it."""
    gen = np.random.default_rng(seed) if seed is not None or rng is None else rng
    return gen.standard_normal((n, *latent_shape), dtype=np.float32)


def _error(message: str, invalid: bool) -> object:
    """A TritonError with code INVALID_ARG for a bad request (Triton >= 23.03 takes a code;
    older ones answer INTERNAL with the same one-line message)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid else None
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize once, execute per batch of requests."""

    def initialize(self, args: dict) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        p = {k: v["string_value"] for k, v in params.items()}
        self.decoder = p["decoder_model"]
        self.z_name = p["decoder_input"]
        self.out_name = p["decoder_output"]
        self.latent_shape = tuple(int(s) for s in p["latent_shape"].split(","))
        self.chunk = int(p["decoder_max_batch"])
        self.max_samples = int(p["max_samples"])
        self.rng = np.random.default_rng()  # unseeded requests: fresh entropy per instance

    def execute(self, requests: list) -> list:
        return [self._one(r) for r in requests]

    def _one(self, request) -> object:
        try:
            n, seed = self._read(request)
        except ValueError as e:  # the client's mistake: HTTP 400 / gRPC INVALID_ARGUMENT, one line
            return pb_utils.InferenceResponse(output_tensors=[], error=_error(str(e), invalid=True))
        try:
            x_hat = self._decode(draw_latents(n, self.latent_shape, seed, self.rng))
        except (ValueError, RuntimeError) as e:
            return pb_utils.InferenceResponse(output_tensors=[], error=_error(str(e), invalid=False))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.out_name, x_hat)])

    def _read(self, request) -> tuple[int, int | None]:
        n = pb_utils.get_input_tensor_by_name(request, "n").as_numpy().reshape(-1)
        if n.size != 1 or not 1 <= int(n[0]) <= self.max_samples:
            raise ValueError(f"n must be one integer in [1, {self.max_samples}], got {n.tolist()}")
        seed_t = pb_utils.get_input_tensor_by_name(request, "seed")
        if seed_t is None:
            return int(n[0]), None
        seed = seed_t.as_numpy().reshape(-1)
        if seed.size != 1 or int(seed[0]) < 0:
            raise ValueError(f"seed must be one non-negative integer, got {seed.tolist()}")
        return int(n[0]), int(seed[0])

    def _decode(self, z: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, z.shape[0], self.chunk):
            response = pb_utils.InferenceRequest(
                model_name=self.decoder,
                requested_output_names=[self.out_name],
                inputs=[pb_utils.Tensor(self.z_name, z[start:start + self.chunk])],
                # A decoder on the GPU answers in device memory; as_numpy() needs host memory.
                preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
            ).exec()
            if response.has_error():
                raise RuntimeError(f"{self.decoder} failed: {response.error().message()}")
            parts.append(pb_utils.get_output_tensor_by_name(response, self.out_name).as_numpy())
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
