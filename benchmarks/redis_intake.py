"""Redis intake throughput: entries/s from Redis to committed job, against the raw loop.

Lines (entries/s), each with ``baseline`` (a raw loop, same batch size, same run) and
``ratio`` = value / baseline:
  redis_intake.stream  a stream through `RedisStreamSource`: from a full stream to the
                       last entry XACKed, i.e. recorded as a job in a durable SQLite store
                       (synchronous FULL) first; the jobs run meanwhile (no-op handler).
                       Baseline: XREADGROUP COUNT batch + one multi-id XACK, nothing else.
  redis_intake.list    a list through `RedisListSource` (to the last LREM after commit).
                       Baseline: the same LMOVE script + pipelined LREMs, nothing else.
  redis_intake.stream_vs_durable  the value of redis_intake.stream (the same run), against
                       a raw durable loop: XREADGROUP, then the rows inserted with one
                       executemany into the store's own schema (WAL, synchronous FULL) and
                       committed, then XACK; one batch at a time, on the event loop. Its
                       key is the SHA-256 of the entry's identity bytes, no JSON parsed:
                       the database work of ours, none of our checks.
  redis_intake.list_vs_durable    the same for redis_intake.list (LMOVE script, insert and
                       commit, pipelined LREMs; the key hashes the whole item).
  redis_intake.stream_intake_only  ours with leasing paused (`Runtime.pause` on entry), so
                       no job runs during the intake, against the raw durable loop:
                       what the jobs running at the same time cost the intake.
  redis_intake.list_intake_only    the same for the list.

Needs a Redis (``--url``, default redis://127.0.0.1:6379/0); uses keys under a fresh
``swbench:<id>:`` prefix and deletes them.

Run: python -m benchmarks.redis_intake [--entries N] [--batch B] [--url URL] [--loop L]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from benchmarks._common import emit, timed
from syncward import Context, Job, Runtime
from syncward.adapters.redis import RedisStreamSource, StreamConfig, enqueue
from syncward.adapters.redis_list import _TAKE, ListConfig, RedisListSource
from syncward.store.sqlite.schema import MIGRATIONS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

# The store's plain insert (syncward/store/sqlite/tx.py), the same columns and values.
_INSERT = ("INSERT OR IGNORE INTO jobs (key, identity, payload, state, max_attempts,"
           " next_attempt_at, lease_seconds, timeout, created_by, created_at, updated_at)"
           " VALUES (?1, ?2, ?3, 'planned', ?4, ?5, ?6, ?7, ?8, ?9, ?9)")
_JOB_TAG = b"syncward.job.v1\n"


async def noop(job: Job, ctx: Context) -> None:
    return None


async def _fill_stream(r: aioredis.Redis, key: str, n: int) -> None:
    for start in range(0, n, 10_000):
        await enqueue(r, key, ({"id": i} for i in range(start, min(n, start + 10_000))))


async def _fill_list(r: aioredis.Redis, key: str, n: int) -> None:
    for start in range(0, n, 10_000):
        items = [json.dumps({"identity": {"id": i}})
                 for i in range(start, min(n, start + 10_000))]
        await r.rpush(key, *items)


async def _through_runtime(source: Any, n: int, tmp: Path, *, paused: bool = False
                           ) -> float:
    async with Runtime(noop, store=f"sqlite:///{tmp / 'jobs.db'}", sources=[source],
                       concurrency=32) as rt:
        if paused:
            rt.pause()
        start = timed()
        while source.status()["acked"] < n:  # the last ack follows the last commit
            await anyio.sleep(0.002)
        elapsed = timed() - start
        assert rt.stats().total == n, rt.stats()
    return n / elapsed


def _durable(tmp: Path) -> sqlite3.Connection:
    """A database with the store's schema and its write settings (WAL, synchronous FULL)."""
    conn = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA cache_size = -32768")
    for migration in MIGRATIONS:
        conn.executescript(migration)
    return conn


def _insert(conn: sqlite3.Connection, identities: list[bytes]) -> None:
    """One durable transaction inserting one job row per identity."""
    now = time.time()
    rows = [(hashlib.sha256(_JOB_TAG + raw).digest(), raw.decode(), "{}", 5, now, None, None,
             1, now) for raw in identities]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_INSERT, rows)
    conn.execute("COMMIT")


