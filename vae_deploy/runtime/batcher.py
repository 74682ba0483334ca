"""Dynamic micro-batching: many concurrent small requests, one model run.

Callers (threads of a web service, say) submit single examples or small batches. A worker
thread takes the first waiting request, gathers more of the same operation until
``max_batch`` items are collected or ``max_delay_ms`` has passed since that first request,
runs the backend once, and hands each caller its slice. Inputs are validated at submit time,
so a bad request fails only its own caller; if a batched run fails anyway, its requests are
retried one by one so that the error again reaches only the caller that caused it.

Callers may give up: a cancelled future (``future.cancel()``, an ``asyncio.wait_for`` timeout
around ``asyncio.wrap_future``) is skipped when its batch is formed and never breaks the
worker. Should the worker thread die anyway, every waiting caller gets the error at once, and
``submit`` raises from then on: no caller ever waits on a batcher that will not answer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vae_deploy.runtime.backends import Backend

OPS = ("encode", "decode", "sample")


@dataclass
class _Request:
    op: str
    data: np.ndarray  # validated float32 batch (for "sample": the latents, drawn at submit time)
    single: bool
    future: Future = field(default_factory=Future)

    @property
    def n(self) -> int:
        return int(self.data.shape[0])


_STOP = object()


class BatcherClosedError(RuntimeError):
    """The batcher is closed, or its worker died; no request will be answered."""


class MicroBatcher:
    """Gathers concurrent requests into batches of at most ``max_batch`` within ``max_delay_ms``."""

    def __init__(self, backend: Backend, *, max_batch: int = 64, max_delay_ms: float = 2.0) -> None:
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch}, {max_delay_ms}")
        self.backend = backend
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending: deque[_Request] = deque()  # taken from the queue but of another op
        self._closed = False
        self._dead: BaseException | None = None  # why the worker stopped, if it died
        self._inflight: list[_Request] = []
        self._close_lock = threading.Lock()
        self.stats = {"batches": 0, "requests": 0, "items": 0}
        self._worker = threading.Thread(target=self._guarded_loop, name="vae-deploy-microbatcher", daemon=True)
        self._worker.start()

    # --- public API ----------------------------------------------------------------------
    def submit(self, op: str, array: Any = None, *, n: int = 1, seed: int | None = None,
               latent_shape: Any = None) -> Future:
        """Queue a request; the future resolves to what ``backend.<op>`` would return.
        ``latent_shape`` picks the latent size to sample at when the latent has dynamic axes."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        b = self.backend
        if op == "sample":
            data, single = b.noise((n, *b.sample_latent_shape(latent_shape)), seed), False
        elif op == "decode":
            data, single = b._prepare(array, b.latent_shape, "z")
        else:
            data, single = b._prepare(array, b.input_shape, "x")
        req = _Request(op, data, single)
        with self._close_lock:
            if self._dead is not None:
                raise BatcherClosedError(f"MicroBatcher's worker died ({type(self._dead).__name__}: {self._dead}); "
                                         "create a new one")
            if self._closed:
                raise BatcherClosedError("MicroBatcher is closed")
            self._queue.put(req)
        return req.future

    def decode(self, z: Any, timeout: float | None = None) -> np.ndarray:
        return self.submit("decode", z).result(timeout)

    def encode(self, x: Any, timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.submit("encode", x).result(timeout)

    def sample(self, n: int = 1, seed: int | None = None, timeout: float | None = None,
               latent_shape: Any = None) -> np.ndarray:
        return self.submit("sample", n=n, seed=seed, latent_shape=latent_shape).result(timeout)

    @property
    def alive(self) -> bool:
        """True while the worker runs (after ``close()`` it drains the queue, then stops)."""
        return self._worker.is_alive()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting requests, finish every queued one, and join the worker. Requests
        still unanswered after ``timeout`` seconds fail with BatcherClosedError."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
            if first:
                self._queue.put(_STOP)
        self._worker.join(timeout)
        if self._worker.is_alive():
            self._fail_all(BatcherClosedError(f"MicroBatcher.close() gave up waiting after {timeout} s"))

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- worker --------------------------------------------------------------------------
    def _next(self, block: bool, timeout: float | None = None) -> Any:
        """Requests set aside earlier come first, then the queue; raises queue.Empty."""
        if self._pending:
            return self._pending.popleft()
        return self._queue.get(block=block, timeout=timeout)

    def _guarded_loop(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug or an interpreter shutdown: never leave callers waiting
            with self._close_lock:
                self._dead, self._closed = e, True
            self._fail_all(BatcherClosedError(f"MicroBatcher's worker died: {type(e).__name__}: {e}"))

    def _fail_all(self, error: BaseException) -> None:
        """Fail every request not yet answered: in flight, set aside, or queued."""
        waiting = list(self._inflight) + list(self._pending)
        self._pending.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                waiting.append(item)
        for r in waiting:
            _settle(r.future, exception=error)

    def _loop(self) -> None:
        stopping = False  # after close(): drain what is queued without waiting, then exit
        while True:
            try:
                first = self._next(block=not stopping)
            except queue.Empty:
                return
            if first is _STOP:
                stopping = True
                continue
            batch, items = [first], first.n
            deadline = time.perf_counter() + self.max_delay
            skipped: list[_Request] = []
            while items < self.max_batch:
                timeout = 0.0 if stopping else deadline - time.perf_counter()
                try:
                    nxt = self._next(block=timeout > 0, timeout=timeout if timeout > 0 else None)
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    continue
                # Same op and same per-example shape (a dynamic-size model gets requests of
                # several image sizes; those cannot share a batch).
                if nxt.op != first.op or nxt.data.shape[1:] != first.data.shape[1:] or items + nxt.n > self.max_batch:
                    skipped.append(nxt)  # served by a later batch, in arrival order
                    continue
                batch.append(nxt)
                items += nxt.n
            self._pending.extendleft(reversed(skipped))
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        # A caller who cancelled (or timed out) is skipped; the others can no longer cancel.
        batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not batch:
            return
        self._inflight = batch  # kept if the worker dies inside, so _fail_all can answer them
        self._run_batch(batch)
        self._inflight = []

    def _run_batch(self, batch: list[_Request]) -> None:
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["items"] += sum(r.n for r in batch)
        try:
            data = batch[0].data if len(batch) == 1 else np.concatenate([r.data for r in batch])
            outs = self._call(batch[0].op, data)
        except Exception:
            if len(batch) == 1:
                self._fail(batch[0])
                return
            for r in batch:  # isolate the failing request
                self._run_one(r)
            return
        start = 0
        for r in batch:
            parts = tuple(o[start : start + r.n] for o in outs)
            start += r.n
            if r.single:
                parts = tuple(p[0] for p in parts)
            _settle(r.future, parts if len(parts) > 1 else parts[0])

    def _run_one(self, r: _Request) -> None:
        try:
            outs = self._call(r.op, r.data)
        except Exception:
            self._fail(r)
            return
        parts = tuple(o[0] for o in outs) if r.single else outs
        _settle(r.future, parts if len(parts) > 1 else parts[0])

    def _fail(self, r: _Request) -> None:
        import sys

        _settle(r.future, exception=sys.exc_info()[1] or RuntimeError("request failed"))

    def _call(self, op: str, data: np.ndarray) -> tuple[np.ndarray, ...]:
        b = self.backend
        if op == "encode":
            return b._chunked(b._encode, data, 2)  # type: ignore[return-value]
        # "decode" and "sample" (latents already drawn) both decode
        return tuple(b._chunked(lambda c: (b._decode(c),), data, 1))


def _settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Resolve a future unless it is already done (cancelled, or failed by ``_fail_all``)."""
    if future.done():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:  # resolved between the check and the set: nothing to do
        pass
