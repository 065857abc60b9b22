"""arq side of the peer benchmark (runs in arq's own virtualenv; never imports syncward).

  python arq_tasks.py enqueue WORKLOAD N   enqueue N jobs of WORKLOAD (noop | io)
  python arq_tasks.py worker              one worker process, tuned for throughput

Tuning (arq docs, Worker parameters): ``max_jobs=100`` (concurrency 100; default 10),
``poll_delay=0.01`` (default 0.5 s between queue polls, which would leave the worker idle
between batches). Results are kept as by default (``keep_result`` 3600 s). The worker is
run through ``arq.worker.run_worker`` rather than the ``arq`` CLI only so that arq's INFO
logging (two lines per job) stays off, as it is for every peer here.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlparse

from _probe import job_ran, redis_url, use_uvloop
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker


async def noop(ctx: dict, i: int) -> None:
    job_ran()


async def io(ctx: dict, i: int) -> None:
    await asyncio.sleep(0.01)
    job_ran()


def settings() -> RedisSettings:
    url = urlparse(redis_url())
    return RedisSettings(host=url.hostname or "127.0.0.1", port=url.port or 6379,
                         database=int(url.path.strip("/") or 0))


class WorkerSettings:
    functions = (noop, io)
    redis_settings = settings()
    max_jobs = 100
    poll_delay = 0.01


async def enqueue(workload: str, n: int) -> None:
    pool = await create_pool(settings())
    try:
        for start in range(0, n, 500):
            await asyncio.gather(*(pool.enqueue_job(workload, i, _job_id=f"j{i}")
                                   for i in range(start, min(n, start + 500))))
    finally:
        await pool.aclose()


def main() -> None:
    if sys.argv[1] == "enqueue":
        asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
    else:
        use_uvloop()
        run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
