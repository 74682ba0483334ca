"""``vae_deploy.verify(model, "export/", example_input=x)``: the counterpart of
``vae_deploy.export(model, "export/", example_input=x)`` (:func:`vae_deploy.exporters.export`).

``model`` is anything :func:`vae_deploy.adapters.to_exportable` accepts: a checkpoint path, a
``Checkpoint``, a ``VAE``, or your own VAE-like module (probed on ``example_input``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vae_deploy.checks.report import VerifyResult


def verify(
    model: Any = None,
    export_dir: str | Path = "export",
    *,
    example_input: Any = None,
    likelihood: str | None = None,
    dynamic_spatial: bool | None = None,
    **options: Any,
) -> VerifyResult:
    """Integrity, contract and parity of ``export_dir`` against ``model`` (eager); returns a
    :class:`~vae_deploy.checks.report.VerifyResult`: ``print(result)`` shows the report,
    ``result.passed`` the verdict, ``result.to_dict()`` the JSON (``result["passed"]`` works too).

    ``model=None`` (or a checkpoint path) verifies against the checkpoint the manifest records.
    With a dynamic-size export, ``example_input`` picks the size checked (e.g. 48x48 images
    for an export traced at 32x32). ``likelihood``/``dynamic_spatial`` must match the export's.
    """
    from vae_deploy.adapters import to_exportable
    from vae_deploy.checks.verify import verify_export

    if model is None or isinstance(model, (str, Path)):
        return verify_export(export_dir, checkpoint=model, **options)
    reference = to_exportable(model, example_input, likelihood=likelihood, dynamic_spatial=dynamic_spatial)
    return verify_export(export_dir, reference=reference, **options)
