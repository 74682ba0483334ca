"""Micro-batcher: gathers concurrent requests, scatters correct results, isolates errors, shuts down cleanly."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vae_deploy.runtime.batcher import MicroBatcher
from vae_deploy.runtime.core import Runtime


@pytest.fixture(scope="module")
def rt(exports):
    return Runtime.load(exports["mlp"], provider="cpu")


def test_concurrent_single_requests_are_batched_and_correct(rt):
    rng = np.random.default_rng(0)
    zs = rng.standard_normal((256, 4), dtype=np.float32)
    want = rt.decode(zs)
    with MicroBatcher(rt, max_batch=64, max_delay_ms=5) as mb, ThreadPoolExecutor(64) as pool:
        got = list(pool.map(mb.decode, zs))
    np.testing.assert_allclose(np.stack(got), want, atol=1e-6)
    assert mb.stats["requests"] == 256 and mb.stats["batches"] < 256  # really batched


def test_sixteen_threads_mixed_calls(rt):
    rng = np.random.default_rng(1)
    xs = rng.random((200, 2, 1, 8, 8), dtype=np.float32)
    zs = rng.standard_normal((200, 4), dtype=np.float32)
    want_mu = [rt.encode(x)[0] for x in xs]
    want_x = rt.decode(zs)

    def work(mb: MicroBatcher, i: int) -> bool:
        k = i % 200
        if i % 3 == 0:
            return np.allclose(mb.encode(xs[k])[0], want_mu[k], atol=1e-5)
        if i % 3 == 1:
            return np.allclose(mb.decode(zs[k]), want_x[k], atol=1e-5)
        return np.allclose(mb.sample(2, seed=k), rt.sample(2, seed=k), atol=1e-5)

    with MicroBatcher(rt, max_batch=32, max_delay_ms=1) as mb, ThreadPoolExecutor(16) as pool:
        assert all(pool.map(lambda i: work(mb, i), range(16 * 200)))


def test_errors_reach_only_the_failing_caller(rt):
    with MicroBatcher(rt, max_batch=64, max_delay_ms=20) as mb:
        good = [mb.submit("decode", np.zeros(4, np.float32)) for _ in range(5)]
        with pytest.raises(ValueError, match=r"expected shape \[N, 4\]"):
            mb.submit("decode", np.zeros(7, np.float32))
        assert all(f.result(5).shape == (1, 8, 8) for f in good)


def test_runtime_failure_inside_a_batch_is_isolated(rt, monkeypatch):
    real = rt._decode

    def flaky(z):
        if (z == 42).any():
            raise RuntimeError("poisoned request")
        return real(z)

    monkeypatch.setattr(rt, "_decode", flaky)
    with MicroBatcher(rt, max_batch=64, max_delay_ms=30) as mb:
        futs = [mb.submit("decode", np.full(4, 42.0 if i == 3 else 0.0, np.float32)) for i in range(8)]
        results = [f.exception(5) for f in futs]
    assert isinstance(results[3], RuntimeError) and "poisoned" in str(results[3])
    assert all(r is None for i, r in enumerate(results) if i != 3)


def test_clean_shutdown_loses_nothing(rt):
    mb = MicroBatcher(rt, max_batch=8, max_delay_ms=50)
    futs = [mb.submit("sample", n=1, seed=i) for i in range(100)]
    start = time.perf_counter()
    mb.close()
    assert time.perf_counter() - start < 5
    assert all(f.done() and f.exception() is None for f in futs)
    with pytest.raises(RuntimeError, match="closed"):
        mb.submit("sample")
    assert not mb._worker.is_alive()


def test_large_request_bigger_than_max_batch(rt):
    z = np.random.default_rng(2).standard_normal((100, 4), dtype=np.float32)
    with MicroBatcher(rt, max_batch=16) as mb:
        np.testing.assert_allclose(mb.decode(z), rt.decode(z), atol=1e-6)
