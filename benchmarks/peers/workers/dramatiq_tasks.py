"""dramatiq side of the peer benchmark (runs in dramatiq's own virtualenv; no syncward).

  python dramatiq_tasks.py enqueue WORKLOAD N   send N messages to WORKLOAD (noop | io)
  dramatiq dramatiq_tasks --processes 1 --threads 100

Async actors need dramatiq's ``AsyncIO`` middleware: it runs one event loop thread per
worker process, and each worker thread hands a message's coroutine to it and waits, so
``--threads 100`` is what gives 100 jobs in flight (default 8 threads, one process per
core). Redis broker with its default middleware otherwise.
"""

from __future__ import annotations

import asyncio
import sys

import dramatiq
from _probe import job_ran, redis_url, use_uvloop
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

use_uvloop()  # the AsyncIO middleware makes its loop with asyncio.new_event_loop()

broker = RedisBroker(url=redis_url())
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
async def noop(i: int) -> None:
    job_ran()


@dramatiq.actor(actor_name="io")
async def io(i: int) -> None:
    await asyncio.sleep(0.01)
    job_ran()


def enqueue(workload: str, n: int) -> None:
    actor = {"noop": noop, "io": io}[workload]
    for i in range(n):
        actor.send(i)


if __name__ == "__main__":
    enqueue(sys.argv[2], int(sys.argv[3]))
