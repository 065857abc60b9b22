"""The incident, side by side: a naive Redis-list sync and syncward, same producers.

Producers push records to a Redis list in batches of 50 (RPUSH), concurrently. Two
consumers drain their own copy of that workload into SQLite:

  naive     LRANGE 0 99, write the rows, commit, LTRIM 100 -1 (the incident's loop: a
            batch pushed between the read and the trim is trimmed without being written)
  syncward  `RedisListSource`: items move to a processing list atomically and leave it
            only after the commit that records them

Prints one JSON line with how many records each lost; exits 1 if syncward lost any.
Needs a Redis server (default redis://127.0.0.1:6379/15; the keys it uses are deleted).

Run: python examples/trim_loss.py [--records 20000] [--producers 8] [--redis URL]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import redis.asyncio as aioredis

import syncward
from syncward.adapters.redis_list import ListConfig, RedisListSource

BATCH = 50


def record(n: int) -> str:
    return json.dumps({"identity": {"record": n}})


async def produce(r: aioredis.Redis, key: str, producers: int, records: int) -> None:
    per = records // producers

    async def producer(p: int) -> None:
        rng = random.Random(p)
        base = p * per
        for start in range(0, per, BATCH):
            await r.rpush(key, *(record(base + i) for i in range(start, min(per, start + BATCH))))
            await anyio.sleep(rng.uniform(0.01, 0.09))  # work between pushes, as downloads do

    async with anyio.create_task_group() as tg:
        for p in range(producers):
            tg.start_soon(producer, p)


async def naive(r: aioredis.Redis, key: str, db: Path, producers: int, records: int) -> int:
    conn = sqlite3.connect(db, check_same_thread=False)
    conn.execute("CREATE TABLE records (n INTEGER PRIMARY KEY)")
    producing = True

    def write(rows: list[bytes]) -> None:
        conn.executemany("INSERT OR IGNORE INTO records VALUES (?)",
                         [(json.loads(x)["identity"]["record"],) for x in rows])
        conn.commit()

    async def sync() -> None:
        while producing or await r.llen(key):
            rows = await r.lrange(key, 0, 99)
            if rows:
                await anyio.to_thread.run_sync(write, rows)
                await r.ltrim(key, 100, -1)
            else:
                await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sync)
        await produce(r, key, producers, records)
        producing = False
    (written,) = conn.execute("SELECT count(*) FROM records").fetchone()
    conn.close()
    return records - int(written)


async def through_syncward(url: str, key: str, db: Path, producers: int, records: int) -> int:
    async def handler(job: syncward.Job, ctx: syncward.Context) -> None:
        return None

    source = RedisListSource(ListConfig(url=url, list=key, idle=30.0))
    async with syncward.Runtime(handler, store=f"sqlite:///{db}", sources=[source]) as rt:
        await produce(aioredis.Redis.from_url(url), key, producers, records)
        with anyio.move_on_after(120):
            await rt.wait(lambda s: s.total >= records and s.active == 0)
        total = rt.stats().total
    return records - total


async def main(url: str, producers: int, records: int) -> dict[str, Any]:
    r = aioredis.Redis.from_url(url)
    run = uuid.uuid4().hex[:8]
    keys = (f"trim-loss:{run}:naive", f"trim-loss:{run}:syncward")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            lost_naive = await naive(r, keys[0], Path(tmp) / "naive.db", producers, records)
            t1 = time.perf_counter()
            lost_ours = await through_syncward(url, keys[1], Path(tmp) / "ours.db", producers,
                                               records)
            t2 = time.perf_counter()
    finally:
        stale = [k async for k in r.scan_iter(f"trim-loss:{run}:*")]
        if stale:
            await r.delete(*stale)
        await r.aclose()
    return {"records": records, "producers": producers, "batch": BATCH,
            "naive_lost": lost_naive, "syncward_lost": lost_ours,
            "naive_seconds": round(t1 - t0, 2), "syncward_seconds": round(t2 - t1, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    result = anyio.run(main, args.redis, args.producers, args.records)
    result["ok"] = result["syncward_lost"] == 0
    print(json.dumps({"harness": "trim_loss", **result}))
    sys.exit(0 if result["ok"] else 1)
