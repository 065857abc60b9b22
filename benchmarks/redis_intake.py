"""Redis intake throughput: entries/s from Redis to committed job, against the raw loop.

Lines (entries/s), each with ``baseline`` (the raw loop, same batch size, same run):
  redis_intake.stream  a stream through `RedisStreamSource`: from a full stream to the
                       last entry XACKed, i.e. recorded as a job in a durable SQLite store
                       (synchronous FULL) first; the jobs run meanwhile (no-op handler).
                       Baseline: XREADGROUP COUNT batch + one multi-id XACK, nothing else.
  redis_intake.list    a list through `RedisListSource` (to the last LREM after commit).
                       Baseline: the same LMOVE script + pipelined LREMs, nothing else.

Needs a Redis (``--url``, default redis://127.0.0.1:6379/0); uses keys under a fresh
``swbench:<id>:`` prefix and deletes them.

Run: python -m benchmarks.redis_intake [--entries N] [--batch B] [--url URL] [--loop L]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from benchmarks._common import emit, timed
from syncward import Context, Job, Runtime
from syncward.adapters.redis import RedisStreamSource, StreamConfig, enqueue
from syncward.adapters.redis_list import _TAKE, ListConfig, RedisListSource


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


async def _through_runtime(source: Any, n: int, tmp: Path) -> float:
    async with Runtime(noop, store=f"sqlite:///{tmp / 'jobs.db'}", sources=[source],
                       concurrency=32) as rt:
        start = timed()
        while source.status()["acked"] < n:  # the last ack follows the last commit
            await anyio.sleep(0.002)
        elapsed = timed() - start
        assert rt.stats().total == n, rt.stats()
    return n / elapsed


async def raw_stream(r: aioredis.Redis, key: str, n: int, batch: int) -> float:
    await r.xgroup_create(key, "raw", id="0")
    done = 0
    start = timed()
    while done < n:
        resp = await r.xreadgroup("raw", "c", {key: ">"}, count=batch)
        ids = [entry_id for _, entries in resp for entry_id, _ in entries]
        await r.xack(key, "raw", *ids)
        done += len(ids)
    return n / (timed() - start)


async def raw_list(r: aioredis.Redis, key: str, n: int, batch: int) -> float:
    take = r.register_script(_TAKE)
    processing = f"{key}:processing:raw"
    done = 0
    start = timed()
    while done < n:
        items = await take(keys=[key, processing], args=[batch])
        pipe = r.pipeline(transaction=False)
        for item in items:
            pipe.lrem(processing, 1, item)
        await pipe.execute()
        done += len(items)
    return n / (timed() - start)


async def bench(url: str, n: int, batch: int, loop: str) -> None:
    prefix = f"swbench:{uuid.uuid4().hex[:8]}:"
    r = aioredis.Redis.from_url(url)
    extra = {"entries": n, "batch": batch, "loop": loop, "hiredis": HIREDIS_AVAILABLE}
    try:
        await _fill_stream(r, prefix + "raw", n)
        raw = await raw_stream(r, prefix + "raw", n, batch)
        await _fill_stream(r, prefix + "s", n)
        with tempfile.TemporaryDirectory() as tmp:
            src = RedisStreamSource(StreamConfig(url=url, stream=prefix + "s", batch=batch,
                                                 block=0.05))
            ours = await _through_runtime(src, n, Path(tmp))
        emit("redis_intake.stream", ours, "entries/s", baseline=raw, **extra)

        await _fill_list(r, prefix + "rawl", n)
        raw = await raw_list(r, prefix + "rawl", n, batch)
        await _fill_list(r, prefix + "l", n)
        with tempfile.TemporaryDirectory() as tmp:
            lsrc = RedisListSource(ListConfig(url=url, list=prefix + "l", batch=batch,
                                              block=0.05))
            ours = await _through_runtime(lsrc, n, Path(tmp))
        emit("redis_intake.list", ours, "entries/s", baseline=raw, **extra)
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
