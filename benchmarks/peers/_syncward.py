"""syncward's side of the peer benchmark, measured the way the peers are.

``presubmit`` writes N planned jobs into a fresh store (the "enqueue" phase, timed apart):
a SQLite file (synchronous FULL) for the Redis peers, a PostgreSQL schema of its own for the
PostgreSQL peers. ``python -m benchmarks.peers._syncward URL WORKLOAD N DIR`` is the worker
process: it opens a `Runtime` on that store (concurrency 100, uvloop), waits for ``join()``
(nothing planned or leased: every job's outcome committed), checks the counts and writes
the ``drained`` marker the harness waits for on SQLite. On PostgreSQL the harness reads the
store's running totals instead (`succeeded`): a runtime adopts other writers' totals only
every few seconds, so its ``join()`` may return a little after the last commit.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.peers.workers import _probe
from syncward import Context, Job, JobState, Runtime
from syncward.jobs import canonical_identity, job_key
from syncward.messages import NewJob, Submit
from syncward.store import open_store

CONCURRENCY = 100


async def noop(job: Job, ctx: Context) -> None:
    _probe.job_ran()


async def io(job: Job, ctx: Context) -> None:
    await anyio.sleep(0.01)
    _probe.job_ran()


async def _presubmit(url: str, n: int) -> None:
    store = await open_store(url)
    try:
        for start in range(0, n, 5_000):
            jobs = tuple(NewJob(key=job_key({"id": i}), identity=canonical_identity({"id": i}),
                                payload="{}", max_attempts=5)
                         for i in range(start, min(n, start + 5_000)))
            await store.apply([Submit(jobs)], now=time.time())
    finally:
        await store.aclose()


def presubmit(url: str, n: int) -> None:
    """Create ``n`` planned jobs ``{"id": i}`` in the store at ``url``."""
    anyio.run(_presubmit, url, n)


def schema_of(url: str) -> str:
    """The PostgreSQL schema a ``postgresql://...?schema=NAME`` store URL names."""
    return url.rsplit("schema=", 1)[1]


def succeeded(client: Any, schema: str) -> int:
    """Jobs succeeded by the store's running totals (a `benchmarks._pg.PgClient`)."""
    return int(client.fetchval(f'SELECT coalesce(sum(n), 0) FROM "{schema}".counts'
                               " WHERE state = 'succeeded'"))


async def _work(url: str, handler: Any, n: int, marks: Path) -> None:
    async with Runtime(handler, store=url, concurrency=CONCURRENCY) as rt:
        await rt.join()
        done = time.time()
        counts = rt.stats().counts
        if counts[JobState.SUCCEEDED] != n:
            raise SystemExit(f"expected {n} succeeded, got {dict(counts)}")
        (marks / "drained").write_text(json.dumps({"t": done, "succeeded": n}))


def main() -> None:
    url, workload, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    handler = {"noop": noop, "io": io}[workload]
    anyio.run(_work, url, handler, n, Path(sys.argv[4]),
              backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()
