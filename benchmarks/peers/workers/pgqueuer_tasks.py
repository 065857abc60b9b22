"""PgQueuer side of the peer benchmark (runs in PgQueuer's own virtualenv; never imports
syncward).

  python pgqueuer_tasks.py setup              install PgQueuer's tables (``Queries.install``,
                                              what ``pgq install`` runs), durability "durable"
  python pgqueuer_tasks.py enqueue WORKLOAD N  enqueue N jobs of WORKLOAD (noop | io)
  python pgqueuer_tasks.py worker             one worker process (below)

The worker is shaped as PgQueuer's own benchmark tool (``tools/benchmark.py`` in its
repository) runs its consumers: several ``PgQueuer`` instances in one process, each on an
asyncpg connection of its own (``--dequeue 5``), dequeuing batches of 10
(``--dequeue-batch-size 10``), in continuous mode, on uvloop. That tool leaves
``max_concurrent_tasks`` unlimited, so every job of a batch starts at once; here each of the
5 takes ``max_concurrent_tasks=20`` (the least PgQueuer accepts at batch 10: twice the
batch), so that at most 100 jobs are in flight, as for every peer. Everything else as by
default: heartbeat_timeout 30 s, jobs deleted from the queue table (and logged to
``pgqueuer_log``) when they finish.

``PEER_BENCH_PGQ_MANAGERS`` and ``PEER_BENCH_PGQ_MAX_TASKS`` change the shape (for trying
others; the harness does not set them).
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
from _probe import job_ran, pg_dsn, use_uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

MANAGERS = int(os.environ.get("PEER_BENCH_PGQ_MANAGERS", "5"))
MAX_TASKS = int(os.environ.get("PEER_BENCH_PGQ_MAX_TASKS", "20"))  # 0: unlimited
BATCH = 10


def register(pgq: PgQueuer) -> None:
    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        job_ran()

    @pgq.entrypoint("io")
    async def io(job: Job) -> None:
        await asyncio.sleep(0.01)
        job_ran()


async def setup() -> None:
    conn = await asyncpg.connect(pg_dsn())
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def enqueue(workload: str, n: int) -> None:
    conn = await asyncpg.connect(pg_dsn())
    try:
        queries = Queries(AsyncpgDriver(conn))
        for start in range(0, n, 1000):
            k = min(n, start + 1000) - start
            await queries.enqueue([workload] * k, [str(i).encode() for i in range(k)], [0] * k)
    finally:
        await conn.close()


async def worker() -> None:
    managers = []
    for _ in range(MANAGERS):
        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(pg_dsn())))
        register(pgq)
        managers.append(pgq)
    await asyncio.gather(*(m.run(batch_size=BATCH, max_concurrent_tasks=MAX_TASKS or None)
                           for m in managers))


def main() -> None:
    if sys.argv[1] == "setup":
        asyncio.run(setup())
    elif sys.argv[1] == "enqueue":
        asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
    else:
        use_uvloop()
        asyncio.run(worker())


if __name__ == "__main__":
    main()
