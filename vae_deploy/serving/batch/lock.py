"""One job at a time per output folder: an exclusive ``fcntl.flock`` on ``OUT/.lock``, held for
the job's life.

Two jobs writing into one folder would each believe their shards are the folder's shards; the
lock makes the second fail at once instead. The kernel drops a flock when its holder dies
(``kill -9`` included), so a crashed job's successor takes over without any stale-lock
guessing. The holder's pid is written into the file only to name it in the refusal.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from vae_deploy.errors import VaeDeployError

LOCK = ".lock"


class FolderLock:
    """An exclusive lock on ``folder/.lock``; ``acquire`` raises ``error_type`` when another
    process holds it (naming the folder and the holder's pid)."""

    def __init__(self, folder: Path, error_type: type[VaeDeployError]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.error_type = error_type
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self.error_type(f"--out {str(self.folder)!r} is in use by another batch job "
                                      f"(pid {self._holder()}); wait for it to finish or use another --out") from None
            # The file we locked may have been unlinked by a holder releasing it meanwhile: only
            # the lock on the file now at the path counts.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        """Unlink first, then unlock: a waiting job then sees the inode change and retries."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None
