"""The artifact contract in code, with no torch and no onnx: what a consumer of ``export/``
needs (the spec, the manifest and its checksum checks). ``Runtime`` imports only this, so a
service that runs exported models needs numpy and onnxruntime, not torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from vae_deploy.errors import ArtifactError

FORMAT_VERSION = 1
META_PREFIX = "vae_deploy."


@dataclass(frozen=True)
class ExportSpec:
    input_shape: tuple[int, ...]  # per example, no batch axis; -1 marks a dynamic axis
    latent_shape: tuple[int, ...]  # per example: [latent_dim] (flat) or e.g. [4, -1, -1] (spatial)
    likelihood: str = "bernoulli"
    family: str = "mlp"
    scaling_factor: float = 1.0
    # diffusers' latent shift (SD3, Flux): a pipeline's latent is (z - shift_factor) * scaling_factor.
    shift_factor: float = 0.0
    # Names of dynamic axes beyond the batch: e.g. ("height", "width") for diffusers VAEs.
    dynamic_axes: tuple[str, ...] = ("batch",)
    source_sha256: str = ""
    source_path: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    # Data for checks at export: a few real examples (e.g. the checkpoint's test split).
    data_spec: dict[str, Any] = field(default_factory=dict)
    # Concrete shapes the export was traced and checked at. With dynamic axes they are what a
    # consumer needs to pick sizes (sampling draws z of ``example_latent_shape``); empty means
    # "same as input_shape / latent_shape" (no dynamic per-example axis).
    example_input_shape: tuple[int, ...] = ()
    example_latent_shape: tuple[int, ...] = ()
    # diffusers' per-channel latent statistics (SDXL-family, Wan, FLUX.2): a pipeline's latent is
    # (z - latents_mean) * scaling_factor / latents_std. Empty: the VAE declares none.
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    # The decoder output's nominal range (low, high), which images out map to 0..255: (-1, 1)
    # for diffusers VAEs, (0, 1) for Bernoulli decoders. Empty: not declared.
    output_range: tuple[float, ...] = ()
    # How the encoder defines q(z|x): "gaussian" (mu, logvar) or "deterministic" (z = mu).
    posterior: str = "gaussian"
    # Latent layouts decode(latent_layout=) accepts (vae_deploy.runtime.latents.LAYOUTS): "spatial" and the
    # pipelines' packings that fit this VAE. Empty: derived from the latent shape (older exports).
    latent_layouts: tuple[str, ...] = ()

    @property
    def latent_dim(self) -> int:
        """Elements per latent; -1 when the latent has a dynamic axis (it varies with the input)."""
        return -1 if self.has_dynamic_latent else math.prod(self.latent_shape)

    @property
    def has_dynamic_latent(self) -> bool:
        return any(d < 0 for d in self.latent_shape)

    @property
    def adapter(self) -> str | None:
        """The adapter a foreign (bring-your-own) model was exported through; None for ours."""
        return self.config.get("adapter") if self.config else None

    @property
    def concrete_input_shape(self) -> tuple[int, ...]:
        """The per-example input shape to use when a concrete one is needed (the example's)."""
        return tuple(self.example_input_shape) or tuple(self.input_shape)

    @property
    def concrete_latent_shape(self) -> tuple[int, ...]:
        return tuple(self.example_latent_shape) or tuple(self.latent_shape)

    def metadata(self, role: str, precision: str = "fp32") -> dict[str, str]:
        """The ONNX ``metadata_props`` of the contract; all values are strings."""
        from vae_deploy import __version__

        def shape(s: tuple[int, ...]) -> str:
            return ",".join(str(v) for v in s)

        return {
            f"{META_PREFIX}format_version": str(FORMAT_VERSION),
            f"{META_PREFIX}role": role,
            f"{META_PREFIX}input_shape": shape(self.input_shape),
            f"{META_PREFIX}latent_shape": shape(self.latent_shape),
            f"{META_PREFIX}latent_dim": str(self.latent_dim),
            f"{META_PREFIX}likelihood": self.likelihood,
            f"{META_PREFIX}family": self.family,
            f"{META_PREFIX}precision": precision,
            f"{META_PREFIX}dynamic_axes": ",".join(self.dynamic_axes),
            f"{META_PREFIX}scaling_factor": repr(float(self.scaling_factor)),
            f"{META_PREFIX}shift_factor": repr(float(self.shift_factor)),
            f"{META_PREFIX}example_input_shape": shape(self.concrete_input_shape),
            f"{META_PREFIX}example_latent_shape": shape(self.concrete_latent_shape),
            f"{META_PREFIX}source_sha256": self.source_sha256,
            f"{META_PREFIX}producer_version": __version__,
            **self._latent_metadata(),
            # "low,high" (e.g. "-1.0,1.0"), only where declared.
            **({f"{META_PREFIX}output_range": ",".join(repr(float(v)) for v in self.output_range)}
               if self.output_range else {}),
            f"{META_PREFIX}posterior": self.posterior,
        }

    def _latent_metadata(self) -> dict[str, str]:
        """The latent statistics and layouts, only where declared (older consumers see nothing new)."""
        out = {}
        for key in ("latents_mean", "latents_std", "latent_layouts"):
            values = getattr(self, key)
            if values:
                out[f"{META_PREFIX}{key}"] = ",".join(v if isinstance(v, str) else repr(float(v)) for v in values)
        return out

    def model_section(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["latent_shape"] = list(self.latent_shape)
        d["dynamic_axes"] = list(self.dynamic_axes)
        d["example_input_shape"] = list(self.concrete_input_shape)
        d["example_latent_shape"] = list(self.concrete_latent_shape)
        for k in ("latents_mean", "latents_std", "output_range", "latent_layouts"):
            d[k] = list(getattr(self, k))
        d["latent_dim"] = self.latent_dim
        for k in ("source_sha256", "source_path"):
            d.pop(k)
        return d

    @classmethod
    def from_model_section(cls, d: dict[str, Any], source: dict[str, Any] | None = None) -> ExportSpec:
        keep = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        keep["input_shape"] = tuple(keep["input_shape"])
        keep["latent_shape"] = tuple(keep["latent_shape"])
        keep["dynamic_axes"] = tuple(keep.get("dynamic_axes", ("batch",)))
        for k in ("example_input_shape", "example_latent_shape", "latents_mean", "latents_std", "output_range",
                  "latent_layouts"):
            keep[k] = tuple(keep.get(k, ()))
        if source:
            keep["source_sha256"] = source.get("sha256", "")
            keep["source_path"] = source.get("path", "")
        return cls(**keep)


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


MANIFEST = "manifest.json"
FORMAT_NAME = "vae-deploy-export"


def resolve_inside(folder: str | Path, name: str, what: str = "file") -> Path:
    """``folder / name`` if it is a relative path that stays inside ``folder`` (after symlinks)
    and, when it exists, names a regular file; otherwise ArtifactError naming the broken rule.
    Every file an export refers to passes through here before it is read."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"{what} name {name!r} is not a file name")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise ArtifactError(f"{what} {name!r} is an absolute path; an export may only refer to files inside its folder")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ArtifactError(f"{what} {name!r} climbs out with '..'; an export may only refer to files inside its folder")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if root not in target.parents:
        raise ArtifactError(f"{what} {name!r} resolves to {str(target)!r}, outside the export folder {str(root)!r} "
                            "(a symlink out?)")
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return target  # missing: the checksum check names it
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{what} {name!r} is not a regular file (a folder, FIFO or device)")
    return target


def _check_schema(path: Path, manifest: dict[str, Any]) -> None:
    """The keys every consumer reads, with the types it reads them as."""
    model, files = manifest.get("model"), manifest.get("files")
    if not isinstance(model, dict) or not isinstance(files, dict):
        missing = [k for k, v in (("model", model), ("files", files)) if not isinstance(v, dict)]
        raise ArtifactError(f"{str(path)!r} lacks {missing} (expected JSON objects); re-export the folder")
    for key in ("input_shape", "latent_shape"):
        v = model.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(d, int) and not isinstance(d, bool)
                                                       and (d > 0 or d == -1) for d in v):
            raise ArtifactError(f"{str(path)!r}: model.{key} is {v!r}; expected a list of positive sizes (-1: dynamic)")
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise ArtifactError(f"{str(path)!r}: files[{name!r}] is {entry!r}; expected an object with sha256 and size")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(folder: str | Path, *, verify: bool = True, only: list[str] | None = None) -> dict[str, Any]:
    """Read the manifest and (by default) check every listed file's size and sha256.

    ``only`` restricts the checksum check to some files (a runtime needs only the ONNX ones).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"export folder {str(folder)!r} does not exist (run `vae-deploy export` first)")
    if not path.exists():  # one that exists but is not a regular file is named by read_user_text
        raise ArtifactError(f"{str(folder)!r} has no {MANIFEST}: not a vae-deploy export folder")
    from vae_deploy.errors import InputError
    from vae_deploy.files import read_user_text

    try:  # a regular file under the manifest size limit, checked before reading
        manifest = json.loads(read_user_text(path, "manifest"))
    except InputError as e:
        raise ArtifactError(str(e)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{str(path)!r} is not valid JSON: {e}") from None
    fmt = manifest.get("format", {}) if isinstance(manifest, dict) else {}
    if fmt.get("name") != FORMAT_NAME or fmt.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{str(path)!r} has format {fmt!r}; expected {{'name': {FORMAT_NAME!r}, 'version': {FORMAT_VERSION}}}"
        )
    _check_schema(path, manifest)
    if verify:
        verify_files(folder, manifest, only=only)
    return manifest


def file_status(folder: Path, manifest: dict[str, Any], only: list[str] | None = None) -> dict[str, str]:
    """Each listed file's state against the manifest: "ok", or what is wrong with it (missing,
    a size that says truncated or replaced, a sha256 that says modified after export)."""
    status: dict[str, str] = {}
    for name, entry in manifest.get("files", {}).items():
        if only is not None and name not in only:
            continue
        try:
            p = resolve_inside(folder, name, "manifest file")
        except ArtifactError as e:
            status[name] = f"refused: {e}"
            continue
        if not p.is_file():
            status[name] = "missing"
        elif p.stat().st_size != entry.get("size"):
            status[name] = f"size {p.stat().st_size} bytes != manifest {entry.get('size')} (truncated or replaced)"
        elif file_sha256(p) != entry.get("sha256"):
            status[name] = "sha256 does not match the manifest (modified after export)"
        else:
            status[name] = "ok"
    return status


def verify_files(folder: Path, manifest: dict[str, Any], only: list[str] | None = None) -> None:
    """Raise one ArtifactError naming every listed file that fails ``file_status``."""
    problems = [f"{name}: {state}" for name, state in file_status(folder, manifest, only).items() if state != "ok"]
    if problems:
        raise ArtifactError(f"export folder {str(folder)!r} failed its checksum check:\n  " + "\n  ".join(problems))


def spec_from_manifest(manifest: dict[str, Any]) -> ExportSpec:
    return ExportSpec.from_model_section(manifest["model"], manifest.get("source"))
