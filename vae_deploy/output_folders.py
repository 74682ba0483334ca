"""Output folders written whole (an export, a web site): what they may be, and how they are replaced without damage.

An export is written into a temporary sibling ``.NAME.tmp-PID-XXXX`` and swapped into place by
two renames, so a failed or killed export never leaves ``--out`` half-written. The rules:

* **What may be a target** (:func:`check_target`, called before any long work): a new path;
  an empty folder; a folder holding a vae-deploy ``manifest.json`` (a previous export); or a
  folder holding at most :data:`MAX_LOOSE_FILES` regular files (a README, say) and nothing
  else. Refused: the filesystem root, the home folder or any folder above it, the current
  folder or any folder above it, a mount point, a symlink, a file, a folder without a
  manifest that holds subfolders or many files (``--out .`` in a project, ``--out ~``), a
  folder holding a FIFO, socket or device (it cannot be carried over), and a place this user
  cannot write or rename.
* **What is kept** (:func:`carry_over`): everything in the old folder that the old manifest
  did not list (user files, even ones named like artifacts), copied into the new folder.
  What the old manifest listed is the previous export's and is replaced.
* **Permissions**: the new folder gets the old folder's mode (or the umask's default).
* **Clean-up** (:func:`sweep_stale`): temporary folders that a killed export left beside the
  target (their process is gone) are removed on the next export.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from vae_deploy.artifacts import FORMAT_NAME, MANIFEST
from vae_deploy.errors import ExportError

MAX_LOOSE_FILES = 16
MAX_LOOSE_BYTES = 64 << 20
LEGACY_STALE_S = 3600  # temporary folders without a process id: removed when older than this


def _old_manifest_files(out: Path) -> set[str] | None:
    """The file names a vae-deploy manifest in ``out`` lists; None if there is none."""
    try:
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("format"), dict) or m["format"].get("name") != FORMAT_NAME:
        return None
    files = m.get("files")
    return {str(k).split("/")[0] for k in files} if isinstance(files, dict) else set()


def _special(path: Path) -> str | None:
    mode = os.lstat(path).st_mode
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return None


def _special_inside(folder: Path) -> tuple[Path, str] | None:
    for root, dirs, files in os.walk(folder):  # symlinked folders are not followed
        for name in dirs + files:
            p = Path(root) / name
            what = _special(p)
            if what:
                return p, what
    return None


def check_target(out: Path) -> None:
    """Refuse an ``--out`` that cannot be an export folder (module docstring), before any work."""
    shown = str(out)
    if out.is_symlink():
        raise ExportError(f"--out {shown!r} is a symlink; give the real folder (the swap would replace the link)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {shown!r} exists and is not a folder")
    resolved = out.resolve()
    home, cwd = Path.home().resolve(), Path.cwd().resolve()
    if resolved == resolved.parent:
        raise ExportError(f"--out {shown!r} is the filesystem root; give a new folder such as ./export")
    if resolved == home or resolved in home.parents:
        raise ExportError(f"--out {shown!r} is your home folder or above it; give a new folder such as ./export")
    if resolved == cwd or resolved in cwd.parents:
        raise ExportError(f"--out {shown!r} is the current folder or above it; give a new folder such as ./export")
    if out.is_dir() and os.path.ismount(resolved):
        raise ExportError(f"--out {shown!r} is a mount point, which cannot be replaced; give a folder inside it")
    parent = resolved.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ExportError(f"cannot create --out {shown!r}: {str(existing)!r} is a file, not a folder")
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to {str(existing or parent)!r} (permission denied): choose another --out")
    if not out.is_dir():
        return
    if not os.access(resolved, os.R_OK | os.W_OK | os.X_OK):
        raise ExportError(f"--out {shown!r} is not readable and writable by you, so it cannot be replaced")
    special = _special_inside(resolved)
    if special:
        raise ExportError(f"--out {shown!r} holds {special[1]} ({str(special[0])!r}), which an export cannot carry "
                          "over; move it away or choose another folder")
    if _old_manifest_files(resolved) is not None:
        return
    entries = list(resolved.iterdir())
    loose = [p for p in entries if p.is_file() and not p.is_symlink()]
    if len(loose) != len(entries) or len(loose) > MAX_LOOSE_FILES or sum(
            p.stat().st_size for p in loose) > MAX_LOOSE_BYTES:
        raise ExportError(
            f"--out {shown!r} holds {len(entries)} entries ({', '.join(sorted(p.name for p in entries)[:5])}...) "
            f"but no vae-deploy {MANIFEST}: it does not look like an export folder; choose a new or empty folder "
            f"(an existing folder may hold at most {MAX_LOOSE_FILES} plain files, such as a README)")


def make_temp(out: Path) -> Path:
    """The sibling temporary folder an export writes into (its name carries our process id)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise ExportError(f"cannot write to {str(out.parent)!r}: {e.strerror or e}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(out: Path) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` folders beside ``out`` whose export process is
    gone (or, for names without a process id, that are older than an hour); return them."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        prefix = next((f".{out.name}.{k}-" for k in ("tmp", "old") if p.name.startswith(f".{out.name}.{k}-")), None)
        if prefix is None or not p.is_dir() or p.is_symlink():
            continue
        rest = p.name[len(prefix):]
        pid_text = rest.split("-", 1)[0]
        if pid_text.isdigit() and "-" in rest:
            stale = not _alive(int(pid_text))
        else:
            stale = time.time() - p.stat().st_mtime > LEGACY_STALE_S
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def carry_over(out: Path, tmp: Path) -> None:
    """Copy into ``tmp`` everything in ``out`` that the old manifest did not list."""
    if not out.is_dir():
        return
    ours = _old_manifest_files(out) or set()
    for p in out.iterdir():
        if p.name == MANIFEST or p.name in ours or (tmp / p.name).exists():
            continue
        try:
            copy_entry(p, tmp)
        except OSError as e:
            raise ExportError(f"cannot carry {str(p)!r} over into the new export: {e}; nothing was changed") from None


def copy_entry(p: Path, tmp: Path) -> None:
    """Copy one entry of an old folder into its replacement as it is: a folder with its links, a
    link as a link (never what it points to)."""
    if p.is_dir() and not p.is_symlink():
        shutil.copytree(p, tmp / p.name, symlinks=True)
    else:
        shutil.copy2(p, tmp / p.name, follow_symlinks=False)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def swap_into_place(tmp: Path, out: Path) -> None:
    """Two renames on one filesystem; the old folder is removed only after the new one is in
    place, and is put back if the second rename fails. The new folder keeps the old one's mode."""
    mode = stat.S_IMODE(out.stat().st_mode) if out.is_dir() else _default_mode()
    try:
        os.chmod(tmp, mode | stat.S_IRWXU)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        if mode != mode | stat.S_IRWXU:
            os.chmod(out, mode)
    except OSError as e:
        raise ExportError(f"cannot move the new export into {str(out)!r}: {e.strerror or e}; "
                          "the old folder was left as it was") from None
