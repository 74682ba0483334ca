"""The Backend hot path's finiteness check agrees with np.isfinite(a).all() everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from vae_deploy.runtime.backends import _DOT_CHECK_MAX, _all_finite


@pytest.mark.parametrize("shape", [(0, 4), (1, 8), (3, 1, 28, 28), (1, _DOT_CHECK_MAX), (1, _DOT_CHECK_MAX + 1)])
def test_all_finite_matches_isfinite(shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape, dtype=np.float32)
    assert _all_finite(a) is True
    if not a.size:
        return
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, a.size // 2, a.size - 1):
            b = a.copy()
            b.flat[where] = bad
            assert _all_finite(b) is False
    f32 = np.finfo(np.float32)
    huge = np.full(shape, f32.max, np.float32)
    huge.flat[0] = -f32.max  # products and sums stay far from overflow
    tiny = np.full(shape, f32.smallest_subnormal, np.float32)
    assert _all_finite(huge) is True and _all_finite(tiny) is True
    with np.errstate(all="raise"):  # an FP exception in the fast path falls back to the exact check
        assert _all_finite(tiny) is True
        b = a.copy()
        b.flat[0], b.flat[-1] = np.inf, -np.inf
        assert _all_finite(b) is False
