"""Fixtures and helpers for the Redis tests: the shared server, private servers, waiting.

Import the fixtures as ``shared_redis_fixture`` and ``redis_server_fixture``; tests
ask for them as ``shared_redis`` and ``redis_server``.

* ``shared_redis``: the machine's Redis (``SYNCWARD_TEST_REDIS``, default
  ``redis://127.0.0.1:6379/0``) with a key prefix of this test's own; every key under
  it is deleted at teardown.
* ``redis_server``: a factory starting a private ``redis-server`` on a spare loopback
  port in a temporary directory (persistence as the test asks), which the test may
  kill, stop and restart; each one is killed at teardown.

When Redis (or the ``redis-server`` binary) is missing the tests are skipped with the
reason, except under ``CI=true``, where they fail: CI must run them.

Also here: `wait_for`, for waiting on another process (a server, a runtime in a
subprocess) with a deadline, and `run_source`, which runs a runtime with one source.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from syncward import Context, Job, Runtime, SyncerConfig

SHARED_URL = os.environ.get("SYNCWARD_TEST_REDIS", "redis://127.0.0.1:6379/0")
QUICK = SyncerConfig(idle_poll=0.01, retry_initial=0.001, retry_max=0.01)


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI=true, fail instead (CI must run every test)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


@dataclass
class SharedRedis:
    url: str
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def aclient(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url)


@pytest.fixture(name="shared_redis")
def shared_redis_fixture() -> Iterator[SharedRedis]:
    client = redis.Redis.from_url(SHARED_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unavailable(f"no Redis at {SHARED_URL} ({exc}); start one or set SYNCWARD_TEST_REDIS")
    target = SharedRedis(SHARED_URL, f"swtest:{uuid.uuid4().hex[:12]}:")
    try:
        yield target
    finally:
        keys = list(client.scan_iter(match=f"{target.prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        client.close()


def spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A private redis-server; `start`, `kill` (SIGKILL), `stop` (SHUTDOWN), `restart`."""

    directory: Path
    args: list[str]
    port: int = field(default_factory=spare_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.directory / "redis.log", "ab")
        try:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.directory), "--daemonize", "no", *self.args],
                stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            wait_for(lambda: _pings(client), timeout=10, what=f"redis-server on {self.port}")
        finally:
            client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # redis-server shuts down cleanly on SIGTERM (AOF flushed)
            self.proc.wait(10)

    def restart(self, *, kill: bool = True) -> None:
        self.kill() if kill else self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def aclient(self) -> aioredis.Redis:
        return aioredis.Redis(port=self.port)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``redis_server(persist=True, *extra_args)``: a started private server.

    ``persist`` turns on the append-only file with ``appendfsync always`` (a SIGKILL
    loses nothing); otherwise the server keeps nothing across a restart.
    """
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    servers: list[RedisServer] = []

    def make(*extra: str, persist: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        persistence = (["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
                       if persist else ["--appendonly", "no", "--save", ""])
        server = RedisServer(directory, [*persistence, *extra])
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.kill()


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str,
             every: float = 0.02) -> None:
    """Poll ``predicate`` (another process's state) until true, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def await_for(predicate: Callable[[], bool], *, timeout: float, what: str,
                    every: float = 0.01) -> None:
    """`wait_for` inside the event loop (for state that changes with no event to await)."""
    with anyio.move_on_after(timeout) as scope:
        while not predicate():
            await anyio.sleep(every)
    if scope.cancelled_caught:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def noop(job: Job, ctx: Context) -> dict[str, Any]:
    return dict(job.identity)


@contextlib.asynccontextmanager
async def running(source: Any, db: str, handler: Any = noop, **kwargs: Any
                  ) -> AsyncIterator[Runtime]:
    """A runtime on ``db`` with ``source`` as its one source."""
    async with Runtime(handler, store=db, sources=[source], syncer=QUICK, **kwargs) as rt:
        yield rt


async def drained(rt: Runtime, source: Any, *, timeout: float = 20) -> dict[str, Any]:
    """Wait until the source is drained and no job is active; returns its status."""
    while True:
        await await_for(lambda: bool(source.status()["drained"]), timeout=timeout,
                        what=f"{source.name} drained: {source.status()}")
        with anyio.fail_after(timeout):
            await rt.join()
        status: dict[str, Any] = source.status()
        if status["drained"] and rt.stats().active == 0:
            return status
