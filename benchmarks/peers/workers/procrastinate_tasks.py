"""procrastinate side of the peer benchmark (runs in procrastinate's own virtualenv; never
imports syncward).

  python procrastinate_tasks.py setup              apply procrastinate's schema
                                                   (``procrastinate schema --apply``)
  python procrastinate_tasks.py enqueue WORKLOAD N  defer N jobs of WORKLOAD (noop | io)
  procrastinate --app=procrastinate_tasks.app worker --concurrency=100

Tuning (procrastinate docs, "Execute multiple jobs at the same time"): ``--concurrency=100``
(default 1): one worker process whose asynchronous sub-workers run 100 jobs at a time. The
connector is ``PsycopgConnector`` with its default pool (psycopg_pool's defaults: 4
connections, which the 100 sub-workers share), LISTEN/NOTIFY on (the default), finished jobs
kept with their status (``--delete-jobs`` never, the default). The CLI logs at WARNING
unless given -v, so procrastinate's INFO line per job is off. uvloop through the event loop
policy, set when this module is imported (before the CLI makes its loop).

``PEER_BENCH_PROC_POOL`` sets the pool's ``max_size`` (for trying others; the harness does
not set it).
"""

from __future__ import annotations

import asyncio
import os
import sys

import procrastinate
from _probe import job_ran, pg_dsn, use_uvloop

use_uvloop()

_pool = {"max_size": int(os.environ["PEER_BENCH_PROC_POOL"])} \
    if os.environ.get("PEER_BENCH_PROC_POOL") else {}
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg_dsn(), **_pool))


@app.task(name="noop")
async def noop(i: int) -> None:
    job_ran()


@app.task(name="io")
async def io(i: int) -> None:
    await asyncio.sleep(0.01)
    job_ran()


async def setup() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue(workload: str, n: int) -> None:
    task = {"noop": noop, "io": io}[workload]
    async with app.open_async():
        for start in range(0, n, 1000):
            await task.batch_defer_async(*({"i": i} for i in range(start, min(n, start + 1000))))


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        asyncio.run(setup())
    else:
        asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
