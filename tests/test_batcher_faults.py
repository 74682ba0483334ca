"""MicroBatcher under callers that give up and workers that die: nobody waits forever."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from vae_deploy.runtime.batcher import BatcherClosedError, MicroBatcher
from vae_deploy.runtime.core import Runtime


@pytest.fixture(scope="module")
def rt(exports):
    return Runtime.load(exports["mlp"], provider="cpu")


class _Gate:
    """Holds the worker inside the backend until released, so the test controls timing."""

    def __init__(self, rt, monkeypatch):
        self.entered, self.release = threading.Event(), threading.Event()
        real = rt._decode

        def slow(z):
            self.entered.set()
            assert self.release.wait(10)
            return real(z)

        monkeypatch.setattr(rt, "_decode", slow)


def test_cancelled_requests_do_not_kill_the_worker(rt, monkeypatch):
    z = np.zeros(4, np.float32)
    want = rt.decode(z)
    gate = _Gate(rt, monkeypatch)
    with MicroBatcher(rt, max_batch=4, max_delay_ms=1) as mb:
        first = mb.submit("decode", z)  # occupies the worker
        assert gate.entered.wait(5)
        queued = [mb.submit("decode", z) for _ in range(6)]
        assert all(f.cancel() for f in queued[::2])  # callers give up while queued
        assert not first.cancel()  # already running: cannot be cancelled
        gate.release.set()
        np.testing.assert_allclose(first.result(5), want, atol=1e-6)
        for f in queued[1::2]:
            np.testing.assert_allclose(f.result(5), want, atol=1e-6)
        assert all(f.cancelled() for f in queued[::2])
        assert mb.alive
        np.testing.assert_allclose(mb.decode(z, timeout=5), want, atol=1e-6)  # still serving


def test_asyncio_wait_for_timeouts_do_not_kill_the_worker(rt, monkeypatch):
    z = np.zeros(4, np.float32)
    gate = _Gate(rt, monkeypatch)

    async def main(mb):
        blocker = asyncio.wrap_future(mb.submit("decode", z))
        for _ in range(5):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(mb.submit("decode", z)), 0.01)
        gate.release.set()
        await blocker
        return await asyncio.wait_for(asyncio.wrap_future(mb.submit("decode", z)), 5)

    with MicroBatcher(rt, max_batch=2, max_delay_ms=1) as mb:
        out = asyncio.run(main(mb))
        assert out.shape == (1, 8, 8) and mb.alive


def test_a_dead_worker_fails_every_waiting_caller_and_refuses_new_ones(rt, monkeypatch):
    class Fatal(BaseException):  # not an Exception: the per-request isolation does not catch it
        pass

    z = np.zeros(4, np.float32)
    entered, release = threading.Event(), threading.Event()

    def die(z):
        entered.set()
        release.wait(5)
        raise Fatal("boom")

    monkeypatch.setattr(rt, "_decode", die)
    mb = MicroBatcher(rt, max_batch=1, max_delay_ms=0)
    running = mb.submit("decode", z)
    assert entered.wait(5)
    queued = [mb.submit("decode", z) for _ in range(3)]
    release.set()
    t = time.perf_counter()
    for f in [running, *queued]:
        with pytest.raises(BatcherClosedError, match="worker died: Fatal: boom"):
            f.result(5)
    assert time.perf_counter() - t < 5
    assert not mb.alive
    with pytest.raises(BatcherClosedError, match="worker died"):
        mb.submit("decode", z)
    mb.close()  # returns, no hang, idempotent
    mb.close()


def test_close_finishes_queued_work_then_refuses(rt):
    mb = MicroBatcher(rt, max_batch=8, max_delay_ms=50)
    futures = [mb.submit("decode", np.zeros(4, np.float32)) for _ in range(20)]
    mb.close()
    assert all(f.done() and f.result().shape == (1, 8, 8) for f in futures)
    assert not mb.alive
    with pytest.raises(BatcherClosedError, match="closed"):
        mb.submit("decode", np.zeros(4, np.float32))


def test_close_with_a_stuck_backend_fails_the_waiters(rt, monkeypatch):
    gate = _Gate(rt, monkeypatch)
    mb = MicroBatcher(rt, max_batch=1, max_delay_ms=0)
    stuck = mb.submit("decode", np.zeros(4, np.float32))
    assert gate.entered.wait(5)
    waiting = mb.submit("decode", np.zeros(4, np.float32))
    mb.close(timeout=0.2)
    with pytest.raises(BatcherClosedError, match="gave up"):
        waiting.result(1)
    with pytest.raises(BatcherClosedError):
        stuck.result(1)
    gate.release.set()
