"""The checkpoint format: a plain dict that ``torch.load(weights_only=True)`` can read.

    {"format": {"name": "vae-deploy-checkpoint", "version": 1},
     "config": {...VAEConfig as JSON types...},
     "state_dict": {name: tensor},
     "meta": {"data": DataSpec, "train": {...}, "metrics": {...}, "history": [...], "versions": {...}},
     "train_state": {...} or absent}  # epoch, Adam state, RNG state: what `train --resume` needs

No pickled classes or functions: loading never runs code, and a file that tries to is
refused with a clear error before anything in it executes.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae_deploy.artifacts import file_sha256  # noqa: F401 - part of this module's API
from vae_deploy.errors import CheckpointError, ConfigError
from vae_deploy.files import atomic_write_bytes
from vae_deploy.training.model import VAE, VAEConfig

FORMAT_NAME = "vae-deploy-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    config: VAEConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    train_state: dict[str, Any] | None = None  # for `train --resume`; None when written without one

    def build_model(self) -> VAE:
        """A VAE in eval mode with the checkpoint's weights. The config is first built on
        torch's "meta" device (no memory) and its shapes compared with the weights', so a config
        asking for absurd layer sizes is refused before anything is allocated."""
        try:
            with torch.device("meta"):
                skeleton = VAE(self.config)
        except (RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint config cannot build a model: {e}") from None
        want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in self.state_dict.items()}
        wrong = [f"{k}: config says {list(want[k])}, weights are {list(have[k])}"
                 for k in want if k in have and want[k] != have[k]]
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if wrong or missing or extra:
            detail = wrong[:3] + ([f"missing {missing[:3]}"] if missing else []) + (
                [f"unexpected {extra[:3]}"] if extra else [])
            raise CheckpointError("checkpoint weights do not fit its config: " + "; ".join(detail))
        model = VAE(self.config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint weights do not fit its config: {e}") from None
        return model.eval()


def library_versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime

    from vae_deploy import __version__

    return {
        "vae_deploy": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }


def save_checkpoint(
    path: str | Path, model: VAE, meta: dict[str, Any] | None = None, *, train_state: dict[str, Any] | None = None
) -> Path:
    """Save atomically; the file never holds anything but tensors and JSON types (and tuples)."""
    path = Path(path)
    payload = {
        "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": {"versions": library_versions(), **(meta or {})},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint; any problem becomes one ``CheckpointError``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    check_weights_file(p)
    if not zipfile.is_zipfile(p):
        raise CheckpointError(
            f"checkpoint {str(p)!r} is damaged, truncated or not a PyTorch file "
            f"(expected the zip archive torch.save writes, got {p.stat().st_size} bytes that are not one)"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message names the offending global after a long preamble; keep that part.
        detail = [ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise CheckpointError(
            f"checkpoint {str(p)!r} was refused without being run: it holds objects other than "
            f"tensors and plain data, which could execute code when loaded"
            + (f" ({detail[0].strip()})" if detail else "")
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {str(p)!r} is damaged or not a PyTorch file ({first})"
        ) from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is not a vae-deploy checkpoint: expected a dict with a 'format' "
            f"entry, got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else "")
        )
    fmt = obj["format"]
    if not isinstance(fmt, dict) or fmt.get("name") != FORMAT_NAME:
        raise CheckpointError(f"checkpoint {str(p)!r} has format {fmt!r}, expected name {FORMAT_NAME!r}")
    if fmt.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(p)!r} has format version {fmt.get('version')!r}; this vae-deploy reads "
            f"version {FORMAT_VERSION}"
        )
    for key, typ in (("config", dict), ("state_dict", dict), ("meta", dict)):
        if not isinstance(obj.get(key), typ):
            raise CheckpointError(f"checkpoint {str(p)!r}: entry {key!r} missing or not a {typ.__name__}")
    for key in ("input_shape", "hidden"):
        v = obj["config"].get(key)
        if v is not None and (not isinstance(v, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in v)):
            raise CheckpointError(f"checkpoint {str(p)!r} has an invalid config: {key} is {v!r}; "
                                  "expected a list of integers")
    try:
        config = VAEConfig.from_dict(obj["config"])
    except (ConfigError, TypeError, ValueError) as e:  # e.g. input_shape given as a string
        raise CheckpointError(f"checkpoint {str(p)!r} has an invalid config: {e}") from None
    sd = obj["state_dict"]
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {str(p)!r}: state_dict entries are not tensors: {bad[:5]}")
    state = obj.get("train_state")
    if state is not None and not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(p)!r}: entry 'train_state' is not a dict")
    ckpt = Checkpoint(config, sd, obj["meta"], path=p.resolve(), sha256=file_sha256(p), train_state=state)
    ckpt.build_model()  # validates that the weights fit the config
    return ckpt


def check_weights_file(p: Path) -> None:
    """A regular file under the weights size limit (a FIFO would hang torch.load), as one
    ``CheckpointError``."""
    from vae_deploy.errors import InputError
    from vae_deploy.files import check_user_file

    try:
        check_user_file(p, "weights")
    except InputError as e:
        raise CheckpointError(str(e)) from None
