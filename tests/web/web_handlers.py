"""Handlers the web tests' ``syncward run`` processes load by path.

``hold``: reports progress, then waits while the file ``hold`` exists in
``$WEB_TEST_DIR`` (looked at every 20 ms), then succeeds; identities whose ``id``
starts with "bad" fail at once (Permanent).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from syncward import Context, Job, Permanent


async def hold(job: Job, ctx: Context) -> dict[str, Any]:
    ident = str(job.identity["id"])
    if ident.startswith("bad"):
        raise Permanent(f"{ident}: never works")
    ctx.progress(1, 4)
    marker = Path(os.environ["WEB_TEST_DIR"]) / "hold"
    while marker.exists():
        await anyio.sleep(0.02)
    return {"id": ident}
