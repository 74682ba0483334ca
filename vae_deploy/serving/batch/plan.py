"""The shard plan: a pure function of the row count and the shard size, never of the workers.

Everything that makes batch output exactly-once and reproducible hangs on this: shard ``k``
always covers the same rows, is always written to the same file names, and (for sampling)
always draws its noise from the same seed, whichever worker computes it and however often.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of the job, in input order."""

    index: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def stem(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(n_rows: int, shard_rows: int) -> list[Shard]:
    """Consecutive shards of ``shard_rows`` rows (the last may be shorter)."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    return [Shard(i, start, min(start + shard_rows, n_rows))
            for i, start in enumerate(range(0, n_rows, shard_rows))]


def shard_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for shard ``index``: child ``index`` of the global seed's SeedSequence
    (what ``SeedSequence(seed).spawn(n)[index]`` gives, without spawning the others), so shards
    draw independent streams and a shard's noise does not depend on who computes it."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
