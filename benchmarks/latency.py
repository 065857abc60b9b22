"""Submit-to-commit latency at half of the peak submit rate.

First the peak: 64 producers submit one job at a time as fast as commits allow, for a
few seconds. Then a pacer starts one single-job submit every 1/(peak/2) seconds, each in
its own task, and records how long each took to return (it returns after the commit).
Lines: ``latency.submit_peak`` (jobs/s), ``latency.submit_p50`` and ``latency.submit_p99``
(ms) at half the peak, ``latency.paced_p99`` at a tenth, two tenths, ... of the peak until
p99 passes 20 ms, and ``latency.sustainable``: the highest of those rates whose p99 stayed
under 20 ms (the knee). The same again with each submit in a plain `asyncio` task instead
of an anyio task group's (``latency.paced_p99_asyncio_tasks``,
``latency.sustainable_asyncio_tasks``): at these rates the task spawn is a large part of
the cost, and a web server spawns plain tasks. Durable SQLite (synchronous FULL); no
handler work is leased (leasing paused).

Run: python -m benchmarks.latency [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio

from benchmarks._common import emit, timed
from syncward import Runtime


async def noop(job: Any, ctx: Any) -> None:
    return None


async def measure(path: Path, seconds: float) -> None:
    async with Runtime(noop, store=f"sqlite:///{path}", concurrency=1) as rt:
        rt.pause()  # measure the commit path alone: no job is leased
        counter = iter(range(10**9))
        done = 0

        async def producer(deadline: float) -> None:
            nonlocal done
            while timed() < deadline:
                await rt.submit([{"id": next(counter)}])
                done += 1

        start = timed()
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(producer, start + seconds)
        peak = done / (timed() - start)
        emit("latency.submit_peak", peak, "jobs/s", producers=64)

        async def paced(rate: float, *, plain_tasks: bool = False) -> list[float]:
            """One single-job submit every 1/rate seconds, each in its own task: an anyio
            task group's, or with ``plain_tasks`` an `asyncio.create_task` (what a web
            server does per request; about half the cost of a task group's spawn)."""
            latencies: list[float] = []

            async def one() -> None:
                t0 = timed()
                await rt.submit([{"id": next(counter)}])
                latencies.append(timed() - t0)

            interval = 1 / rate
            next_at = timed()
            end = next_at + seconds
            if plain_tasks:
                tasks: set[asyncio.Task[None]] = set()
                while next_at < end:
                    task = asyncio.create_task(one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - timed()))
                await asyncio.gather(*tasks)
            else:
                async with anyio.create_task_group() as tg:
                    while next_at < end:
                        tg.start_soon(one)
                        next_at += interval
                        await anyio.sleep(max(0.0, next_at - timed()))
            latencies.sort()
            return latencies

        def p99(latencies: list[float]) -> float:
            return latencies[int(len(latencies) * 0.99) - 1] * 1000

        half = await paced(peak / 2)
        emit("latency.submit_p50", statistics.median(half) * 1000, "ms", rate=round(peak / 2),
             samples=len(half))
        emit("latency.submit_p99", p99(half), "ms", rate=round(peak / 2), samples=len(half))
        # The knee: the highest paced rate (in tenths of the peak) whose p99 stays under
        # 20 ms — what an embedding app submitting once per request can sustain.
        knee = 0.0
        for tenth in range(1, 10):
            rate = peak * tenth / 10
            lat = await paced(rate)
            emit("latency.paced_p99", p99(lat), "ms", rate=round(rate),
                 p50=round(statistics.median(lat) * 1000, 2), samples=len(lat))
            if p99(lat) >= 20.0:
                break
            knee = rate
        emit("latency.sustainable", knee, "submits/s", p99_under_ms=20, peak=round(peak))
        knee = 0.0
        for tenth in range(1, 10):
            rate = peak * tenth / 10
            lat = await paced(rate, plain_tasks=True)
            emit("latency.paced_p99_asyncio_tasks", p99(lat), "ms", rate=round(rate),
                 p50=round(statistics.median(lat) * 1000, 2), samples=len(lat))
            if p99(lat) >= 20.0:
                break
            knee = rate
        emit("latency.sustainable_asyncio_tasks", knee, "submits/s", p99_under_ms=20,
             peak=round(peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(measure, Path(tmp) / "jobs.db", args.seconds)


if __name__ == "__main__":
    main()
