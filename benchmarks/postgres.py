"""syncward on PostgreSQL: jobs/s from 1, 2 and 3 processes on one store, and how soon a
killed process's leases are back; syncward on SQLite measured the same way, for reference.

Lines (every one carries ``server``, the PostgreSQL settings that bound a commit —
``SHOW synchronous_commit, fsync, autovacuum``, shared_buffers, version — and ``load``, the
1/5/15-minute load averages when it was printed):

  sqlite.noop | sqlite.io       one worker process on a pre-submitted SQLite store
                                (synchronous FULL), the reference for the lines below
  postgres.noop | postgres.io   1, 2 and 3 worker processes on one pre-submitted PostgreSQL
                                store, concurrency 100 each; ``baseline`` is the 1-process
                                figure of the same run, ``of_sqlite`` the ratio to sqlite.*,
                                ``of_ideal`` (io) to processes x 100 / 10 ms
  sqlite.noop_inprocess         as ``runtime.noop`` (one process: submit, then join, timed
  postgres.noop_inprocess       together); the postgres line's baseline is the sqlite one
  postgres.recover_10k          seconds from SIGKILL of a process holding 10,000 leases
                                (lease_seconds 600, a handler that never returns) until a live
                                runtime on the same store sees all of them planned again; the
                                median of 5 kills (3 with --quick), each one listed in ``runs``,
                                each at a random point of the keeper's 0.5 s period

Method of the process lines (the peers' method, `benchmarks.peers`): a fresh store each time
(a temp file; a PostgreSQL schema of its own, dropped afterwards); the jobs written through
the store's own apply (``submit_s``, timed apart); then, from just before the first worker is
spawned (``python -m benchmarks.postgres --worker URL WORKLOAD``, a `Runtime` on uvloop that
runs until ``join()``), to the first moment the jobs are all done: for PostgreSQL, the
store's running totals (polled every 10 ms on a connection of this process) count every job
succeeded; for SQLite, the worker's ``join()`` returning (exact: one exclusive writer). The
row counts are then checked. ``startup_s`` is how much of it went before the first handler
call, ``steady`` the rate after it; ``cpu_s`` is the workers' CPU and ``pg_cpu_s`` the
server's (all its processes: another client of the server counts too); ``commits`` is how
many transactions the workers' syncers committed (until each worker's own ``join()``).

Run: python -m benchmarks.postgres [--quick] [--jobs N] [--only NAME] [--pg URL]
     [--database NAME]   (NAME: a part of a line's name: noop, io, inprocess, recover, sqlite)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from benchmarks._common import emit, timed
from benchmarks._pg import (
    cpu_seconds,
    database_url,
    load,
    pg_cpu,
    pg_cpu_delta,
    recreate_database,
    server_settings,
)
from syncward import Context, Job, JobState, Runtime
from syncward.jobs import canonical_identity, job_key
from syncward.messages import NewJob, Submit
from syncward.store import open_store

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 100
POLL = 0.01
_first: float | None = None
_schemas = count()


# --- the handlers (in the worker processes) ---------------------------------------------

def _ran() -> None:
    global _first
    if _first is None:
        _first = time.time()


async def noop(job: Job, ctx: Context) -> None:
    _ran()


async def io(job: Job, ctx: Context) -> None:
    await anyio.sleep(0.01)
    _ran()


async def hang(job: Job, ctx: Context) -> None:
    await anyio.sleep_forever()


HANDLERS = {"noop": noop, "io": io}


async def _work(url: str, workload: str) -> None:
    async with Runtime(HANDLERS[workload], store=url, concurrency=CONCURRENCY) as rt:
        await rt.join()
        done, cpu = time.time(), time.process_time()
        commits = rt.status().syncer["commits"]
    print(json.dumps({"pid": os.getpid(), "first": _first, "done": done, "cpu": cpu,
                      "commits": commits}), flush=True)


async def _hold(url: str, n: int) -> None:
    """Lease ``n`` jobs (a handler that never returns, the rest prefetched), then wait."""
    async with Runtime(hang, store=url, concurrency=CONCURRENCY, prefetch=n - CONCURRENCY,
                       lease_seconds=600.0) as rt:
        await rt.wait(lambda s: s.counts[JobState.LEASED] >= n)
        print(json.dumps({"pid": os.getpid(), "leased": n}), flush=True)
        await anyio.sleep_forever()


# --- stores ------------------------------------------------------------------------------

class Stores:
    """Where each measurement gets a fresh store, and how it is told that all are done."""

    def __init__(self, server: str, database: str, tmp: Path) -> None:
        self.server = server
        self.database = database
        self.tmp = tmp
        self.settings: dict[str, str] = {}

    async def open(self) -> None:
        await recreate_database(self.server, self.database, drop=False)
        self.settings = await server_settings(self.server, self.database)

    def fresh(self, backend: str, label: str) -> str:
        n = next(_schemas)
        if backend == "sqlite":
            return f"sqlite:///{self.tmp / f'{label}-{n}.db'}"
        return database_url(self.server, self.database, schema=f"bench_{label}_{os.getpid()}_{n}")

    async def drop(self, url: str) -> None:
        if url.startswith("sqlite"):
            path = Path(url.removeprefix("sqlite:///"))
            for p in path.parent.glob(path.name + "*"):
                p.unlink()
            return
        conn = await asyncpg.connect(database_url(self.server, self.database))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{_schema(url)}" CASCADE')
        finally:
            await conn.close()


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


async def presubmit(url: str, n: int) -> float:
    """Write ``n`` planned jobs ``{"id": i}`` through the store's apply; returns seconds."""
    start = timed()
    store = await open_store(url)
    try:
        for lo in range(0, n, 5_000):
            jobs = tuple(NewJob(key=job_key({"id": i}), identity=canonical_identity({"id": i}),
                                payload="{}", max_attempts=5)
                         for i in range(lo, min(n, lo + 5_000)))
            await store.apply([Submit(jobs)], now=time.time())
    finally:
        await store.aclose()
    return timed() - start


