"""SAQ side of the peer benchmark (runs in SAQ's own virtualenv; never imports syncward).

  python saq_tasks.py enqueue WORKLOAD N   enqueue N jobs of WORKLOAD (noop | io)
  saq saq_tasks.settings                   one worker process (SAQ's CLI, --workers 1)

Tuning (SAQ docs, worker settings): ``concurrency=100`` (default 10). Everything else as
by default: job ``timeout`` 10 s, ``retries`` 1, results kept ``ttl`` 600 s. The CLI logs
at ERROR unless given -v.
"""

from __future__ import annotations

import asyncio
import sys

from _probe import job_ran, redis_url, use_uvloop
from saq import Queue

use_uvloop()  # the saq CLI makes its loop after importing the settings

queue = Queue.from_url(redis_url())


async def noop(ctx: dict, *, i: int) -> None:
    job_ran()


async def io(ctx: dict, *, i: int) -> None:
    await asyncio.sleep(0.01)
    job_ran()


settings = {"queue": queue, "functions": [noop, io], "concurrency": 100}


async def enqueue(workload: str, n: int) -> None:
    await queue.connect()
    try:
        for start in range(0, n, 500):
            await asyncio.gather(*(queue.enqueue(workload, key=f"j{i}", i=i)
                                   for i in range(start, min(n, start + 500))))
    finally:
        await queue.disconnect()


if __name__ == "__main__":
    asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
