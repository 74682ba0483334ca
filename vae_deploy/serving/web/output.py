"""The site's output folder: export's rules (``vae_deploy/output_folders.py``) for what may
be replaced, and a previous site's own file list for what is ours to replace.

* **Target**: ``writing.check_target`` refuses ``/``, home, the current folder and anything
  above them, mount points, symlinks, files, folders holding FIFOs or devices and folders of
  other things; on top, a non-empty folder must be a previous site (its ``site.json``) or
  hold only a few plain files that the site does not write over.
* **Kept**: everything in the old folder that the old ``site.json`` did not list (a README,
  a CNAME, files a user added) is copied into the new site; only the listed files are
  replaced. A site from before ``site.json`` listed its files is treated as owning exactly
  the files this builder writes.
* **Swap**: built in a temporary sibling, then two renames (``writing.swap_into_place``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vae_deploy import output_folders
from vae_deploy.errors import ExportError, VaeDeployError

SITE_MARKER = "site.json"
GENERATOR = "vae-deploy web"


class SiteError(VaeDeployError, ValueError):
    """The output folder cannot be (over)written safely."""



def _as_site_error(e: ExportError) -> SiteError:
    text = (str(e).replace("such as ./export", "such as ./site").replace("an export cannot", "a site cannot")
            .replace("it does not look like an export folder", "it does not look like a previous site"))
    return SiteError(text)


def previous_site(out: Path) -> dict[str, Any] | None:
    """The old ``site.json`` when ``out`` is a previous site, else None."""
    try:
        cfg = json.loads((out / SITE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and cfg.get("generator") == GENERATOR else None


def owned_names(cfg: dict[str, Any], default: set[str]) -> set[str]:
    """Top-level names an old site owns: its listed files, or (older sites) what we write."""
    files = cfg.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {f.split("/")[0] for f in files} | {SITE_MARKER}
    return default


def check_out(out: Path, export_dir: Path, writes: set[str]) -> None:
    """Refuse an ``--out`` the site cannot be written to (module docstring), before any work.
    ``writes``: the top-level names the new site writes."""
    try:
        output_folders.check_target(out)
    except ExportError as e:
        raise _as_site_error(e) from None
    resolved, export = out.resolve(), export_dir.resolve()
    if resolved == export or export in resolved.parents:
        raise SiteError(f"--out {str(out)!r} is inside the export folder {str(export_dir)!r}; choose another folder")
    if resolved in export.parents:
        raise SiteError(f"--out {str(out)!r} holds the export folder {str(export_dir)!r}; choose another folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    cfg = previous_site(out)
    ours = owned_names(cfg, writes) if cfg is not None else set()
    clash = sorted(p.name for p in out.iterdir() if p.name in writes and p.name not in ours)
    if cfg is None and (clash or any(not p.is_file() or p.is_symlink() for p in out.iterdir())):
        raise SiteError(f"--out {str(out)!r} is a non-empty folder that is not a previous `vae-deploy web` site; "
                        "refusing to replace it (choose a new folder)")
    if clash:
        raise SiteError(f"--out {str(out)!r} holds {', '.join(clash)}, which the previous site did not write and "
                        "the new one would overwrite; move them away or choose another folder")


def carry_over(out: Path, tmp: Path, writes: set[str]) -> None:
    """Copy into ``tmp`` everything in ``out`` that the old site did not own."""
    if not out.is_dir():
        return
    cfg = previous_site(out)
    ours = owned_names(cfg, writes) if cfg is not None else set()
    for p in out.iterdir():
        if p.name in ours or (tmp / p.name).exists():
            continue
        try:
            output_folders.copy_entry(p, tmp)
        except OSError as e:
            raise SiteError(f"cannot carry {str(p)!r} over into the new site: {e}; nothing was changed") from None


def make_temp(out: Path) -> Path:
    try:
        output_folders.sweep_stale(out)
        return output_folders.make_temp(out)
    except ExportError as e:
        raise _as_site_error(e) from None


def swap(tmp: Path, out: Path) -> None:
    try:
        output_folders.swap_into_place(tmp, out)
    except ExportError as e:
        raise _as_site_error(e) from None
