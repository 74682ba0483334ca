"""What ``vae-deploy verify`` / ``vae_deploy.verify(...)`` return and print.

``VerifyResult`` is the JSON report (a dict: ``result["passed"]`` keeps working, and
``json.dumps(result)`` writes the schema) with a readable ``str()``, ``.passed`` and
``.to_dict()``. The text says what evidence was really used: which reference (eager, or
``ort-cpu`` when torch is not installed), which inputs (real or random), and warnings first.
"""

from __future__ import annotations

from typing import Any

from vae_deploy.checks.parity import REL_NOTE, format_report


class VerifyResult(dict):
    """The verify report: a dict (the JSON schema ``vae-deploy-verify/1``) that prints readably."""

    @property
    def passed(self) -> bool:
        return bool(self["passed"])

    @property
    def warnings(self) -> list[str]:
        return list(self.get("warnings", []))

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    def format(self, verbose: bool = False) -> str:
        return format_verification(self, verbose=verbose)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        reports = ", ".join(f"{r['candidate']}: {'pass' if r['summary']['passed'] else 'FAIL'}"
                            for r in self.get("reports", []))
        return (f"<VerifyResult {'PASS' if self.passed else 'FAIL'} {self.get('export_dir')!r} against "
                f"{self['reference'].get('backend', 'eager')} ({reports})>")


def format_verification(result: dict[str, Any], verbose: bool = False) -> str:
    ref = result["reference"]
    lines = [f"verifying {result['export_dir']} against {ref.get('backend', 'eager')}"
             + (f" ({ref['path']})" if ref.get("path") else "")]
    warnings = result.get("warnings", [])
    lines.extend(f"WARNING: {w}" for w in warnings)
    data = result.get("data")
    if data:
        lines.append(f"inputs: {data['label']} ({data['description']})")
    integ = result["integrity"]
    lines.append(f"integrity: {'PASS' if integ['passed'] else 'FAIL'}")
    for name, status in integ["files"].items():
        if status != "ok" or verbose:
            lines.append(f"  {name}: {status}")
    con = result["contract"]
    lines.append(f"contract: {'PASS' if con['passed'] else 'FAIL'}")
    lines.extend(f"  {p}" for p in con["problems"])
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name}: not checked ({why})")
    run = result.get("run_check")
    if run:
        lines.append(f"parity: not checked: no eager reference and no other backend here to compare {run['backend']} with")
        lines.append(f"runs: {'PASS' if run['passed'] else 'FAIL'} ({run['backend']} ran {run['n_cases']} cases; "
                     "every output finite and of the contract's shape)")
        lines.extend(f"  {p}" for p in run["problems"])
    elif not result["reports"]:
        lines.append("parity: no backend to compare")
    for r in result["reports"]:
        if "error" in r:
            lines.append(f"{r['candidate']}: FAIL, {r['error']}")
        else:
            lines.append(format_report(r, verbose=verbose))
    if any("error" not in r for r in result["reports"]):
        lines.append(f"({REL_NOTE})")
    lines.extend(f"WARNING: {w}" for w in warnings)  # again, next to the verdict
    verdict = "PASS" if result["passed"] else "FAIL"
    if result["passed"] and warnings:
        verdict += f" (with {len(warnings)} warning{'s' if len(warnings) > 1 else ''} above)"
    lines.append("RESULT: " + verdict)
    return "\n".join(lines)
