"""A diffusion pipeline's latents <-> the VAE's own, exactly as diffusers' pipelines convert them.

Two independent things differ between what a pipeline hands out (``output_type="latent"``) and
what ``vae.decode`` takes:

- the **normalisation** (``latents="scaled"``), recorded at export from the VAE:

  ============================  ===========================================  ====================
  VAE declares                  pipeline latent -> VAE latent                pipelines
  ============================  ===========================================  ====================
  nothing extra                 ``z / scaling_factor + shift_factor``        SD 1.x/2.x, SD3, FLUX.1
  ``latents_mean/std`` (C)      ``z * std / scaling_factor + mean``          SDXL family, Wan, Qwen-Image
  BatchNorm statistics (4C)     ``unpatchify(z * sqrt(var + eps) + mean)``   FLUX.2
  ============================  ===========================================  ====================

  (FLUX.2's statistics live on the 2x2-patchified latent, so they have four times as many
  channels; they are recorded as ``latents_mean`` / ``latents_std = sqrt(running_var + eps)``.)
- the **layout** (``latent_layout=``): ``"spatial"`` ``[N, C, h, w]`` (the VAE's own);
  ``"flux-packed"`` ``[N, h/2 * w/2, 4C]`` (FLUX.1's ``_pack_latents``); ``"flux2-packed"``
  ``[N, h/2 * w/2, 4C]`` (FLUX.2's patchify then ``_pack_latents``: another channel order) and
  ``"flux2-patchified"`` ``[N, 4C, h/2, w/2]``. A packed sequence does not say its height and
  width: ``image_size=(H, W)`` in pixels gives them as the pipeline does, else it must be square.

numpy only: ``Runtime`` uses this without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vae_deploy.artifacts import ExportSpec
from vae_deploy.errors import ArtifactError, InputError

SCALES = ("raw", "scaled")
LAYOUTS = ("spatial", "flux-packed", "flux2-packed", "flux2-patchified")
_PACKED = ("flux-packed", "flux2-packed")


def norm_space(spec: ExportSpec) -> str:
    """Where the recorded statistics apply: ``"none"`` (scale and shift only), ``"channel"``
    (one per latent channel, SDXL/Wan) or ``"patch"`` (one per channel of the 2x2-patchified
    latent, FLUX.2). An export whose statistics fit neither is refused."""
    mean, std = tuple(spec.latents_mean), tuple(spec.latents_std)
    if not mean and not std:
        return "none"
    channels = spec.latent_shape[0] if spec.latent_shape else -1
    if len(mean) != len(std) or channels < 1:
        raise ArtifactError(f"latents_mean ({len(mean)} values) and latents_std ({len(std)}) must both have one "
                            f"value per latent channel; the latent is {list(spec.latent_shape)}")
    if not all(math.isfinite(s) and s > 0 for s in std) or not all(math.isfinite(m) for m in mean):
        raise ArtifactError("latents_std must be positive and finite, latents_mean finite")
    if len(mean) == channels:
        return "channel"
    if len(mean) == 4 * channels and len(spec.latent_shape) == 3:
        return "patch"
    raise ArtifactError(f"latents_mean/latents_std have {len(mean)} values; the latent {list(spec.latent_shape)} "
                        f"needs {channels} (one per channel) or {4 * channels} (per 2x2-patch channel, FLUX.2)")


def accepted_layouts(spec: ExportSpec) -> tuple[str, ...]:
    """The layouts this export takes: recorded at export, else derived from the latent's rank
    and statistics (older exports)."""
    recorded = tuple(getattr(spec, "latent_layouts", ()) or ())
    if recorded:
        return recorded
    if len(spec.latent_shape) != 3:
        return ("spatial",)
    if norm_space(spec) == "patch":
        return ("spatial", "flux2-packed", "flux2-patchified")
    return ("spatial", "flux-packed")


def check_choice(spec: ExportSpec, latents: str, layout: str) -> None:
    """One line naming what exists when ``latents`` or ``layout`` does not fit this export."""
    if latents not in SCALES:
        raise InputError(f"latents must be one of {SCALES}, got {latents!r}")
    ok = accepted_layouts(spec)
    if layout not in ok:
        known = "" if layout in LAYOUTS else f" (layouts that exist: {', '.join(LAYOUTS)})"
        raise InputError(f"latent_layout {layout!r} does not fit this export ({spec.family}, latent "
                         f"{list(spec.latent_shape)}): it accepts {', '.join(ok)}{known}")


def layout_item_shape(spec: ExportSpec, layout: str) -> tuple[int, ...]:
    """One example's shape in ``layout`` (-1: any size): what a stored row must look like."""
    if layout == "spatial":
        return tuple(spec.latent_shape)
    c4 = 4 * spec.latent_shape[0]
    return (-1, c4) if layout in _PACKED else (c4, -1, -1)


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``"HxW"`` (pixels, as given to the pipeline) -> (H, W); one line naming the format otherwise."""
    if text is None:
        return None
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise InputError(f"image size must be HxW in pixels (e.g. 1024x768), got {text!r}")
    return int(h), int(w)


# --- arrangement ------------------------------------------------------------------------------
def flux_pack(z: np.ndarray) -> np.ndarray:
    """[N, C, h, w] -> [N, h/2 * w/2, 4C], FLUX.1's ``_pack_latents``."""
    n, c, h, w = z.shape
    return z.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def flux_unpack(z: np.ndarray, h: int, w: int) -> np.ndarray:
    """FLUX.1's ``_unpack_latents``: [N, h/2 * w/2, 4C] -> [N, C, h, w]."""
    n, _, c4 = z.shape
    return z.reshape(n, h // 2, w // 2, c4 // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(n, c4 // 4, h, w)


def patchify(z: np.ndarray) -> np.ndarray:
    """FLUX.2's ``_patchify_latents``: [N, C, h, w] -> [N, 4C, h/2, w/2]."""
    n, c, h, w = z.shape
    return z.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)


