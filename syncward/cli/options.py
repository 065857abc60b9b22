"""What the commands' declarations share: the common options, the exit-status epilog, stdout.

Only click declarations and the console live here; what the options mean at run time
(exit codes, errors, the loop) is in `syncward.cli.common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from syncward.cli.common import DEFAULT_DB

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["EXIT_STATUS", "FORMATS", "admin_token_file_option", "db_option", "http_option",
           "json_option", "split_key", "stdout"]

EXIT_STATUS = """\b
Exit status:
  0  every manifest entry succeeded or was skipped (other commands: done)
  1  some entries failed or were rejected, or the runtime stopped on an error
  2  usage or configuration error (nothing was done)
  3  interrupted before finishing: SIGINT/SIGTERM, or the store's environment failed
     (disk full, read-only, file removed; one line says which); nothing committed is
     lost: mend it and run the same command again to resume
"""
FORMATS = click.Choice(["txt", "csv", "jsonl"], case_sensitive=False)


def db_option(fn: Any) -> Any:
    return click.option(
        "--db", default=DEFAULT_DB, show_default=True, envvar="SYNCWARD_DB",
        show_envvar=True, metavar="URL",
        help="The store: sqlite:///relative/path.db, sqlite:////absolute/path.db, or "
             "postgresql://user@host:port/db[?schema=name] (shared by many processes).")(fn)


def http_option(default: str | None) -> Callable[[Any], Any]:
    """``--http HOST:PORT``: serve the dashboard, health, metrics and API there."""
    return click.option(
        "--http", "http", default=default, show_default=default is not None,
        metavar="[HOST:]PORT",
        help="Serve the dashboard, /health, /metrics and the JSON API here (a port alone "
             "binds 127.0.0.1; any other address has no TLS: a warning says so). Needs "
             'the web extra: pip install "syncward[web]".')


def admin_token_file_option(fn: Any) -> Any:
    """``--admin-token-file PATH``: the admin API's bearer token (or $SYNCWARD_ADMIN_TOKEN)."""
    return click.option(
        "--admin-token-file", "admin_token_file", metavar="PATH",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A file holding the bearer token of the admin API (POST routes); or set "
             "SYNCWARD_ADMIN_TOKEN. No default: without one, admin routes answer 403.")(fn)


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
