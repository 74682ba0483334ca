"""Which optional extra provides a missing import: one message for every command.

The base install runs exports (numpy, onnx, onnxruntime, click, pillow); training, exporting,
eager verification, benchmarks and Triton are extras. A command that reaches for a missing
package gets one line naming the extra to install instead of ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib.util

from vae_deploy.errors import VaeDeployError

# top-level import name -> (extra, what it is for)
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("export", "PyTorch"),
    "onnxscript": ("export", "the ONNX exporter"),
    "sklearn": ("train", "the bundled digits (scikit-learn)"),
    "matplotlib": ("bench", "plots"),
    "pytest_benchmark": ("bench", "pytest-benchmark"),
    "pytriton": ("serve", "PyTriton"),
    "tritonclient": ("serve", "the Triton client"),
    "diffusers": ("byo", "diffusers"),
}

# commands whose torch comes with training rather than exporting
TRAIN_COMMANDS = ("train", "info")


class MissingExtraError(VaeDeployError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def extra_for(module: str, command: str | None = None) -> str | None:
    """The extra that installs ``module`` (``None`` for a module no extra provides)."""
    top = module.split(".")[0]
    if top not in EXTRAS:
        return None
    extra = EXTRAS[top][0]
    return "train" if extra == "export" and command in TRAIN_COMMANDS else extra


def missing_extra(module: str, command: str | None = None) -> MissingExtraError | None:
    """The error to show for ``ModuleNotFoundError: module`` (``None``: not an optional package)."""
    extra = extra_for(module, command)
    if extra is None:
        return None
    top = module.split(".")[0]
    what = f"`vae-deploy {command}`" if command else "this"
    return MissingExtraError(
        f"{what} needs {EXTRAS[top][1]} (module {top!r}), which is not installed here: "
        f"pip install 'vae-deploy[{extra}]'")


def require(module: str, command: str | None = None) -> None:
    """Raise :class:`MissingExtraError` now, before long work starts, if ``module`` is missing."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        err = missing_extra(module, command)
        raise err if err is not None else ModuleNotFoundError(f"No module named {module!r}", name=module)


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