def unpatchify(z: np.ndarray) -> np.ndarray:
    """FLUX.2's ``_unpatchify_latents``: [N, 4C, h, w] -> [N, C, 2h, 2w]."""
    n, c4, h, w = z.shape
    return z.reshape(n, c4 // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, h * 2, w * 2)


def flux2_pack(zp: np.ndarray) -> np.ndarray:
    """FLUX.2's ``_pack_latents`` of a patchified latent: [N, 4C, h, w] -> [N, h*w, 4C]."""
    n, c4, h, w = zp.shape
    return zp.reshape(n, c4, h * w).transpose(0, 2, 1)


def _packed_hw(tokens: int, image_size: Sequence[int] | None, ratio: int | None) -> tuple[int, int]:
    """The (unpacked, un-patchified) latent's height and width, as the pipelines compute them:
    ``2 * (H // (vae_scale_factor * 2))``; a square when no image size is given."""
    if image_size is not None:
        if ratio is None:
            raise InputError("image_size= needs an export with a known image/latent ratio (dynamic height and width)")
        hh, ww = (int(v) for v in image_size)
        h, w = 2 * (hh // (ratio * 2)), 2 * (ww // (ratio * 2))
        if (h // 2) * (w // 2) != tokens or h < 2 or w < 2:
            raise InputError(f"image_size {hh}x{ww} means {h // 2}x{w // 2} packed tokens, but the latents hold "
                             f"{tokens}")
        return h, w
    side = math.isqrt(tokens)
    if side * side != tokens or side < 1:
        raise InputError(f"packed latents of {tokens} tokens are not square: pass image_size=(H, W) (pixels) "
                         "as given to the pipeline")
    return 2 * side, 2 * side


def _as_batch(z: Any, ndim: int, what: str) -> tuple[np.ndarray, bool]:
    try:
        a = np.asarray(z)
    except Exception as e:
        raise InputError(f"z: expected a numeric array, got {type(z).__name__} ({e})") from None
    if a.dtype.kind not in "fiu":
        raise InputError(f"z: expected a real numeric array, got dtype {a.dtype}")
    if a.ndim == ndim - 1:
        return np.ascontiguousarray(a[None], dtype=np.float32), True
    if a.ndim != ndim:
        raise InputError(f"z: the {what} layout is {ndim}-D, got shape {list(a.shape)}")
    return np.ascontiguousarray(a, dtype=np.float32), False


def to_spatial(z: Any, spec: ExportSpec, layout: str, *, image_size: Sequence[int] | None = None,
               ratio: int | None = None) -> tuple[Any, bool]:
    """Rearrange ``z`` from ``layout`` to the VAE's spatial layout (values untouched; FLUX.2's
    patch-space normalisation is undone here too when ``latents`` is scaled, see :func:`unscale`).
    Returns (latents, was-a-single-example); ``"spatial"`` passes ``z`` through."""
    if layout == "spatial":
        return z, False
    channels = spec.latent_shape[0]
    if layout == "flux2-patchified":
        a, single = _as_batch(z, 4, layout)
        if a.shape[1] != 4 * channels:
            raise InputError(f"z: flux2-patchified latents have {4 * channels} channels here, got {list(a.shape)}")
        return a, single
    a, single = _as_batch(z, 3, layout)
    if a.shape[2] != 4 * channels:
        raise InputError(f"z: {layout} latents are [N, tokens, {4 * channels}] here, got {list(a.shape)}")
    h, w = _packed_hw(a.shape[1], image_size, ratio)
    if layout == "flux-packed":
        return flux_unpack(a, h, w), single
    n = a.shape[0]
    return a.transpose(0, 2, 1).reshape(n, 4 * channels, h // 2, w // 2), single  # still patchified


def unscale(z: np.ndarray, spec: ExportSpec, latents: str, layout: str) -> np.ndarray:
    """``z`` (spatial, or patchified for the flux2 layouts) -> the VAE's raw spatial latent:
    undo the pipeline's normalisation when ``latents="scaled"``, then un-patchify."""
    patched = layout in ("flux2-packed", "flux2-patchified")
    if latents == "scaled":
        space = norm_space(spec)
        if space == "patch":
            zp = z if patched else patchify(z)
            mean, std = _stats(spec, zp.ndim)
            zp = zp * std + mean
            return np.ascontiguousarray(unpatchify(zp), dtype=np.float32)
        if space == "channel":
            mean, std = _stats(spec, z.ndim)
            z = z * std / np.float32(spec.scaling_factor) + mean
        else:
            z = z / np.float32(spec.scaling_factor) + np.float32(spec.shift_factor)
    if patched:
        z = unpatchify(z)
    return np.ascontiguousarray(z, dtype=np.float32)


def scale_posterior(mu: np.ndarray, logvar: np.ndarray, spec: ExportSpec) -> tuple[np.ndarray, np.ndarray]:
    """The posterior of the pipeline's latent (the inverse of :func:`unscale`, spatial layout):
    the mean moves and scales, the log-variance shifts by twice the log of the scale."""
    space = norm_space(spec)
    if space == "patch":
        mp, lp = patchify(mu), patchify(logvar)
        mean, std = _stats(spec, mp.ndim)
        return (np.ascontiguousarray(unpatchify((mp - mean) / std), dtype=np.float32),
                np.ascontiguousarray(unpatchify(lp - 2 * np.log(std)), dtype=np.float32))
    sf = np.float32(spec.scaling_factor)
    if space == "channel":
        mean, std = _stats(spec, mu.ndim)
        return (((mu - mean) * sf / std).astype(np.float32),
                (logvar + 2 * np.log(np.abs(sf) / std)).astype(np.float32))
    return (((mu - np.float32(spec.shift_factor)) * sf).astype(np.float32),
            (logvar + np.float32(2 * math.log(abs(float(sf))))).astype(np.float32))


def from_spatial(z: np.ndarray, layout: str) -> np.ndarray:
    """The VAE's spatial layout -> ``layout`` (the pipelines' packing), for encode's outputs."""
    if layout == "spatial":
        return z
    if layout == "flux-packed":
        return np.ascontiguousarray(flux_pack(z))
    zp = patchify(z)
    return np.ascontiguousarray(zp if layout == "flux2-patchified" else flux2_pack(zp))


def _stats(spec: ExportSpec, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (1, -1) + (1,) * (ndim - 2)
    return (np.asarray(spec.latents_mean, dtype=np.float32).reshape(shape),
            np.asarray(spec.latents_std, dtype=np.float32).reshape(shape))


def image_ratio(spec: ExportSpec) -> int | None:
    """Image pixels per latent pixel from the example shapes (8 for SD), None when unknown."""
    ex_in, ex_lat = tuple(spec.concrete_input_shape), tuple(spec.concrete_latent_shape)
    if len(ex_in) != 3 or len(ex_lat) != 3 or min(*ex_lat[1:], 1) < 1 or ex_lat[1] < 1:
        return None
    r = ex_in[1] / ex_lat[1]
    return int(r) if r.is_integer() and r >= 1 else None
