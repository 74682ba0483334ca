"""The output folder: shard files written atomically, and a manifest that lists each finished
shard (rows, files, sha256) so that a rerun resumes instead of starting over.

A shard is recorded only after its files are renamed into place: one line appended to
``_shards.jsonl`` (constant cost per shard, however many there are), folded into
``_manifest.json`` (replaced atomically) when the job is resumed or finishes. The bookkeeping
names start with ``_`` or ``.`` so that ``pyarrow.parquet.read_table(OUT)`` reads the shards
and skips them; folders written under the old names (``manifest.json``, ``shards.jsonl``)
still resume, and are moved to the new names when they do. One job at a time owns the
folder (``.lock``, see :mod:`vae_deploy.serving.batch.lock`). A crash at any
moment leaves either a recorded, verifiable shard or one that is recomputed (a torn last
journal line is ignored): never a row twice, never a row missing. Shard file names come from
the shard plan, so a shard computed twice (a worker died after finishing) overwrites itself
with identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.artifacts import file_sha256
from vae_deploy.errors import VaeDeployError
from vae_deploy.serving.batch.lock import LOCK, FolderLock
from vae_deploy.serving.batch.plan import Shard

MANIFEST = "_manifest.json"
JOURNAL = "_shards.jsonl"
LEGACY_MANIFEST = "manifest.json"  # before round 3: still read, so older jobs resume
LEGACY_JOURNAL = "shards.jsonl"
FORMAT_NAME = "vae-deploy-batch"
FORMAT_VERSION = 1
FORMATS = ("npy", "parquet", "png")
ORDER = ("shard k holds rows [start, stop) of the job in input order (sampling: the draws seeded by "
         "SeedSequence(seed).spawn()[k]); concatenating the shards in index order gives every row once")


_UMASK = os.umask(0)
os.umask(_UMASK)


class BatchError(VaeDeployError, RuntimeError):
    """A batch job that cannot start or continue (foreign output folder, changed job, lost workers)."""


def write_failed(e: OSError, what: str, folder: Path) -> BatchError:
    """One line for a failed write (a full disk above all): the shards recorded so far stay
    valid, so the same command resumes once there is room."""
    import errno

    why = "out of disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return BatchError(f"could not write {what} in --out {str(folder)!r}: {why}; the shards written so far are "
                      "kept: free space (or fix the folder) and rerun the same command to resume")


def find_manifest(folder: Path) -> Path | None:
    """The folder's manifest under its current name or, for an older job, the legacy name."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_manifest(path: Path) -> dict[str, Any]:
    from vae_deploy.files import read_user_text

    return json.loads(read_user_text(path, "manifest"))


