"""Writing user files safely: atomically (never half-written) and with the mode the umask asks for.

``tempfile.mkstemp`` creates files readable by their owner only (0600); renamed into place
they would stay that way, unlike every other file the tools write. So the temporary file gets
the mode an ordinary ``open(path, "w")`` would have given it before the rename.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside ``path`` and rename it into place (mode 0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# Size limits for the files a user can name, by kind (checked before a byte is read): a FIFO
# would hang the reader and /dev/zero would be read until the kernel ends the process.
MAX_BYTES: dict[str, int] = {
    "tuning file": 16 << 20,
    "manifest": 16 << 20,
    "config": 4 << 20,
    "json": 16 << 20,
    "array": 64 << 30,
    "weights": 64 << 30,
    "image": 1 << 30,
}


def check_user_file(path: str | Path, kind: str, max_bytes: int | None = None) -> Path:
    """``path`` as a regular file of at most ``max_bytes`` (default: ``MAX_BYTES[kind]``), else an
    ``InputError`` naming the kind, what was expected and what was found. ``FileNotFoundError``
    passes through, so callers can treat a missing file as absent."""
    import stat

    from vae_deploy.errors import InputError

    path = Path(path)
    st = path.stat()  # follows a symlink: its target must be a regular file too
    if not stat.S_ISREG(st.st_mode):
        what = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{kind} {str(path)!r} must be a regular file, got {what}")
    limit = MAX_BYTES.get(kind, 1 << 30) if max_bytes is None else max_bytes
    if st.st_size > limit:
        raise InputError(f"{kind} {str(path)!r} is {st.st_size:,} bytes; a {kind} is at most {limit:,} bytes")
    return path


def read_user_bytes(path: str | Path, kind: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a user-named file, checked by :func:`check_user_file` first (and read no
    further than the limit, should it grow in between)."""
    from vae_deploy.errors import InputError

    limit = MAX_BYTES.get(kind, 1 << 30) if max_bytes is None else max_bytes
    with check_user_file(path, kind, limit).open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{kind} {str(path)!r} grew past {limit:,} bytes while it was read")
    return data


def read_user_text(path: str | Path, kind: str, max_bytes: int | None = None) -> str:
    return read_user_bytes(path, kind, max_bytes).decode("utf-8")
