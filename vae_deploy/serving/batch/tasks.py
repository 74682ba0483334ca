"""What one shard computes, shared verbatim by the in-process path and every Ray worker, so
the two produce identical bytes: rows in, named float32 arrays out."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_deploy.errors import DataError
from vae_deploy.serving.batch.plan import Shard, shard_rng

TASKS = ("encode", "decode", "sample")
OUTPUTS = {"encode": ("mu", "logvar"), "decode": ("x",), "sample": ("x",)}


@dataclass(frozen=True)
class TaskSpec:
    """A job's computation: which op, the per-row shape it expects, and the sampling seed."""

    kind: str
    item_shape: tuple[int, ...] = ()  # what rows are reshaped to (encode: input, decode: latent)
    seed: int = 0
    latent_shape: tuple[int, ...] = ()  # sample: the concrete per-example latent shape
    delay_s: float = 0.0  # test hook: sleep before each shard, to make kill tests deterministic
    # decode: a pipeline's latents as stored (vae_deploy.runtime.latents): normalisation, layout, image size
    latents: str = "raw"
    latent_layout: str = "spatial"
    image_size: tuple[int, int] | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return OUTPUTS[self.kind]


def check_row_shape(shape: tuple[int, ...], item_shape: tuple[int, ...], what: str) -> None:
    """Fail before any work when rows cannot become ``item_shape`` (see ``to_model_rows``)."""
    if _fits(shape, item_shape) or (len(item_shape) == 3 and item_shape[0] == 1 and _fits((1, *shape), item_shape)):
        return
    if len(shape) == 1 and all(d > 0 for d in item_shape) and shape[0] == math.prod(item_shape):
        return
    flat = f" (or flat [N, {math.prod(item_shape)}])" if all(d > 0 for d in item_shape) else ""
    raise DataError(f"{what}: expected rows of shape [N, {', '.join(map(str, item_shape))}]{flat} for this "
                    f"export, got [N, {', '.join(map(str, shape))}]")


def _fits(shape: tuple[int, ...], item_shape: tuple[int, ...]) -> bool:
    return len(shape) == len(item_shape) and all(e < 0 or s == e for s, e in zip(shape, item_shape))


def to_model_rows(rows: np.ndarray, item_shape: tuple[int, ...]) -> np.ndarray:
    """Stored rows -> float32 model inputs: uint8 scaled by 1/255 (as the training loaders do),
    a missing channel axis added, flat rows reshaped."""
    a = rows.astype(np.float32) / 255.0 if rows.dtype == np.uint8 else rows.astype(np.float32, copy=False)
    if not _fits(a.shape[1:], item_shape):
        if len(item_shape) == 3 and _fits((1, *a.shape[1:]), item_shape):
            a = a[:, None]
        else:
            a = a.reshape(a.shape[0], *item_shape)
    return np.ascontiguousarray(a)


def compute_shard(runtime: Any, task: TaskSpec, shard: Shard, rows: np.ndarray | None) -> dict[str, np.ndarray]:
    """One shard's outputs. ``rows`` is None for sampling (the shard's seed makes its noise)."""
    if task.delay_s:
        time.sleep(task.delay_s)
    if task.kind == "sample":
        z = shard_rng(task.seed, shard.index).standard_normal((shard.rows, *task.latent_shape), dtype=np.float32)
        return {"x": runtime.decode(z)}
    assert rows is not None
    try:
        if task.kind == "encode":
            mu, logvar = runtime.encode(to_model_rows(rows, task.item_shape))
            return {"mu": mu, "logvar": logvar}
        if task.latents != "raw" or task.latent_layout != "spatial":
            z = rows.astype(np.float32, copy=False)  # pipeline latents are stored as they came
            return {"x": runtime.decode(z, latents=task.latents, latent_layout=task.latent_layout,
                                        image_size=task.image_size)}
        return {"x": runtime.decode(to_model_rows(rows, task.item_shape))}
    except ValueError as e:  # the Runtime's input validation (e.g. NaN rows): name where it is
        raise DataError(f"rows {shard.start}..{shard.stop - 1} (shard {shard.index}): {e}") from None
