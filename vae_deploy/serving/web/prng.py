"""The page's seeded noise in Python: mulberry32 + Box-Muller exactly as ``static/vae.js`` draws
it, so ``window.vaeDeploy.sample(n, seed)`` can be reproduced (and tested) outside the browser.
It is not numpy's generator: ``Runtime.sample(n, seed)`` draws different latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def mulberry32(seed: int) -> Iterator[int]:
    """The 32-bit generator, step for step as in JavaScript (Math.imul is a wrapping multiply)."""
    a = seed & 0xFFFFFFFF
    while True:
        a = (a + 0x6D2B79F5) & 0xFFFFFFFF
        t = ((a ^ (a >> 15)) * (a | 1)) & 0xFFFFFFFF
        t = (t ^ (t + (((t ^ (t >> 7)) * (t | 61)) & 0xFFFFFFFF))) & 0xFFFFFFFF
        yield (t ^ (t >> 14)) & 0xFFFFFFFF


def normal(n: int, seed: int) -> np.ndarray:
    """``n`` float32 standard normals: Box-Muller on u = (r + 0.5) / 2**32, pairs (cos, sin)."""
    gen = mulberry32(seed)
    out = np.empty(n, np.float32)
    for i in range(0, n, 2):
        u1 = (next(gen) + 0.5) / 4294967296
        u2 = (next(gen) + 0.5) / 4294967296
        r = math.sqrt(-2.0 * math.log(u1))
        out[i] = r * math.cos(2 * math.pi * u2)
        if i + 1 < n:
            out[i + 1] = r * math.sin(2 * math.pi * u2)
    return out
