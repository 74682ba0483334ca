"""One torchlib registry per process instead of one per graph.

torch.onnx (2.13) builds its registry of ~1,000 torchlib functions anew for every export, and
each function's source is re-read and re-parsed with ``inspect`` on the way: 1-1.4 s per graph,
about half the export of a small VAE (cProfile: ``ONNXRegistry.from_torchlib`` 2.7 s of a 6.0 s
encoder + decoder export). Nothing in it depends on the model, and vae-deploy passes no custom
translation table (the one thing that adds to a registry), so the registry built for an opset is
kept and handed back while :func:`cached_torchlib_registry` is active. Private API: where it is not
there, export runs exactly as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_REGISTRIES: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


@contextlib.contextmanager
def cached_torchlib_registry() -> Iterator[None]:
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def from_torchlib(cls: Any, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        with _LOCK:
            if key not in _REGISTRIES:
                _REGISTRIES[key] = build(cls, *args, **kwargs)
            return _REGISTRIES[key]

    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = original
