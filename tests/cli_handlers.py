"""Handlers the command-line tests load by path (``tests/cli_handlers.py:name``).

They run in the ``syncward run`` subprocess, so they are configured through the
environment: ``CLI_TEST_DIR`` is a directory for marker files.

* ``ok``     succeeds at once, returning the identity.
* ``flaky``  fails permanently for identities whose ``id`` starts with "bad".
* ``effect`` sleeps ``CLI_TEST_SLEEP`` seconds (default 0.05), then writes one line
  (the job's ``id``) to ``effects.log`` through ``ctx.effect``, so an effect that
  committed is never written again; while the file ``hold`` exists it sleeps
  ``CLI_TEST_HOLD`` seconds instead (for tests that interrupt a busy run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio

from syncward import Context, Job, Permanent


def _dir() -> Path:
    return Path(os.environ["CLI_TEST_DIR"])


async def ok(job: Job, ctx: Context) -> dict[str, Any]:
    return dict(job.identity)


async def flaky(job: Job, ctx: Context) -> dict[str, Any]:
    if str(job.identity.get("id", "")).startswith("bad"):
        raise Permanent(f"{job.identity['id']} never works")
    return dict(job.identity)


async def effect(job: Job, ctx: Context) -> str:
    base = _dir()
    if (base / "hold").exists():
        await anyio.sleep(float(os.environ.get("CLI_TEST_HOLD", "30")))
    else:
        await anyio.sleep(float(os.environ.get("CLI_TEST_SLEEP", "0.05")))
    ident = str(job.identity["id"])

    def write() -> str:
        fd = os.open(base / "effects.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ident}\n".encode())
        finally:
            os.close(fd)
        return ident

    result: str = await ctx.effect("write", write)
    return result


def not_async(job: Job, ctx: Context) -> None:
    """A plain function: refused by the command line (handlers must be async)."""


_running: dict[str, int] = {}


async def per_tenant(job: Job, ctx: Context) -> None:
    """Records, in peaks.json, the most jobs of one tenant that ever ran at once here."""
    tenant = str(job.payload["tenant"])
    _running[tenant] = _running.get(tenant, 0) + 1
    path = _dir() / "peaks.json"
    peaks = json.loads(path.read_text()) if path.exists() else {}
    peaks[tenant] = max(peaks.get(tenant, 0), _running[tenant])
    path.write_text(json.dumps(peaks))
    await anyio.sleep(0.05)
    _running[tenant] -= 1
