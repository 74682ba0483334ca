"""Typed errors: the CLI turns every ``VaeDeployError`` into one clear line, not a traceback."""

from __future__ import annotations


class VaeDeployError(Exception):
    """Base class for errors a user can fix (bad input, bad file, bad option)."""


class ConfigError(VaeDeployError, ValueError):
    """An invalid model or export configuration."""


class DataError(VaeDeployError, ValueError):
    """A dataset that cannot be used as given."""


class CheckpointError(VaeDeployError, ValueError):
    """A checkpoint that is missing, damaged, foreign or unsafe."""


class ExportError(VaeDeployError, RuntimeError):
    """An export that failed; the output folder was left as it was."""


class ArtifactError(VaeDeployError, ValueError):
    """An export folder that is incomplete, tampered with or inconsistent."""


class ParityError(VaeDeployError, AssertionError):
    """Backends disagree beyond tolerance."""


class EngineError(VaeDeployError, RuntimeError):
    """An engine, device or precision that cannot run here (missing extra, no native bf16, ...)."""


class TrainingError(VaeDeployError, RuntimeError):
    """Training that cannot go on (a diverged loss, a device that is not there); nothing was written."""


class InputError(VaeDeployError, ValueError):
    """A request's input that does not fit the model (shape, dtype, NaN, a bad n or seed)."""


class ProviderError(VaeDeployError, RuntimeError):
    """An execution provider that was asked for explicitly but cannot run here."""
