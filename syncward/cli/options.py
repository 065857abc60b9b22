"""What the commands' declarations share: the common options, the exit-status epilog, stdout.

Only click declarations and the console live here; what the options mean at run time
(exit codes, errors, the loop) is in `syncward.cli.common`.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from syncward.cli.common import DEFAULT_DB

__all__ = ["EXIT_STATUS", "FORMATS", "db_option", "json_option", "split_key", "stdout"]

EXIT_STATUS = """\b
Exit status:
  0  every manifest entry succeeded or was skipped (other commands: done)
  1  some entries failed or were rejected, or the runtime stopped on an error
  2  usage or configuration error (nothing was done)
  3  interrupted before finishing; run the same command again to resume
"""
FORMATS = click.Choice(["txt", "csv", "jsonl"], case_sensitive=False)


def db_option(fn: Any) -> Any:
    return click.option(
        "--db", default=DEFAULT_DB, show_default=True, envvar="SYNCWARD_DB",
        show_envvar=True, metavar="URL",
        help="The store: sqlite:///relative/path.db, sqlite:////absolute/path.db, or "
             "postgresql://user@host:port/db[?schema=name] (shared by many processes).")(fn)


def json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print exactly one JSON object on stdout instead of tables.")(fn)


def split_key(value: str | None) -> tuple[str, ...] | None:
    """``--key a,b`` as ``("a", "b")``; None when not given."""
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(","))


def stdout(**kwargs: Any) -> Console:
    """A console on stdout as every command prints: no highlighting, lines not cut."""
    return Console(highlight=False, soft_wrap=True, **kwargs)
