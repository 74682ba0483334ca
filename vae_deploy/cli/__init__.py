"""The ``vae-deploy`` command line: thin click wrappers, one module per command group; all logic
lives in the library modules. A new command is a module here plus one ``add_command`` line."""

from __future__ import annotations

import sys

import click

from vae_deploy.cli import batch, bench, export, run, serve, train, tune, verify, web
from vae_deploy.cli.options import FriendlyGroup


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vae-deploy")
def main() -> None:
    """Train a VAE, export its encoder and decoder, and run, verify and measure them."""


for _command in (train.train, train.info, export.export, run.sample, run.reconstruct, run.decode,
                 verify.verify,
                 serve.triton_repo, serve.serve, bench.bench, tune.tune, batch.batch, web.web):
    main.add_command(_command)


def run_main() -> None:  # pragma: no cover - console entry for `python -m vae_deploy`
    sys.exit(main())
