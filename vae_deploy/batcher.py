"""Dynamic micro-batching: many concurrent small requests, one model run.

Callers (threads of a web service, say) submit single examples or small batches. A worker
thread takes the first waiting request, gathers more of the same operation until
``max_batch`` items are collected or ``max_delay_ms`` has passed since that first request,
runs the backend once, and hands each caller its slice. Inputs are validated at submit time,
so a bad request fails only its own caller; if a batched run fails anyway, its requests are
retried one by one so that the error again reaches only the caller that caused it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vae_deploy.backends import Backend

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
        self._close_lock = threading.Lock()
        self.stats = {"batches": 0, "requests": 0, "items": 0}
        self._worker = threading.Thread(target=self._loop, name="vae-deploy-microbatcher", daemon=True)
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
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            self._queue.put(req)
        return req.future

    def decode(self, z: Any, timeout: float | None = None) -> np.ndarray:
        return self.submit("decode", z).result(timeout)

    def encode(self, x: Any, timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.submit("encode", x).result(timeout)

    def sample(self, n: int = 1, seed: int | None = None, timeout: float | None = None,
               latent_shape: Any = None) -> np.ndarray:
        return self.submit("sample", n=n, seed=seed, latent_shape=latent_shape).result(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting requests, finish every queued one, and join the worker."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)

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
            r.future.set_result(parts if len(parts) > 1 else parts[0])

    def _run_one(self, r: _Request) -> None:
        try:
            outs = self._call(r.op, r.data)
        except Exception:
            self._fail(r)
            return
        parts = tuple(o[0] for o in outs) if r.single else outs
        r.future.set_result(parts if len(parts) > 1 else parts[0])

    def _fail(self, r: _Request) -> None:
        import sys

        r.future.set_exception(sys.exc_info()[1] or RuntimeError("request failed"))

    def _call(self, op: str, data: np.ndarray) -> tuple[np.ndarray, ...]:
        b = self.backend
        if op == "encode":
            return b._chunked(b._encode, data, 2)  # type: ignore[return-value]
        # "decode" and "sample" (latents already drawn) both decode
        return tuple(b._chunked(lambda c: (b._decode(c),), data, 1))
