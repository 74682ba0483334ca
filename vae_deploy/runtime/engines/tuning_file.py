"""The tuning file: read safely, every value type checked, written under a lock, bounded.

It is a cache of measurements (default ``$XDG_CACHE_HOME/vae-deploy/tuning.json``), but ``auto``
acts on what it says, so a damaged or hand-edited file must give one clear line, never a crash or
a hang: it is read through :func:`vae_deploy.files.read_user_bytes` (a regular file of at most
16 MiB: a FIFO or ``/dev/zero`` is refused before a byte is read) and every field is type-checked
(:func:`validate`). Writers take an exclusive ``flock`` on ``<file>.lock`` and read-modify-write
inside it, so two concurrent ``tune`` runs keep both records; the write itself is atomic, so a
reader without the lock sees the old or the new file. At most ``MAX_RECORDS`` records are kept
(the oldest are dropped). Files of an older schema are treated as empty and replaced on the next
write (they are measurements, cheap to redo).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vae_deploy.errors import ConfigError

SCHEMA = "vae-deploy-tuning/2"
OLD_SCHEMAS = ("vae-deploy-tuning/1",)
MAX_RECORDS = 256


def default_tuning_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vae-deploy" / "tuning.json"


def empty() -> dict[str, Any]:
    return {"schema": SCHEMA, "records": {}}


def read_tuning(path: str | Path) -> dict[str, Any]:
    """The file's content, validated; an empty one when it does not exist yet."""
    from vae_deploy.files import read_user_bytes

    path = Path(path)
    try:
        raw = read_user_bytes(path, "tuning file")
    except FileNotFoundError:
        return empty()
    except IsADirectoryError:
        raise ConfigError(f"tuning file {str(path)!r} is a folder; pass a file path") from None
    except OSError as e:
        raise ConfigError(f"tuning file {str(path)!r} cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"tuning file {str(path)!r} is not readable JSON ({e}); delete it to re-tune") from None
    if isinstance(data, dict) and data.get("schema") in OLD_SCHEMAS:
        return empty()
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(f"tuning file {str(path)!r} is not a {SCHEMA} file; delete it or pass another path")
    validate(data, path)
    return data


# --- validation: one ConfigError naming the first bad field -----------------------------------

def _bad(path: Path, field: str, want: str, got: Any) -> ConfigError:
    shown = repr(got) if len(repr(got)) <= 60 else repr(got)[:57] + "..."
    return ConfigError(f"tuning file {str(path)!r}: {field} must be {want}, got {shown} "
                       f"({type(got).__name__}); delete the file (or that record) to re-tune")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(path: Path, field: str, v: Any, want: str, ok: Callable[[Any], bool]) -> None:
    if not ok(v):
        raise _bad(path, field, want, v)


def _str_map(path: Path, field: str, v: Any, want: str, ok: Callable[[Any], bool]) -> None:
    _check(path, field, v, "an object", lambda x: isinstance(x, dict))
    for k, item in v.items():
        _check(path, f"{field}.{k}", item, want, ok)


def validate_record(rid: str, rec: Any, path: Path) -> None:
    f = f"records.{rid}"
    _check(path, f, rec, "an object", lambda x: isinstance(x, dict))
    key = rec.get("key")
    _check(path, f"{f}.key", key, "an object", lambda x: isinstance(x, dict))
    _check(path, f"{f}.key.cpu_model", key.get("cpu_model"), "a string", lambda x: isinstance(x, str))
    _str_map(path, f"{f}.key.cpu_flags", key.get("cpu_flags"), "true or false", lambda x: isinstance(x, bool))
    _str_map(path, f"{f}.key.versions", key.get("versions"), "a string or null", lambda x: x is None or isinstance(x, str))
    _str_map(path, f"{f}.key.graphs_sha256", key.get("graphs_sha256"), "a string or null",
             lambda x: x is None or isinstance(x, str))
    _check(path, f"{f}.key.threads", key.get("threads"), "null or an integer >= 1",
           lambda x: x is None or (isinstance(x, int) and not isinstance(x, bool) and x >= 1))
    _check(path, f"{f}.key.fp32_only", key.get("fp32_only"), "true or false", lambda x: isinstance(x, bool))
    _check(path, f"{f}.key.max_error", key.get("max_error"), "null or a finite number >= 0",
           lambda x: x is None or (_number(x) and x >= 0))
    _check(path, f"{f}.key.latent_shape", key.get("latent_shape"), "a list of positive integers",
           lambda x: isinstance(x, list) and bool(x) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                            for d in x))
    _check(path, f"{f}.created", rec.get("created"), "a string", lambda x: isinstance(x, str))
    cells = rec.get("batch_sizes")
    _check(path, f"{f}.batch_sizes", cells, "a non-empty object", lambda x: isinstance(x, dict) and bool(x))
    for bs, cell in cells.items():
        c = f"{f}.batch_sizes.{bs}"
        _check(path, c, bs, "keyed by a positive integer", lambda x: x.isdigit() and int(x) > 0)
        _check(path, c, cell, "an object", lambda x: isinstance(x, dict))
        _str_map(path, f"{c}.samples_per_s", cell.get("samples_per_s"), "a finite number > 0",
                 lambda x: _number(x) and x > 0)
        winner = cell.get("winner")
        _str_map(path, f"{c}.winner", winner, "a string", lambda x: isinstance(x, str))
    gates = rec.get("gates", {})
    _check(path, f"{f}.gates", gates, "an object", lambda x: isinstance(x, dict))
    for label, g in gates.items():
        _check(path, f"{f}.gates.{label}", g, "an object", lambda x: isinstance(x, dict))
        _check(path, f"{f}.gates.{label}.passed", g.get("passed"), "true or false", lambda x: isinstance(x, bool))
        if "measured" in g:
            _check(path, f"{f}.gates.{label}.measured", g["measured"], "an object", lambda x: isinstance(x, dict))
    _str_map(path, f"{f}.excluded", rec.get("excluded", {}), "a string", lambda x: isinstance(x, str))


def validate(data: dict[str, Any], path: Path) -> None:
    records = data.get("records")
    _check(path, "records", records, "an object", lambda x: isinstance(x, dict))
    for rid, rec in records.items():
        validate_record(rid, rec, path)


# --- writing: locked read-modify-write, atomic replace, bounded ----------------------------------

@contextmanager
def locked(path: Path):  # type: ignore[no-untyped-def]
    """An exclusive ``flock`` on ``<path>.lock`` (released when the process ends, however it ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_record(path: str | Path, rid: str, record: dict[str, Any], *, max_records: int = MAX_RECORDS) -> None:
    """Add (or replace) one record, keeping the newest ``max_records``."""
    from vae_deploy.files import atomic_write_bytes

    path = Path(path)
    with locked(path):
        data = read_tuning(path)
        data["records"].pop(rid, None)
        data["records"][rid] = record
        if len(data["records"]) > max_records:
            newest = sorted(data["records"].items(), key=lambda kv: kv[1].get("created", ""))[-max_records:]
            data["records"] = dict(newest)
        atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