async def totals(conn: Any, schema: str) -> dict[str, int]:
    """The store's running totals by state (every writer's committed deltas)."""
    rows = await conn.fetch(f'SELECT state, sum(n) FROM "{schema}".counts GROUP BY state')
    return {r[0]: int(r[1]) for r in rows}


async def row_counts(url: str) -> dict[JobState, int]:
    store = await open_store(url, readonly=True)
    try:
        return await store.counts()
    finally:
        await store.aclose()


# --- one timed run of N worker processes -------------------------------------------------

def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.postgres", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def _stop(procs: list[subprocess.Popen[str]], grace: float) -> list[dict[str, Any]]:
    """Wait for the workers to leave by themselves, then kill them; their reports."""
    deadline = time.monotonic() + grace
    reports = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        reports += [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    return reports


async def run_processes(stores: Stores, backend: str, workload: str, jobs: int,
                        processes: int, timeout: float) -> dict[str, Any]:
    url = stores.fresh(backend, f"{workload}{processes}")
    try:
        submit_s = await presubmit(url, jobs)
        conn = None
        if backend == "postgresql":
            conn = await asyncpg.connect(database_url(stores.server, stores.database))
        pg_before = pg_cpu()
        t0 = time.time()
        procs = [_spawn("--worker", url, workload) for _ in range(processes)]
        try:
            deadline = time.monotonic() + timeout
            if conn is not None:
                while (await totals(conn, _schema(url))).get("succeeded", 0) < jobs:
                    if any(p.poll() is not None for p in procs):
                        raise RuntimeError("a worker exited before the jobs were done")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"not done after {timeout:.0f} s")
                    await anyio.sleep(POLL)
                t_end = time.time()
                cpu = cpu_seconds([p.pid for p in procs])
                pg_s = pg_cpu_delta(pg_before)
                reports = _stop(procs, 30.0)
                await conn.close()
            else:  # the worker's join() is exact: it is the only writer
                reports = await anyio.to_thread.run_sync(_stop, procs, timeout)
                if not reports:
                    raise RuntimeError(f"the worker exited {procs[0].returncode} with no report")
                t_end = reports[0]["done"]
                cpu = reports[0]["cpu"]
                pg_s = 0.0
        finally:
            _stop(procs, 0.0)
        counts = await row_counts(url)
    finally:
        await stores.drop(url)
    if counts[JobState.SUCCEEDED] != jobs or len(reports) != processes:
        raise RuntimeError(f"expected {jobs} succeeded from {processes} workers, got "
                           f"{dict(counts)} and {len(reports)} reports")
    first = min(r["first"] for r in reports if r["first"] is not None)
    seconds = t_end - t0
    return {"value": jobs / seconds, "seconds": round(seconds, 3),
            "startup_s": round(first - t0, 3), "steady": round(jobs / (t_end - first)),
            "cpu_s": round(cpu, 2), "pg_cpu_s": round(pg_s, 2), "submit_s": round(submit_s, 2),
            "commits": sum(r["commits"] for r in reports)}


# --- in-process, as runtime.noop ---------------------------------------------------------

async def run_inprocess(stores: Stores, backend: str, jobs: int) -> float:
    from benchmarks.runtime import throughput

    url = stores.fresh(backend, "inproc")
    try:
        return await throughput(url, noop, jobs, CONCURRENCY)
    finally:
        await stores.drop(url)


# --- recovery ----------------------------------------------------------------------------

