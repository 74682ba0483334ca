"""The backend interface every way of running a VAE shares: numpy in, numpy out.

``Backend`` owns what must behave identically everywhere (input validation with clear
errors, casting, chunking by ``max_batch``, host-side noise for sampling and the
reparameterisation); subclasses only run one chunk. ``Runtime`` (onnxruntime) is one;
``TorchBackend`` runs eager modules or TorchScript files for parity and benchmarks.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.artifacts import ExportSpec
from vae_deploy.errors import InputError
from vae_deploy.runtime.latents import SCALES, from_spatial, image_ratio, scale_posterior, to_spatial, unscale
from vae_deploy.runtime.latents import check_choice as check_latents
from vae_deploy.runtime.tiling import check_tile, spatial_ratio, tiled

#: ``latents=`` of encode/decode: the VAE's own latents, or a diffusion pipeline's scaled ones.
LATENT_SCALES = SCALES


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join("?" if s < 0 else str(s) for s in shape) + "]"


class Backend:
    """Base: validation, chunking, sampling. Subclasses implement ``_encode`` / ``_decode``."""

    name = "backend"

    def __init__(self, spec: ExportSpec, *, max_batch: int = 1024, check_finite: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.spec = spec
        self.input_shape: tuple[int, ...] = tuple(spec.input_shape)
        self.latent_shape: tuple[int, ...] = tuple(spec.latent_shape)
        self.max_batch = max_batch
        self.check_finite = check_finite
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()

    def __repr__(self) -> str:
        """e.g. ``<Runtime ort-cpu fp32: x [?, 1, 8, 8] -> z [?, 8], bernoulli, max_batch 1024>``."""
        precision = getattr(self, "precision", None)
        return (f"<{type(self).__name__} {self.name}{f' {precision}' if precision else ''}: "
                f"x {_fmt((-1, *self.input_shape))} -> z {_fmt((-1, *self.latent_shape))}, "
                f"{self.spec.likelihood}, max_batch {self.max_batch}>")

    # --- what subclasses provide: one chunk of at most max_batch, validated float32 -------
    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _decode(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- public API ----------------------------------------------------------------------
    def encode(self, x: Any, *, tile: int | None = None, latents: str = "raw",
               latent_layout: str = "spatial") -> tuple[np.ndarray, np.ndarray]:
        """x ``[N, *input_shape]`` (or one example) -> (mu, logvar) ``[N, *latent_shape]``.

        ``tile``: encode in overlapping image tiles of this size (diffusers' ``tiled_encode``
        with ``tile_sample_min_size=tile``; a multiple of 4x the image/latent ratio), so memory
        follows the tile, not the image. ``latents="scaled"``: return the posterior of
        ``(z - shift_factor) * scaling_factor``, the latents a diffusion pipeline works with (or the
        pipeline's own normalisation: see :mod:`vae_deploy.runtime.latents`). ``latent_layout``: return them
        packed as a pipeline does (``"flux-packed"``, ``"flux2-packed"``, ``"flux2-patchified"``)."""
        if latents != "raw" or latent_layout != "spatial":
            check_latents(self.spec, latents, latent_layout)
        x, single = self._prepare(x, self.input_shape, "x")
        if tile is not None:
            ratio = spatial_ratio(self.spec)
            ok = isinstance(tile, (int, np.integer)) and not isinstance(tile, bool) and tile > 0
            if not ok or tile % (4 * ratio):
                raise InputError(f"tile is in image pixels here: a positive multiple of {4 * ratio} (4 x the "
                                 f"image/latent ratio {ratio}), got {tile!r}")
            mu, logvar = tiled(lambda c: self._chunked(self._encode, c, 2), x, int(tile), 1 / ratio, 2)
        elif 0 < x.shape[0] <= self.max_batch:  # one chunk: skip the chunking machinery
            mu, logvar = self._encode(x)
        else:
            mu, logvar = self._chunked(self._encode, x, 2)
        if latents != "raw":
            mu, logvar = scale_posterior(mu, logvar, self.spec)
        if latent_layout != "spatial":
            mu, logvar = from_spatial(mu, latent_layout), from_spatial(logvar, latent_layout)
        return (mu[0], logvar[0]) if single else (mu, logvar)

    def decode(self, z: Any, *, tile: int | None = None, latents: str = "raw", output: str = "float",
               latent_layout: str = "spatial", image_size: Sequence[int] | None = None) -> Any:
        """z ``[N, *latent_shape]`` (or one latent) -> x_hat ``[N, *input_shape]``.

        ``tile``: decode in overlapping latent tiles of this size (diffusers' ``tiled_decode``
        with ``tile_latent_min_size=tile``; a multiple of 4). ``latents="scaled"``: ``z`` is a
        diffusion pipeline's latent, ``(z_vae - shift_factor) * scaling_factor``; it is
        unscaled as the matching diffusers pipeline does (``scaling_factor``, ``shift_factor``,
        ``latents_mean``/``latents_std`` or FLUX.2's BatchNorm statistics, recorded at export).
        ``latent_layout``: ``z`` as the pipeline hands it out (``"flux-packed"`` ``[N, tokens, 4C]``
        for FLUX.1, ``"flux2-packed"``/``"flux2-patchified"`` for FLUX.2; see
        :mod:`vae_deploy.runtime.latents`), with ``image_size=(H, W)`` in pixels for packed latents that
        are not square.

        ``output``: "float" (the decoder's output), "uint8" (images ``[N, H, W, C]``) or "pil" (a
        list of PIL images), converted from the export's output range as diffusers'
        ``VaeImageProcessor.postprocess`` does (:func:`vae_deploy.images.to_uint8`)."""
        rng = self._image_range(output) if output != "float" else None  # before any work
        if latents != "raw" or latent_layout != "spatial":
            z = self._to_vae_latents(z, latents, latent_layout, image_size)
        z, single = self._prepare(z, self.latent_shape, "z")
        if tile is not None:
            (x_hat,) = tiled(self._decode_chunks, z, check_tile(tile, "tile"), spatial_ratio(self.spec), 1)
        elif 0 < z.shape[0] <= self.max_batch:
            x_hat = self._decode(z)
        else:
            (x_hat,) = self._chunked(lambda c: (self._decode(c),), z, 1)
        if rng is not None:
            from vae_deploy.images import convert_output

            images = convert_output(x_hat, output, rng)
            return images[0] if single else images
        return x_hat[0] if single else x_hat

    def _image_range(self, output: str) -> tuple[float, float]:
        """The range images out map to 0..255; an older export's assumed range is said once."""
        from vae_deploy.images import check_output, resolve_output_range

        check_output(output)
        rng, how = resolve_output_range(self.spec)
        if rng is None:
            raise InputError(f"output={output!r}: {how}; decode with output='float' and convert it yourself")
        if how != "declared by the export" and not getattr(self, "_range_noted", False):
            warnings.warn(how, stacklevel=3)
            self._range_noted = True
        return rng

    def _decode_chunks(self, z: np.ndarray) -> list[np.ndarray]:
        return self._chunked(lambda c: (self._decode(c),), z, 1)

    def _to_vae_latents(self, z: Any, latents: str, layout: str, image_size: Sequence[int] | None) -> Any:
        """A pipeline's latents (``latents``, ``layout``) -> the VAE's raw spatial ones."""
        check_latents(self.spec, latents, layout)
        z, single = to_spatial(z, self.spec, layout, image_size=image_size, ratio=image_ratio(self.spec))
        if layout in ("flux2-packed", "flux2-patchified"):  # patch space: validated after un-patchifying
            z = unscale(z, self.spec, latents, layout)
            return z[0] if single else z
        z, was_single = self._prepare(z, self.latent_shape, "z")
        z = unscale(z, self.spec, latents, layout)
        return z[0] if (single or was_single) else z

    def sample(self, n: int, seed: int | None = None, latent_shape: Sequence[int] | None = None, *,
               tile: int | None = None) -> np.ndarray:
        """Draw ``n`` samples: z ~ N(0, I) in the host (seeded: reproducible), then decode.

        With a dynamic latent (a spatial VAE's ``[C, -1, -1]``) the size of z decides the size
        of the samples: ``latent_shape`` picks it (e.g. ``(4, 24, 24)``), by default the
        example latent shape recorded at export. ``tile``: decode tiled (see :meth:`decode`).
        """
        z = self.noise((n, *self.sample_latent_shape(latent_shape)), seed)
        if tile is not None:
            return self.decode(z, tile=tile)
        if 0 < n <= self.max_batch:
            return self._decode(z)
        (x_hat,) = self._chunked(lambda c: (self._decode(c),), z, 1)
        return x_hat

    def sample_latent_shape(self, latent_shape: Sequence[int] | None = None) -> tuple[int, ...]:
        """A concrete per-example latent shape that fits the contract's (possibly dynamic) one."""
        if latent_shape is None:
            shape = tuple(self.spec.concrete_latent_shape)
            if any(d < 0 for d in shape):
                raise InputError(f"the latent shape {_fmt(self.latent_shape)} has dynamic axes and the export "
                                 "records no example latent shape; pass latent_shape=")
            return shape
        shape = tuple(int(d) for d in latent_shape)
        if not (_matches(shape, self.latent_shape) and all(d > 0 for d in shape)):
            raise InputError(f"latent_shape must fit {_fmt(self.latent_shape)} with positive sizes, got {list(shape)}")
        return shape

    def reconstruct(self, x: Any, sample: bool = False, seed: int | None = None, *,
                    tile: int | None = None) -> np.ndarray:
        """Decode the posterior mean (default) or a reparameterised posterior sample.

        ``tile``: the latent tile size; the image is encoded in tiles of ``tile`` times the
        image/latent ratio and decoded in latent tiles of ``tile`` (see :meth:`decode`)."""
        x, single = self._prepare(x, self.input_shape, "x")
        if tile is not None:
            check_tile(tile, "tile")
            mu, logvar = self.encode(x, tile=tile * spatial_ratio(self.spec))
        else:
            mu, logvar = self._chunked(self._encode, x, 2)
        z = mu
        if sample and self.spec.posterior != "deterministic":  # a point posterior: its sample is mu
            z = (mu + np.exp(0.5 * logvar) * self.noise(mu.shape, seed)).astype(np.float32)
        if tile is not None:
            x_hat = self.decode(z, tile=tile)
        else:
            (x_hat,) = self._chunked(lambda c: (self._decode(c),), z, 1)
        return x_hat[0] if single else x_hat

    def noise(self, shape: Sequence[int], seed: int | None = None) -> np.ndarray:
        """Standard normal float32 noise, drawn directly in float32 (no float64 detour)."""
        n = shape[0] if shape else 0
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise InputError(f"n must be a non-negative integer, got {n!r}")
        if seed is not None:
            return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)
        with self._rng_lock:
            return self._rng.standard_normal(tuple(shape), dtype=np.float32)

    # --- helpers -------------------------------------------------------------------------
    def _chunked(self, fn, a: np.ndarray, n_out: int) -> list[np.ndarray]:
        n = a.shape[0]
        if 0 < n <= self.max_batch:
            return list(fn(a))
        if n == 0:
            return list(self._empty_outputs(fn, a, n_out))
        outs: list[np.ndarray] | None = None
        for start in range(0, n, self.max_batch):
            res = fn(a[start : start + self.max_batch])
            if outs is None:
                outs = [np.empty((n, *r.shape[1:]), dtype=r.dtype) for r in res]
            for o, r in zip(outs, res):
                o[start : start + r.shape[0]] = r
        assert outs is not None
        return outs

    def _empty_outputs(self, fn, a: np.ndarray, n_out: int) -> list[np.ndarray]:
        # Run one dummy row to learn the output shapes (they may depend on dynamic axes).
        res = fn(np.zeros((1, *a.shape[1:]), dtype=np.float32))
        return [np.empty((0, *r.shape[1:]), dtype=r.dtype) for r in res]

    def _prepare(self, a: Any, item_shape: tuple[int, ...], name: str) -> tuple[np.ndarray, bool]:
        """Validate and convert; returns (float32 C-contiguous batch, was-a-single-example)."""
        if (
            type(a) is np.ndarray
            and a.dtype == np.float32
            and a.ndim == len(item_shape) + 1
            and a.shape[1:] == item_shape
            and a.flags.c_contiguous
        ):
            if self.check_finite and not _all_finite(a):
                self._raise_not_finite(a, name)
            return a, False
        return self._prepare_slow(a, item_shape, name)

    def _prepare_slow(self, a: Any, item_shape: tuple[int, ...], name: str) -> tuple[np.ndarray, bool]:
        try:
            arr = np.asarray(a)
        except Exception as e:
            raise InputError(f"{name}: expected a numeric array, got {type(a).__name__} ({e})") from None
        if arr.dtype.kind not in "fiu" or arr.dtype.kind == "c":
            raise InputError(
                f"{name}: expected a real numeric array (float32 preferred; float16/float64/int are cast to "
                f"float32), got dtype {arr.dtype}"
            )
        expected = f"[N, {_fmt(item_shape)[1:-1]}]"
        single = arr.ndim == len(item_shape) and _matches(arr.shape, item_shape)
        if single:
            arr = arr[None]
        elif not (arr.ndim == len(item_shape) + 1 and _matches(arr.shape[1:], item_shape)):
            raise InputError(
                f"{name}: expected shape {expected} (or {_fmt(item_shape)} for one example), got {list(arr.shape)}"
            )
        # The cast is float32's round-to-nearest; float64 values beyond float32's range become inf
        # and are caught by the finiteness check below.
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        if self.check_finite and not np.isfinite(arr).all():
            self._raise_not_finite(arr, name)
        return arr, single

    @staticmethod
    def _raise_not_finite(a: np.ndarray, name: str) -> None:
        bad = ~np.isfinite(a)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{name}: expected finite values, got {int(bad.sum())} NaN/Inf (first at index {first}, shape "
            f"{list(a.shape)}); pass check_finite=False to skip this check"
        )

    def close(self) -> None:  # pragma: no cover - nothing to release by default
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Up to this many elements the finiteness check is one dot product: a single-threaded BLAS call
# (OpenBLAS threads dot products only above ~10k elements), much cheaper than isfinite + all.
_DOT_CHECK_MAX = 8192
# 2**-64: x * 2**-64 for any finite float32 x is below 2**64 and a sum of 8192 such terms below
# 2**77, so the dot product never overflows: a non-finite result means a non-finite element.
_DOT_WEIGHTS = np.full(_DOT_CHECK_MAX, 2.0**-64, dtype=np.float32)


def _all_finite(a: np.ndarray) -> bool:
    """``np.isfinite(a).all()`` for a C-contiguous float32 array, cheaper on small ones.

    ``sum(a * 2**-64)`` (one BLAS dot product) is NaN or Inf exactly when an element is: it
    cannot overflow (see ``_DOT_WEIGHTS``) and a NaN or an Inf survives the sum (Inf - Inf is
    NaN). A non-finite or failed dot product hands over to the exact check, so the answer is
    always isfinite's. Between two onnxruntime runs this costs ~4 us where isfinite + all costs
    ~7.5 us (two ufunc dispatches). Side effects differ only in warnings: an input holding both
    +Inf and -Inf also triggers numpy's "invalid value encountered in dot" RuntimeWarning (the
    request is rejected with the same ValueError), and under ``np.seterr(under="warn")`` tiny
    values may warn about underflow (``"raise"`` is caught and falls back to the exact check).
    """
    n = a.size
    if n <= _DOT_CHECK_MAX:
        try:
            if math.isfinite(a.reshape(-1).dot(_DOT_WEIGHTS[:n])):
                return True
        except FloatingPointError:
            pass
    return bool(np.isfinite(a).all())


def _matches(shape: Sequence[int], item_shape: Sequence[int]) -> bool:
    return len(shape) == len(item_shape) and all(e < 0 or s == e for s, e in zip(shape, item_shape))


class TorchBackend(Backend):
    """Eager torch modules or TorchScript files behind the same API (parity, benchmarks)."""

    def __init__(self, encoder, decoder, spec: ExportSpec, *, name: str = "torch", threads: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        import torch

        self._torch = torch
        self.encoder = encoder.eval() if hasattr(encoder, "eval") else encoder
        self.decoder = decoder.eval() if hasattr(decoder, "eval") else decoder
        self.name = name
        if threads:
            torch.set_num_threads(threads)

    @classmethod
    def from_torchscript(cls, folder: str | Path, **kwargs: Any) -> TorchBackend:
        import torch

        from vae_deploy.artifacts import load_manifest, spec_from_manifest

        folder = Path(folder)
        manifest = load_manifest(folder, only=["encoder.ts", "decoder.ts"])
        enc = torch.jit.load(str(folder / "encoder.ts"), map_location="cpu")
        dec = torch.jit.load(str(folder / "decoder.ts"), map_location="cpu")
        return cls(enc, dec, spec_from_manifest(manifest), name="torchscript", **kwargs)

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.inference_mode():
            mu, logvar = self.encoder(self._torch.from_numpy(x))
        return mu.numpy(), logvar.numpy()

    def _decode(self, z: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.decoder(self._torch.from_numpy(z)).numpy()
