"""Helpers of the web tests: stores by backend, a client on the app, handlers, a flaky store.

Every route is tested through httpx's ASGI transport (no server, no port); the
tests that need a real server (``syncward run --http``, ``syncward serve``, the browser)
bind port 0 and read back the port they got.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from store.store_helpers import POSTGRES_URL

from syncward import Context, Job, Permanent, Skip, SyncerConfig
from syncward.errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from starlette.types import ASGIApp

    from syncward.messages import ApplyResult, SyncerMsg
    from syncward.store.base import Store

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = SyncerConfig(idle_poll=0.01, retry_initial=0.001, retry_max=0.01)
#: The admin routes, with a body each accepts.
ADMIN_ROUTES: list[tuple[str, Any]] = [
    ("/api/stats/refresh", None),
    ("/api/reconciliation", None),
    ("/api/jobs/retry", {"all": True}),
    ("/api/jobs/cancel", {"state": "planned"}),
    ("/api/pause", None),
    ("/api/resume", None),
]


def require(available: bool, reason: str) -> None:
    """Skip when ``available`` is false; under CI=true, fail instead."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def chromium() -> str:
    """The machine's Chromium (Debian's ``chromium`` package, installed by .ci/run)."""
    path = shutil.which("chromium")
    require(path is not None, "no chromium on PATH (apt-get install -y chromium)")
    assert path is not None
    return path


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://syncward.test") as c:
        yield c


def identities(ok: int = 6, bad: int = 2, skip: int = 1) -> list[dict[str, str]]:
    return ([{"id": f"ok-{i}"} for i in range(ok)] + [{"id": f"bad-{i}"} for i in range(bad)]
            + [{"id": f"skip-{i}"} for i in range(skip)])


async def mixed(job: Job, ctx: Context) -> dict[str, Any]:
    """ok-* succeed, bad-* fail at once (Permanent), skip-* are skipped."""
    ident = str(job.identity["id"])
    if ident.startswith("bad"):
        raise Permanent(f"{ident}: the archive answered 404")
    if ident.startswith("skip"):
        raise Skip(f"{ident}: same bytes as another job")
    ctx.progress(1, 1)
    return {"fetched": ident}


class FlakyStore:
    """A store whose commits fail (StoreUnavailable) while ``failing``; reads pass through.

    ``failed`` is set when a commit has failed, ``recovered`` when one succeeds after that.
    """

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.failing = False
        self.failed = anyio.Event()
        self.recovered = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def apply(self, batch: Sequence[SyncerMsg], **kwargs: Any) -> ApplyResult:
        if self.failing:
            self.failed.set()
            raise StoreUnavailable("commit", OSError(28, "No space left on device"))
        result = await self._inner.apply(batch, **kwargs)
        if self.failed.is_set():
            self.recovered.set()
        return result


def until(condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition"
          ) -> Any:
    """Poll ``condition`` (for another process's state) until truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
