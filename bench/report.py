"""Write bench/results/report.{md,json}, throughput.png and latency.png.

    python bench/report.py                      # the default sweep (what `make bench` runs)
    python bench/report.py export --quick       # any `vae-deploy bench` arguments
    python bench/report.py --from bench/results/report.json   # re-render an earlier run

The measuring lives in ``vae_deploy.benchmarking`` and the rendering in ``vae_deploy.benchmarking.report``,
so ``vae-deploy bench`` (installed users, no checkout) writes the same report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if argv[:1] == ["--from"]:
        if len(argv) < 2:
            print("usage: python bench/report.py --from report.json [OUT_DIR]", file=sys.stderr)
            return 2
        from vae_deploy.benchmarking.report import write_report

        src = Path(argv[1])
        out = Path(argv[2]) if len(argv) > 2 else src.parent
        paths = write_report(json.loads(src.read_text()), out)
        print("\n".join(str(p) for p in paths.values()))
        return 0
    from vae_deploy.cli import main as cli

    if not argv or argv[0].startswith("-"):
        default = ROOT / "export"
        argv = ([str(default)] if (default / "manifest.json").is_file() else []) + argv
    if "--out" not in argv:
        argv += ["--out", str(ROOT / "bench" / "results")]
    return cli.main(["bench", *argv], standalone_mode=True) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
