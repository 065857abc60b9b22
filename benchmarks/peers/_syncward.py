"""syncward's side of the peer benchmark, measured the way the peers are.

``presubmit`` writes N planned jobs into a fresh SQLite store (the "enqueue" phase, timed
apart); ``python -m benchmarks.peers._syncward DB WORKLOAD N`` is the worker process: it
opens a `Runtime` on that store (concurrency 100, synchronous FULL, uvloop), waits for
``join()`` (nothing planned or leased: every job's outcome committed), checks the counts
and writes the ``drained`` marker the harness waits for.
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
from syncward.store.sqlite import SQLiteStore

CONCURRENCY = 100


async def noop(job: Job, ctx: Context) -> None:
    _probe.job_ran()


async def io(job: Job, ctx: Context) -> None:
    await anyio.sleep(0.01)
    _probe.job_ran()


async def _presubmit(path: Path, n: int) -> None:
    store = await SQLiteStore.open(f"sqlite:///{path}")
    try:
        for start in range(0, n, 5_000):
            jobs = tuple(NewJob(key=job_key({"id": i}), identity=canonical_identity({"id": i}),
                                payload="{}", max_attempts=5)
                         for i in range(start, min(n, start + 5_000)))
            await store.apply([Submit(jobs)], now=time.time())
    finally:
        await store.aclose()


def presubmit(path: Path, n: int) -> None:
    """Create ``n`` planned jobs ``{"id": i}`` in the store at ``path``."""
    anyio.run(_presubmit, path, n)


async def _work(path: Path, handler: Any, n: int, marks: Path) -> None:
    async with Runtime(handler, store=f"sqlite:///{path}", concurrency=CONCURRENCY) as rt:
        await rt.join()
        done = time.time()
        counts = rt.stats().counts
        if counts[JobState.SUCCEEDED] != n:
            raise SystemExit(f"expected {n} succeeded, got {dict(counts)}")
        (marks / "drained").write_text(json.dumps({"t": done, "succeeded": n}))


def main() -> None:
    db, workload, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    handler = {"noop": noop, "io": io}[workload]
    anyio.run(_work, db, handler, n, Path(sys.argv[4]),
              backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()
