"""Ranges for counts a user chooses, shared by the Python API and the CLI parser (which must
not import the Runtime's engines just to know a range)."""

from __future__ import annotations

import os


def max_threads() -> int:
    """The most intra-op threads anything takes: 4 per core, at most 256. Each thread holds a
    stack and scratch memory: ``--threads 100000`` took gigabytes before any work."""
    return min(256, 4 * (os.cpu_count() or 1))


def check_threads(threads: int | None) -> None:
    """``ValueError`` naming the range for a thread count outside ``1..max_threads()``."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= max_threads():
        raise ValueError(f"threads must be an integer in 1..{max_threads()} (4 per core, at most 256), "
                         f"got {threads!r}")
