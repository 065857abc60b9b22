"""``syncward serve``: the dashboard and API of a store, read-only; and ``--http`` for ``run``.

``serve`` watches a store that another process runs (or that nothing runs): it opens
the store read-only (taking no lock, so a runtime may start or stop beside it), serves
`syncward.web.create_app` over it with uvicorn, and stops on SIGINT or SIGTERM (exit 0).
Admin routes answer 409 there: acting needs the runtime's own app (``run --http``).

`prepare_http` is what ``run --http`` and ``serve`` share, done before the store is
opened so that exit 2 means nothing was done: the web extra is installed, the admin
token (``$SYNCWARD_ADMIN_TOKEN`` or ``--admin-token-file``; read here, at the entry
point) is usable, the address is parsed and its socket bound (a port in use is a
configuration error). `serving` then serves an app on that socket for a block.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import click

from syncward.cli.common import guard, require_store_file, run_async
from syncward.cli.options import admin_token_file_option, db_option, http_option
from syncward.errors import ConfigError, MissingDependency
from syncward.store import open_store

if TYPE_CHECKING:
    import socket
    from collections.abc import AsyncIterator
    from pathlib import Path

    from syncward.runtime import Runtime
    from syncward.store.base import StoreReader
    from syncward.web.serving import Bind

__all__ = ["HttpSetup", "prepare_http", "serve", "serving"]


@dataclass
class HttpSetup:
    """A bound socket, the address it got, and the admin token (None: admin disabled)."""

    sock: socket.socket
    bind: Bind
    token: str | None

    def close(self) -> None:
        self.sock.close()


def prepare_http(http: str, token_file: Path | None) -> HttpSetup:
    """Check and bind ``--http`` (see the module docstring); prints warnings on stderr.

    Raises:
        ConfigError: the web extra is missing, the token is unusable, or the address
            cannot be listened on.
    """
    if any(importlib.util.find_spec(m) is None
           for m in ("starlette", "uvicorn", "prometheus_client")):
        raise ConfigError(f"--http: {MissingDependency('web')}")
    from syncward.web.config import load_admin_token
    from syncward.web.serving import exposure_warning, listen, parse_bind

    token, warnings = load_admin_token(env=os.environ, file=token_file)
    bind = parse_bind(http)
    exposed = exposure_warning(bind)
    for warning in ([exposed] if exposed else []) + warnings:
        click.echo(f"syncward: {warning}", err=True)
    sock, bound = listen(bind)
    return HttpSetup(sock, bound, token)


@contextlib.asynccontextmanager
async def serving(setup: HttpSetup | None, target: Runtime | StoreReader
                  ) -> AsyncIterator[None]:
    """Serve the operations app over ``target`` on ``setup``'s socket during the block."""
    if setup is None:
        yield
        return
    from syncward.web import create_app
    from syncward.web.serving import open_server

    app = create_app(target, admin_token=setup.token)
    async with open_server(app, setup.sock):
        from syncward.runtime import Runtime

        admin = ("read-only" if not isinstance(target, Runtime) else
                 "admin API enabled" if setup.token else "admin API disabled: no token")
        click.echo(f"syncward: dashboard, /health, /metrics and the API on {setup.bind.url} "
                   f"({admin})", err=True)
        yield


@click.command(short_help="Serve a store's dashboard, health, metrics and API (read-only).")
@db_option
@http_option("127.0.0.1:8080")
@admin_token_file_option
@guard
def serve(db: str, http: str, admin_token_file: Path | None) -> None:
    """Serve the dashboard, /health, /metrics and the JSON API of a store, read-only.

    Watches a store that another process runs (or that nothing runs) and updates live:
    counts are read from the store, health and progress from what a running runtime
    publishes. Admin routes answer 409 here (to act, serve the runtime itself: syncward
    run ... --http). Stops on SIGINT or SIGTERM.

    /health answers 503 when the store does not answer, or when the runtime that holds
    it is gone, stuck or unhealthy by its own account.
    """
    require_store_file(db)
    setup = prepare_http(http, admin_token_file)
    try:
        run_async(_serve, db, setup, loop="asyncio")
    finally:
        setup.close()


async def _serve(db: str, setup: HttpSetup) -> None:
    store = await open_store(db, readonly=True)  # refused now (exit 2), not per request
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with serving(setup, store):
                async for signum in signals:
                    click.echo(f"syncward: {signal.Signals(signum).name}: stopping", err=True)
                    break
    finally:
        await store.aclose()
