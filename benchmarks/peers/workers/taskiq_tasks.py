"""taskiq side of the peer benchmark (runs in taskiq's own virtualenv; never imports syncward).

  python taskiq_tasks.py enqueue WORKLOAD N   enqueue N tasks of WORKLOAD (noop | io)
  taskiq worker taskiq_tasks:broker --workers 1 --max-async-tasks 100 --log-level WARNING

The broker is taskiq-redis's ``RedisStreamBroker``, the one its README recommends when
acknowledgements are needed (``ListQueueBroker`` and ``PubSubBroker`` lose a message whose
worker is killed). No result backend (taskiq's default). taskiq's worker runs on uvloop by
itself when it is installed. ``--log-level WARNING`` because taskiq logs one INFO line per
task.
"""

from __future__ import annotations

import asyncio
import sys

from _probe import job_ran, redis_url
from taskiq_redis import RedisStreamBroker

broker = RedisStreamBroker(url=redis_url())


@broker.task(task_name="noop")
async def noop(i: int) -> None:
    job_ran()


@broker.task(task_name="io")
async def io(i: int) -> None:
    await asyncio.sleep(0.01)
    job_ran()


async def enqueue(workload: str, n: int) -> None:
    task = {"noop": noop, "io": io}[workload]
    await broker.startup()  # declares the consumer group before the first message
    try:
        for start in range(0, n, 500):
            await asyncio.gather(*(task.kiq(i) for i in range(start, min(n, start + 500))))
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