def atomic_write(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename into place: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; shards are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def encode_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def encode_parquet(shard: Shard, arrays: dict[str, np.ndarray]) -> bytes:
    """One table per shard: the global ``row`` index and one fixed-size-list column per output
    (flattened rows; the per-row shapes are in the schema metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"row": pa.array(np.arange(shard.start, shard.stop, dtype=np.int64))}
    shapes = {}
    for name, a in arrays.items():
        flat = np.ascontiguousarray(a).reshape(a.shape[0], -1)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        shapes[name] = list(a.shape[1:])
    table = pa.table(cols).replace_schema_metadata({"vae_deploy.shapes": json.dumps(shapes)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


class OutputFolder:
    """``OUT``: shard files plus ``_manifest.json``; owned by exactly one job description and,
    between ``open`` and ``close``, by exactly one process."""

    def __init__(self, path: Path, job: dict[str, Any], fmt: str,
                 output_range: tuple[float, float] | None = None) -> None:
        """``output_range``: what ``png`` maps to 0..255 (:func:`vae_deploy.images.to_uint8`)."""
        if fmt not in FORMATS:
            raise BatchError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt == "png" and job.get("task") == "encode":
            raise BatchError("--format png writes images: it is for batch decode and batch sample, not encode "
                             "(latents are not images; use npy or parquet)")
        if fmt == "png" and output_range is None:
            raise BatchError("--format png needs the decoder's output range, and this export declares none "
                             "(a Gaussian VAE trained on data of unknown range); use npy or parquet")
        self.output_range = output_range
        self.path = Path(path)
        self.job = job
        self.fmt = fmt
        self.manifest_path = self.path / MANIFEST
        self.journal_path = self.path / JOURNAL
        self.shards: dict[int, dict[str, Any]] = {}
        self.resumed: list[int] = []  # shards found written and verified at open
        self.lock = FolderLock(self.path, BatchError)
        self.created = False  # this job made the folder: removed again if it writes nothing

    # --- opening: new, or resuming the same job -------------------------------------------
    def open(self) -> None:
        """Take the folder's lock, check that an existing folder holds this job and keep its
        verified shards. ``close`` releases the lock."""
        if self.path.exists() and not self.path.is_dir():
            raise BatchError(f"--out {str(self.path)!r} is a file; expected a folder for the shards")
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as e:
            raise BatchError(f"cannot create or lock --out {str(self.path)!r}: {e.strerror or e}") from None
        try:
            for pattern in (".shard-*.tmp", f".{MANIFEST}.*.tmp", f".{LEGACY_MANIFEST}.*.tmp"):  # left by a crash
                for stale in self.path.glob(pattern):
                    stale.unlink(missing_ok=True)
            found = find_manifest(self.path)
            if found is not None:
                self._load_existing(found)
            elif any(p.name != LOCK for p in self.path.iterdir()):
                raise BatchError(f"--out {str(self.path)!r} is not empty and holds no {MANIFEST}: expected a new "
                                 "folder or one a previous batch job wrote; nothing was changed")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock; a folder this job created and wrote nothing into goes again."""
        self.lock.release()
        if self.created and not self.shards:
            try:
                self.path.rmdir()
            except OSError:
                pass

    def _load_existing(self, found: Path) -> None:
        try:
            old = _read_manifest(found)
            fmt = old["format"]
        except (OSError, ValueError, KeyError, TypeError, VaeDeployError) as e:
            raise BatchError(f"{str(found)!r} is not a readable batch manifest ({e}); "
                             "nothing was changed") from None
        if fmt != {"name": FORMAT_NAME, "version": FORMAT_VERSION}:
            raise BatchError(f"{str(self.manifest_path)!r} has format {fmt!r}, expected "
                             f"{{'name': {FORMAT_NAME!r}, 'version': {FORMAT_VERSION}}}; nothing was changed")
        old_job = old.get("job", {})
        if old_job != self.job:
            keys = sorted(k for k in set(old_job) | set(self.job) if old_job.get(k) != self.job.get(k))
            raise BatchError(f"--out {str(self.path)!r} holds a different job (differs in: {', '.join(keys)}); "
                             "use a new --out folder or the same options to resume; nothing was changed")
        journals = [self.path / LEGACY_JOURNAL, self.journal_path]
        for entry in [*old.get("shards", []), *(e for j in journals for e in _journal_entries(j))]:
            if self._verifies(entry):
                self.shards[int(entry["index"])] = entry
        self.resumed = sorted(self.shards)
        self._save(complete=False)  # fold the journal in: the verified shards, once each
        if found.name == LEGACY_MANIFEST:  # moved to the new names: the old ones would confuse readers
            (self.path / LEGACY_JOURNAL).unlink(missing_ok=True)
            found.unlink(missing_ok=True)

    def _verifies(self, entry: dict[str, Any]) -> bool:
        for f in entry.get("files", {}).values():
            p = self.path / f["path"]
            if not p.is_file() or p.stat().st_size != f["bytes"] or file_sha256(p) != f["sha256"]:
                return False
        return bool(entry.get("files"))

    # --- writing -------------------------------------------------------------------------
    def write_shard(self, shard: Shard, arrays: dict[str, np.ndarray], worker: str = "") -> None:
        """Files first (atomically), then the manifest entry that makes the shard count."""
        for name, a in arrays.items():
            if a.shape[0] != shard.rows:
                raise BatchError(f"shard {shard.index}: output {name!r} has {a.shape[0]} rows, expected {shard.rows}")
        if self.fmt == "npy":
            blobs = {name: (f"{shard.stem}.{name}.npy", encode_npy(a)) for name, a in arrays.items()}
        elif self.fmt == "png":
            blobs = self._png_blobs(shard, arrays)
        else:
            blobs = {"table": (f"{shard.stem}.parquet", encode_parquet(shard, arrays))}
        files = {}
        for key, (fname, data) in blobs.items():
            try:
                atomic_write(self.path / fname, data)
            except OSError as e:
                raise write_failed(e, f"shard {shard.index} ({fname})", self.path) from None
            files[key] = {"path": fname, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        entry = {
            "index": shard.index, "start": shard.start, "stop": shard.stop, "rows": shard.rows,
            "files": files, "shapes": {name: list(a.shape[1:]) for name, a in arrays.items()},
            "worker": worker,
        }
        if not self.manifest_path.is_file():  # a new folder: the job's identity goes in first
            self._save(complete=False)
        try:
            with self.journal_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a torn line is skipped on resume: the shard is recomputed
            raise write_failed(e, f"the journal entry of shard {shard.index}", self.path) from None
        self.shards[shard.index] = entry

    def _png_blobs(self, shard: Shard, arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, bytes]]:
        """One PNG per row, named by its row in the job, zero-padded (sorted names = input order)."""
        from vae_deploy.images import png_bytes, to_uint8

        digits = max(5, len(str(max(int(self.job.get("n") or 0) - 1, 0))))
        blobs = {}
        for name, a in arrays.items():
            for i, im in enumerate(to_uint8(a, self.output_range)):  # type: ignore[arg-type]
                row = shard.start + i
                blobs[f"{name}/{row}"] = (f"{name}-{row:0{digits}d}.png", png_bytes(im))
        return blobs

    def finish(self, summary: dict[str, Any]) -> None:
        self._save(complete=True, summary=summary)

    def _save(self, complete: bool, summary: dict[str, Any] | None = None) -> None:
        doc = {
            "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
            "job": self.job,
            "order": ORDER,
            "complete": complete,
            "rows_written": sum(e["rows"] for e in self.shards.values()),
            "shards": [self.shards[k] for k in sorted(self.shards)],
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.fmt == "png":
            doc["images"] = {"output_range": list(self.output_range or ()),
                             "rule": "uint8 = round_half_even(clip((x - low) / (high - low), 0, 1) * 255), "
                                     "as diffusers' VaeImageProcessor.postprocess"}
        if summary is not None:
            doc["summary"] = summary
        try:
            atomic_write(self.manifest_path, (json.dumps(doc, indent=1) + "\n").encode())
        except OSError as e:  # the old manifest and the journal stay: nothing recorded is lost
            raise write_failed(e, MANIFEST, self.path) from None
        self.journal_path.unlink(missing_ok=True)  # everything in it is in the manifest now


def _journal_entries(path: Path) -> list[dict[str, Any]]:
    """Entries appended since the manifest was last written; a torn line (a crash mid-append)
    is skipped, so its shard is recomputed."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "index" in entry:
            out.append(entry)
    return out


def recorded_shards(out: str | Path) -> list[dict[str, Any]]:
    """The shards a job (running, stopped or finished) has recorded so far, by index, without
    checking files: for watching a job's progress from outside."""
    folder = Path(out)
    found = find_manifest(folder)
    try:
        doc = _read_manifest(found) if found else {}
    except (OSError, ValueError, VaeDeployError):
        return []
    if not found:
        return []
    journal = folder / (JOURNAL if found.name == MANIFEST else LEGACY_JOURNAL)
    by_index = {int(e["index"]): e for e in [*doc.get("shards", []), *_journal_entries(journal)]}
    return [by_index[k] for k in sorted(by_index)]


def read_outputs(out: str | Path, *, verify: bool = True) -> dict[str, np.ndarray]:
    """A finished job's outputs, shards concatenated in order (checksums checked): what a
    consumer of ``OUT`` does, and how the tests compare jobs."""
    folder = Path(out)
    found = find_manifest(folder)
    try:
        if found is None:
            raise FileNotFoundError(f"no {MANIFEST} (nor {LEGACY_MANIFEST})")
        doc = _read_manifest(found)
    except (OSError, ValueError, VaeDeployError) as e:
        raise BatchError(f"{str(folder)!r} has no readable {MANIFEST}: {e}") from None
    if not doc.get("complete"):
        raise BatchError(f"the batch job in {str(folder)!r} has not finished (rerun it to resume)")
    parts: dict[str, list[np.ndarray]] = {}
    for entry in doc["shards"]:
        for key, f in entry["files"].items():
            p = folder / f["path"]
            if verify and file_sha256(p) != f["sha256"]:
                raise BatchError(f"{str(p)!r} does not match its sha256 in the manifest")
            if p.suffix == ".npy":
                parts.setdefault(key, []).append(np.load(p, allow_pickle=False))
            elif p.suffix == ".png":
                parts.setdefault(key.split("/")[0], []).append(_read_png(p)[None])
            else:
                for name, a in _read_parquet(p).items():
                    parts.setdefault(name, []).append(a)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    shapes = json.loads(table.schema.metadata[b"vae_deploy.shapes"])
    out = {"row": table.column("row").to_numpy()}
    for name, shape in shapes.items():
        flat = table.column(name).combine_chunks().flatten().to_numpy()
        out[name] = flat.reshape(-1, *shape)
    return out


def _read_png(path: Path) -> np.ndarray:
    """uint8 [H, W, C] (C = 1 for grayscale)."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a
