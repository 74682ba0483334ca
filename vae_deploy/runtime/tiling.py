"""Tiled decode and encode with diffusers' tiling rule, in numpy, for any backend.

A latent-diffusion VAE's activations grow with the image: decoding a 2048x2048 image in one
run needs gigabytes. diffusers' ``AutoencoderKL.tiled_decode`` splits the latent into
overlapping tiles, decodes each on its own and blends the overlaps linearly; this module
applies the same rule to whatever runs one tile (an onnxruntime session, TorchScript,
eager), so that for the same tile size the result equals diffusers' to float32 rounding:

- tiles of ``tile_in`` start every ``int(tile_in * (1 - 0.25))`` along height and width;
- each result tile is blended into the one above and the one to its left over
  ``int(tile_out * 0.25)`` rows/columns (weights ``y / extent``), in place, row by row, as
  diffusers does (a blended tile is what the next row blends against);
- each tile is cropped to ``tile_out - extent`` rows and columns and the crops are joined.

Unlike diffusers, only the previous row of result tiles is kept: memory is bounded by a row
of tiles and the output itself, not by the image's activations.

This module must not import torch: the runtime path uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vae_deploy.artifacts import ExportSpec
from vae_deploy.errors import InputError

OVERLAP_FACTOR = 0.25

#: Runs one tile: a batch ``[N, C, h, w]`` in, a list of result arrays ``[N, C', h*r, w*r]`` out.
TileFn = Callable[[np.ndarray], Sequence[np.ndarray]]


def spatial_ratio(spec: ExportSpec) -> int:
    """How many image pixels one latent pixel stands for (8 for Stable Diffusion's VAE).

    Tiling needs an export whose image and latent both have dynamic height and width; the
    ratio comes from the example shapes recorded at export."""
    dyn_in = len(spec.input_shape) == 3 and all(d < 0 for d in spec.input_shape[1:])
    dyn_lat = len(spec.latent_shape) == 3 and all(d < 0 for d in spec.latent_shape[1:])
    ex_in, ex_lat = tuple(spec.concrete_input_shape), tuple(spec.concrete_latent_shape)
    if not (dyn_in and dyn_lat and len(ex_in) == 3 and len(ex_lat) == 3 and min(*ex_in[1:], *ex_lat[1:]) > 0):
        raise InputError(
            f"tile= needs an export with dynamic height and width (images [N, C, H, W], latents [N, c, h, w], "
            f"e.g. a diffusers AutoencoderKL); this one has input {_fmt(spec.input_shape)} and latent "
            f"{_fmt(spec.latent_shape)}"
        )
    ratios = {ex_in[1] / ex_lat[1], ex_in[2] / ex_lat[2]}
    if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
        raise InputError(f"tile= needs one integer image/latent size ratio; the example shapes {list(ex_in)} and "
                         f"{list(ex_lat)} give {sorted(ratios)}")
    return int(next(iter(ratios)))


def check_tile(tile: int, what: str) -> int:
    """A latent tile size that keeps diffusers' crops contiguous: a multiple of 4 (the 0.25
    overlap then lands on whole pixels at both scales)."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 4 or tile % 4:
        raise InputError(f"{what} must be a positive multiple of 4, got {tile!r}")
    return int(tile)


def tiled(run: TileFn, a: np.ndarray, tile_in: int, ratio: int, n_out: int) -> list[np.ndarray]:
    """Run ``run`` over overlapping tiles of ``a`` ``[N, C, H, W]`` and blend the results.

    ``tile_in``: tile size on ``a``'s scale; ``ratio``: result pixels per input pixel (8 to
    decode an SD latent, 1/8 to encode an image, given as a float)."""
    tile_out = round(tile_in * ratio)
    stride = int(tile_in * (1 - OVERLAP_FACTOR))
    extent = int(tile_out * OVERLAP_FACTOR)
    limit = tile_out - extent
    n, _, height, width = a.shape
    starts_y, starts_x = range(0, height, stride), range(0, width, stride)
    crop_y = [min(limit, round(min(tile_in, height - s) * ratio)) for s in starts_y]
    crop_x = [min(limit, round(min(tile_in, width - s) * ratio)) for s in starts_x]
    outs: list[np.ndarray] | None = None
    above: list[list[np.ndarray]] = []
    y0 = 0
    for i, sy in enumerate(starts_y):
        row: list[list[np.ndarray]] = []
        x0 = 0
        for j, sx in enumerate(starts_x):
            tile_a = np.ascontiguousarray(a[:, :, sy:sy + tile_in, sx:sx + tile_in])
            res = [np.array(r, dtype=np.float32, copy=True) for r in run(tile_a)]
            if len(res) != n_out:
                raise RuntimeError(f"a tile gave {len(res)} outputs, expected {n_out}")
            want = (round(tile_a.shape[2] * ratio), round(tile_a.shape[3] * ratio))
            if any(r.ndim != 4 or r.shape[2:] != want for r in res):
                raise InputError(f"a tile {list(tile_a.shape)} gave {[list(r.shape) for r in res]}: tiling needs "
                                 f"results {ratio:g} times the tile's height and width")
            if outs is None:
                h_out, w_out = sum(crop_y), sum(crop_x)
                outs = [np.empty((n, r.shape[1], h_out, w_out), dtype=np.float32) for r in res]
            for k, r in enumerate(res):
                if i > 0:
                    _blend_v(above[j][k], r, extent)
                if j > 0:
                    _blend_h(row[j - 1][k], r, extent)
                outs[k][:, :, y0:y0 + crop_y[i], x0:x0 + crop_x[j]] = r[:, :, :crop_y[i], :crop_x[j]]
            row.append(res)
            x0 += crop_x[j]
        above = row
        y0 += crop_y[i]
    assert outs is not None
    return outs


def _weights(extent: int) -> tuple[np.ndarray, np.ndarray]:
    """diffusers' ``1 - y / extent`` and ``y / extent``: computed in double, applied in float32."""
    w = np.arange(extent, dtype=np.float64) / extent
    return (1 - w).astype(np.float32), w.astype(np.float32)


def _blend_v(a: np.ndarray, b: np.ndarray, extent: int) -> None:
    """Blend the bottom of ``a`` (the tile above) into the top of ``b``, in place."""
    e = min(a.shape[2], b.shape[2], extent)
    if e <= 0:
        return
    wa, wb = _weights(e)
    b[:, :, :e, :] = a[:, :, a.shape[2] - e:, :] * wa[:, None] + b[:, :, :e, :] * wb[:, None]


def _blend_h(a: np.ndarray, b: np.ndarray, extent: int) -> None:
    """Blend the right edge of ``a`` (the tile to the left) into the left of ``b``, in place."""
    e = min(a.shape[3], b.shape[3], extent)
    if e <= 0:
        return
    wa, wb = _weights(e)
    b[:, :, :, :e] = a[:, :, :, a.shape[3] - e:] * wa + b[:, :, :, :e] * wb


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join("?" if s < 0 else str(s) for s in shape) + "]"