async def run_recover(stores: Stores, n: int, timeout: float) -> dict[str, Any]:
    url = stores.fresh("postgresql", "recover")
    holder = None
    try:
        submit_s = await presubmit(url, n)
        start = timed()
        holder = _spawn("--hold", url, str(n))
        assert holder.stdout is not None
        line = await anyio.to_thread.run_sync(holder.stdout.readline)
        if not line.startswith("{"):
            raise RuntimeError(f"the holder exited {holder.wait()} before leasing {n} jobs")
        lease_s = timed() - start
        async with Runtime(noop, store=url, concurrency=CONCURRENCY) as rt:
            rt.pause()  # the survivor only watches: leases given back stay planned
            await rt.wait(lambda s: s.counts[JobState.LEASED] == n)
            # at a random point of the keeper's 0.5 s period, not always the same one
            await anyio.sleep(random.uniform(0.0, 1.0))
            start = timed()
            os.killpg(holder.pid, signal.SIGKILL)
            with anyio.fail_after(timeout):
                await rt.wait(lambda s: s.counts[JobState.PLANNED] == n)
            seconds = timed() - start
            counts = await rt.store.counts()
    finally:
        if holder is not None:
            _stop([holder], 0.0)
        await stores.drop(url)
    if counts[JobState.PLANNED] != n:
        raise RuntimeError(f"expected {n} planned, the rows say {dict(counts)}")
    return {"value": seconds, "lease_s": round(lease_s, 2), "submit_s": round(submit_s, 2)}


# --- the suite ---------------------------------------------------------------------------

async def suite(args: argparse.Namespace) -> None:
    def want(name: str) -> bool:
        return args.only is None or args.only in name

    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as tmp:
        stores = Stores(args.pg, args.database, Path(tmp))
        await stores.open()

        def context(**extra: Any) -> dict[str, Any]:
            return {**extra, "server": stores.settings, "load": load()}

        for workload in ("noop", "io"):
            if want(f"sqlite.{workload}"):
                ref = await run_processes(stores, "sqlite", workload, args.jobs, 1, args.timeout)
                sqlite_rate = ref.pop("value")
                emit(f"sqlite.{workload}", sqlite_rate, "jobs/s",
                     **context(processes=1, jobs=args.jobs, concurrency=CONCURRENCY, **ref))
            else:
                sqlite_rate = None
            if not want(f"postgres.{workload}"):
                continue
            one = None
            for processes in args.processes:
                res = await run_processes(stores, "postgresql", workload, args.jobs, processes,
                                          args.timeout)
                value = res.pop("value")
                one = value if one is None else one
                extra = {"of_sqlite": round(value / sqlite_rate, 3)} if sqlite_rate else {}
                if workload == "io":  # 10 ms a job, 100 at a time in each process
                    extra["of_ideal"] = round(value / (processes * CONCURRENCY / 0.01), 3)
                emit(f"postgres.{workload}", value, "jobs/s", baseline=one,
                     **context(processes=processes, jobs=args.jobs, concurrency=CONCURRENCY,
                               **extra, **res))
        if want("noop_inprocess"):
            ref_rate = await run_inprocess(stores, "sqlite", args.jobs)
            emit("sqlite.noop_inprocess", ref_rate, "jobs/s",
                 **context(jobs=args.jobs, concurrency=CONCURRENCY, loop="uvloop"))
            rate = await run_inprocess(stores, "postgresql", args.jobs)
            emit("postgres.noop_inprocess", rate, "jobs/s", baseline=ref_rate,
                 **context(jobs=args.jobs, concurrency=CONCURRENCY, loop="uvloop"))
        if want("postgres.recover_10k"):
            # the keeper looks every 0.5 s, so one kill lands anywhere in that period: the
            # median of a few kills, with every run listed
            runs = [await run_recover(stores, args.recover, args.timeout)
                    for _ in range(args.recover_runs)]
            runs.sort(key=lambda r: r["value"])
            res = dict(runs[len(runs) // 2])
            emit("postgres.recover_10k", res.pop("value"), "s",
                 **context(leases=args.recover, lease_seconds=600.0, keeper_every=0.5,
                           runs=[round(r["value"], 3) for r in runs], **res))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 jobs instead of 20,000")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--processes", default="1,2,3", help="worker process counts (1 first)")
    parser.add_argument("--recover", type=int, default=10_000, help="leases held, then killed")
    parser.add_argument("--recover-runs", type=int, default=None,
                        help="kills to take the median of (default 5; 3 with --quick)")
    parser.add_argument("--only", default=None, help="a part of the names of the lines to run")
    parser.add_argument("--pg", default=os.environ.get(
        "SYNCWARD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432"), help="the server")
    parser.add_argument("--database", default="bench_syncward",
                        help="created if missing; each run makes and drops a schema in it")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--worker", nargs=2, metavar=("URL", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--hold", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        anyio.run(_work, *args.worker, backend_options={"use_uvloop": True})
        return
    if args.hold:
        anyio.run(_hold, args.hold[0], int(args.hold[1]), backend_options={"use_uvloop": True})
        return
    args.jobs = args.jobs or (5_000 if args.quick else 20_000)
    args.recover_runs = args.recover_runs or (3 if args.quick else 5)
    args.processes = [int(x) for x in args.processes.split(",")]
    anyio.run(suite, args, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()