async def raw_stream(r: aioredis.Redis, key: str, n: int, batch: int,
                     conn: sqlite3.Connection | None = None) -> float:
    """XREADGROUP + XACK; with ``conn``, each batch's rows inserted durably in between."""
    await r.xgroup_create(key, "raw", id="0")
    done = 0
    start = timed()
    while done < n:
        resp: Any = await r.xreadgroup("raw", "c", {key: ">"}, count=batch)
        entries = [entry for _, batch_entries in resp for entry in batch_entries]
        if conn is not None:
            _insert(conn, [fields[b"identity"] for _, fields in entries])
        await r.xack(key, "raw", *(entry_id for entry_id, _ in entries))
        done += len(entries)
    return n / (timed() - start)


async def raw_list(r: aioredis.Redis, key: str, n: int, batch: int,
                   conn: sqlite3.Connection | None = None) -> float:
    """The list source's LMOVE script + pipelined LREMs; with ``conn``, durable inserts."""
    take = r.register_script(_TAKE)
    processing = f"{key}:processing:raw"
    done = 0
    start = timed()
    while done < n:
        items = await take(keys=[key, processing], args=[batch])
        if conn is not None:
            _insert(conn, items)
        pipe = r.pipeline(transaction=False)
        for item in items:
            pipe.lrem(processing, 1, item)
        await pipe.execute()
        done += len(items)
    return n / (timed() - start)


async def _ours(source: Any, n: int, *, paused: bool = False) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return await _through_runtime(source, n, Path(tmp), paused=paused)


async def _raw_durable(raw: Callable[..., Awaitable[float]], r: aioredis.Redis, key: str,
                       n: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        conn = _durable(Path(tmp))
        try:
            return await raw(r, key, n, batch, conn)
        finally:
            conn.close()


def _stream_source(url: str, stream: str, batch: int) -> RedisStreamSource:
    return RedisStreamSource(StreamConfig(url=url, stream=stream, batch=batch, block=0.05))


def _list_source(url: str, key: str, batch: int) -> RedisListSource:
    return RedisListSource(ListConfig(url=url, list=key, batch=batch, block=0.05))


async def bench(url: str, n: int, batch: int, loop: str) -> None:
    prefix = f"swbench:{uuid.uuid4().hex[:8]}:"
    r = aioredis.Redis.from_url(url)
    extra = {"entries": n, "batch": batch, "loop": loop, "hiredis": HIREDIS_AVAILABLE}
    try:
        await _fill_stream(r, prefix + "raw", n)
        raw = await raw_stream(r, prefix + "raw", n, batch)
        await _fill_stream(r, prefix + "s", n)
        ours = await _ours(_stream_source(url, prefix + "s", batch), n)
        emit("redis_intake.stream", ours, "entries/s", baseline=raw, **extra)
        await _fill_stream(r, prefix + "rawd", n)
        durable = await _raw_durable(raw_stream, r, prefix + "rawd", n, batch)
        emit("redis_intake.stream_vs_durable", ours, "entries/s", baseline=durable, **extra)
        await _fill_stream(r, prefix + "sp", n)
        alone = await _ours(_stream_source(url, prefix + "sp", batch), n, paused=True)
        emit("redis_intake.stream_intake_only", alone, "entries/s", baseline=durable,
             **extra)

        await _fill_list(r, prefix + "rawl", n)
        raw = await raw_list(r, prefix + "rawl", n, batch)
        await _fill_list(r, prefix + "l", n)
        ours = await _ours(_list_source(url, prefix + "l", batch), n)
        emit("redis_intake.list", ours, "entries/s", baseline=raw, **extra)
        await _fill_list(r, prefix + "rawld", n)
        durable = await _raw_durable(raw_list, r, prefix + "rawld", n, batch)
        emit("redis_intake.list_vs_durable", ours, "entries/s", baseline=durable, **extra)
        await _fill_list(r, prefix + "lp", n)
        alone = await _ours(_list_source(url, prefix + "lp", batch), n, paused=True)
        emit("redis_intake.list_intake_only", alone, "entries/s", baseline=durable, **extra)
    finally:
        keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    anyio.run(bench, args.url, args.entries, args.batch, args.loop,
              backend_options={"use_uvloop": args.loop == "uvloop"})


if __name__ == "__main__":
    main()
