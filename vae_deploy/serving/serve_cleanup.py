"""Temporary folders of ``vae-deploy serve``: claimed by their owner, swept once it is dead.

A server ended by ``kill -9`` cannot remove its ``vae-deploy-triton-*`` folder (PyTriton's
workspace, Triton's log). Each folder records its owner (pid and the process's start time, so
a reused pid does not count as the owner); the next server start removes the folders whose
owner is gone, after ending the processes still running from them (an orphaned
``tritonserver`` or backend stub). Folders of live servers, of other users, and folders with
no owner record are left alone. Linux (``/proc``); elsewhere nothing is swept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

PREFIX = "vae-deploy-triton-"
OWNER = "owner"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def claim(folder: Path) -> None:
    """Record this process as the folder's owner."""
    (folder / OWNER).write_text(f"{os.getpid()} {_start_time(os.getpid()) or '?'}\n")


def owner_alive(folder: Path) -> bool | None:
    """True/False for a folder with an owner record; None when it has none (not ours to judge)."""
    try:
        pid_s, started = (folder / OWNER).read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    now = _start_time(pid)
    return now is not None and (started == "?" or now == started)


def _processes_using(folder: Path) -> list[int]:
    """Our processes whose command line names ``folder`` (tritonserver's repository, a stub)."""
    marker = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid == os.getuid() and marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def sweep_stale(tmpdir: str | Path | None = None) -> list[Path]:
    """Remove this user's ``vae-deploy-triton-*`` folders whose owner is dead; return them."""
    if not Path("/proc").is_dir():  # pragma: no cover - not Linux
        return []
    removed = []
    for folder in Path(tmpdir or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if owner_alive(folder) is not False:
            continue
        for pid in _processes_using(folder):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
