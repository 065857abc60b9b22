"""Serving the app with uvicorn inside the caller's event loop (``--http HOST:PORT``).

`parse_bind` reads ``--http``: ``PORT`` alone binds 127.0.0.1; any address that is not a
loopback one gets a warning (`exposure_warning`), since the API speaks plain HTTP: a
bearer token sent over it can be read by anyone on the path. `listen` binds the socket
before anything else is done, so a port in use is a configuration error (exit 2) before
the store is touched; `open_server` serves an app on it for the length of an
``async with`` block, as a task of the caller's task group.

Design note: uvicorn's `Server.serve` takes over SIGINT and SIGTERM and raises them again
after its shutdown; syncward's commands handle signals themselves (a first signal drains
the runtime), so the server here never touches signal handlers, and is stopped by its
owner. Its access log is off (URLs carry no secret, but it would flood a run's output)
and it does not configure logging: errors reach the command's own log handler.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from syncward.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from starlette.types import ASGIApp

__all__ = ["Bind", "exposure_warning", "listen", "open_server", "parse_bind"]

_SHUTDOWN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Bind:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def parse_bind(text: str) -> Bind:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT``; a port alone binds 127.0.0.1.

    Raises:
        ConfigError: naming what is wrong.
    """
    value = text.strip()
    host, port_text = "127.0.0.1", value
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            raise ConfigError(f"--http {text!r}: expected [ADDRESS]:PORT for IPv6")
        host, port_text = value[1:end], value[end + 2:]
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--http {text!r}: expected PORT or HOST:PORT "
                          "(port 0 to 65535; 0 picks a free one)")
    return Bind(host, int(port_text))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(bind: Bind) -> str | None:
    """The warning to print when ``bind`` is reachable from other machines."""
    if is_loopback(bind.host):
        return None
    return (f"warning: the HTTP API on {bind.host}:{bind.port} has no TLS: the admin token "
            "and job data cross the network in clear text; bind 127.0.0.1 and put a TLS "
            "proxy in front of it")


def listen(bind: Bind) -> tuple[socket.socket, Bind]:
    """A socket bound to ``bind`` (listening), and the address it got (port 0: a free one).

    Raises:
        ConfigError: the address cannot be used (in use, not this machine's, ...).
    """
    try:
        infos = socket.getaddrinfo(bind.host, bind.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"--http {bind.host}:{bind.port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--http {bind.host}:{bind.port}: cannot listen: "
                          f"{exc.strerror or exc}") from None
    return sock, Bind(bind.host, sock.getsockname()[1])


@contextlib.asynccontextmanager
async def open_server(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` on ``sock`` until the block ends; then stop it and close ``sock``.

    The app's lifespan runs (an `OpsApp` is closed when the server stops). Stopping
    waits up to a few seconds for requests in progress, then cancels the server.
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # signals are the command's
            yield

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            server_header=False, timeout_graceful_shutdown=2,
                            log_level="warning")
    server = Server(config)
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve([sock])
        finally:
            stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            try:
                yield
            finally:
                server.should_exit = True
                with anyio.move_on_after(_SHUTDOWN_SECONDS, shield=True):
                    await stopped.wait()
                tg.cancel_scope.cancel()
    finally:
        sock.close()
