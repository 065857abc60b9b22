"""End-to-end runtime figures: throughput, lease recovery, memory of a streamed run.

Lines (jobs/s unless noted), each with ``"loop"``:
  runtime.noop      no-op handler, concurrency 100, durable SQLite (synchronous FULL)
  memory.noop       the same on the in-memory store: the framework's own ceiling, no I/O
  runtime.noop_limited  runtime.noop with a limit per key declared but not binding (every
                    job has one of 8 keys, at most 1,000 at once and 100,000 starts/s each),
                    against runtime.noop in the same run (medians of 3 alternating pairs),
                    target ratio >= 0.95
  runtime.io100     handler awaits anyio.sleep(0.01), concurrency 100 (ideal 10,000/s)
  runtime.io1000    the same at concurrency 1000 (ideal 100,000/s)
  runtime.recover_100k  seconds to open a store holding 100,000 leases of a dead boot and
                        put them all back (start-up reconciliation), target < 1 s
  runtime.rss_1m    peak RSS in MB of a fresh process running 1,000,000 no-op jobs
                    submitted as a stream, target < 200 MB
  runtime.wal_peak_mb  the WAL's peak size in MB during that run (sampled every 0.1 s),
                    target < 64 MB

Run: python -m benchmarks.runtime [--jobs N] [--rss-jobs N] [--only NAME]
(NAME: noop, memory, limited, io100, io1000, recover, rss; a part of a line's name)
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks._common import emit, timed
from syncward import Context, Job, Limit, Runtime
from syncward.jobs import canonical_identity, job_key
from syncward.messages import LeaseOrder, NewJob, Submit
from syncward.store.sqlite import SQLiteStore


async def noop(job: Job, ctx: Context) -> None:
    return None


async def io_bound(job: Job, ctx: Context) -> None:
    await anyio.sleep(0.01)


def shard(spec: Any) -> int:
    return int(spec.identity["id"]) % 8


LOOSE = Limit("shard", key=shard, concurrency=1_000, rate=100_000.0, burst=1_000)


async def throughput(url: str, handler: Any, n: int, concurrency: int,
                     limits: tuple[Limit, ...] = ()) -> float:
    async with Runtime(handler, store=url, concurrency=concurrency, limits=limits) as rt:
        start = timed()
        await rt.submit({"id": i} for i in range(n))
        await rt.join()
        elapsed = timed() - start
        assert rt.stats().active == 0
    return n / elapsed


def measure(handler: Any, n: int, concurrency: int, loop: str, *, memory: bool = False,
            limits: tuple[Limit, ...] = ()) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url = "memory://" if memory else f"sqlite:///{Path(tmp) / 'jobs.db'}"
        return anyio.run(throughput, url, handler, n, concurrency, limits,
                         backend_options={"use_uvloop": loop == "uvloop"})


def run_limited(n: int, loop: str) -> None:
    plain: list[float] = []
    limited: list[float] = []
    for _ in range(3):
        plain.append(measure(noop, n, 100, loop))
        limited.append(measure(noop, n, 100, loop, limits=(LOOSE,)))
    base, value = statistics.median(plain), statistics.median(limited)
    emit("runtime.noop_limited", value, "jobs/s", baseline=base, loop=loop, jobs=n)


def run_throughput(name: str, handler: Any, n: int, concurrency: int, loop: str,
                   ideal: float | None, *, memory: bool = False) -> None:
    rate = measure(handler, n, concurrency, loop, memory=memory)
    extra: dict[str, Any] = {"loop": loop, "jobs": n, "concurrency": concurrency}
    if ideal is not None:
        extra["of_ideal"] = round(rate / ideal, 3)
    emit(name, rate, "jobs/s", **extra)


async def recover(path: Path, n: int) -> float:
    store = await SQLiteStore.open(f"sqlite:///{path}")
    now = time.time()
    for i in range(0, n, 10_000):
        jobs = tuple(NewJob(key=job_key({"id": k}), identity=canonical_identity({"id": k}),
                            payload="{}", max_attempts=5) for k in range(i, min(n, i + 10_000)))
        await store.apply([Submit(jobs)], now=now,
                          lease=LeaseOrder(len(jobs), "dead-worker", "dead-boot", 60.0))
    await store.aclose()
    start = timed()
    async with Runtime(noop, store=f"sqlite:///{path}") as rt:
        elapsed = timed() - start
        report = rt.reconcile_report
        rt.kill()
    assert report is not None
    assert report.leases_requeued == n, report
    return elapsed


def run_recover(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        seconds = anyio.run(recover, Path(tmp) / "jobs.db", n)
    emit("runtime.recover_100k", seconds, "s", leases=n, target=1.0)


async def streamed(path: Path, n: int) -> int:
    """Run ``n`` jobs submitted as a stream; returns the WAL's peak size in bytes, sampled
    every 0.1 s (the store's default limit and checkpointer)."""
    async def specs() -> Any:
        for i in range(n):
            yield {"id": i}

    wal = Path(str(path) + "-wal")
    peak = 0

    async def sample(done: anyio.Event) -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, wal.stat().st_size)
            with anyio.move_on_after(0.1):
                await done.wait()

    async with Runtime(noop, store=f"sqlite:///{path}", concurrency=100) as rt:
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample, done)
            await rt.submit(specs())
            await rt.join()
            done.set()
    return peak


def rss_child(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = timed()
        wal_peak = anyio.run(streamed, Path(tmp) / "jobs.db", n)
        elapsed = timed() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit("runtime.rss_1m", peak_mb, "MB", jobs=n, seconds=round(elapsed, 1),
         jobs_per_s=round(n / elapsed), target=200)
    emit("runtime.wal_peak_mb", round(wal_peak / 2**20, 1), "MB", jobs=n, target=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rss-jobs", type=int, default=1_000_000)
    parser.add_argument("--recover", type=int, default=100_000)
    parser.add_argument("--only", default=None)
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child)
        return

    def want(name: str) -> bool:
        return args.only is None or args.only in name

    for loop in ("asyncio", "uvloop"):
        if want("noop"):
            run_throughput("runtime.noop", noop, args.jobs, 100, loop, None)
        if want("memory"):
            run_throughput("memory.noop", noop, args.jobs, 100, loop, None, memory=True)
        if want("limited"):
            run_limited(args.jobs, loop)
        if want("io100"):
            run_throughput("runtime.io100", io_bound, args.jobs, 100, loop, 10_000)
        if want("io1000"):
            run_throughput("runtime.io1000", io_bound, args.jobs, 1000, loop, 100_000)
    if want("recover"):
        run_recover(args.recover)
    if want("rss"):
        subprocess.run([sys.executable, "-m", "benchmarks.runtime",
                        "--rss-child", str(args.rss_jobs)], check=True)


if __name__ == "__main__":
    main()
