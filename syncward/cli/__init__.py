"""The ``syncward`` command line: run, status, report, reconcile, retry, cancel, serve, demo.

This package holds one module per command group, each declaring its click command beside
the code it runs: `run` (a manifest; `feed` reads it, `progress` draws the bar),
`redis` (``run redis://...``), `status`, `report`, `admin` (reconcile, retry, cancel),
`importing` (``import``: an existing pipeline's state),
`serve` (the dashboard and API of a store; ``run --http`` uses it too) and `demo`.
`common` is what they share at run time (exit codes, errors, handler loading, signals,
the event loop), `options` what they share in their declarations, `views` the
renderings. This module only makes the group and registers the commands.

It is the entry point (``syncward = "syncward.cli:main"``; ``python -m syncward.cli``
runs the same), so the command line is the one place that reads the environment
(``SYNCWARD_DB``, ``SYNCWARD_DEBUG``, ``SYNCWARD_ADMIN_TOKEN``) and the one place that
may choose uvloop.

Design note: commands are declared with ``click.command`` in their modules and added
here, rather than with ``@cli.command`` against a group imported from here: the command
modules then never import this package's ``__init__``, so there is no import cycle, and
each module can be read (and tested) on its own.
"""

from __future__ import annotations

import logging
import sys

import click

from syncward import __version__
from syncward.cli import admin, demo, importing, report, run, serve, status
from syncward.cli.common import ExitCode, fail
from syncward.cli.options import EXIT_STATUS

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100},
             epilog=EXIT_STATUS)
@click.version_option(__version__, prog_name="syncward")
@click.option("-v", "--verbose", is_flag=True,
              help="Also print the details behind each line (every lease a start-up "
                   "reconciliation gave back, retried checkpoints, ...).")
def cli(verbose: bool) -> None:
    """Run a manifest of jobs through syncward's runtime, watch it, report on it.

    A job is named by its identity (job key = SHA-256 of the canonical identity), so
    running the same manifest again resumes: committed jobs are never redone. The store
    is a SQLite file or a PostgreSQL database (shared by many processes); `status` and
    `report` read it while a run is going on.
    """
    if verbose:
        logging.getLogger("syncward").setLevel(logging.INFO)


cli.add_command(run.run)
cli.add_command(status.status)
cli.add_command(report.report)
cli.add_command(admin.reconcile)
cli.add_command(admin.retry)
cli.add_command(admin.cancel)
cli.add_command(demo.demo)
cli.add_command(serve.serve)
cli.add_command(importing.import_command)


def main() -> None:
    """The console script ``syncward``."""
    logging.basicConfig(level=logging.WARNING, format="syncward: %(message)s",
                        stream=sys.stderr)
    try:
        cli(prog_name="syncward")
    except KeyboardInterrupt:  # before the run installed its signal handling
        fail("interrupted", ExitCode.INTERRUPTED)
