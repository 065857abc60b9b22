"""The Redis list source, and the incident it corrects, side by side against a real Redis.

The incident: producers pushed records onto a list in batches of 50, concurrently; the
sync loop read ``LRANGE 0 99``, wrote the rows, then ``LTRIM 100 -1``. A batch pushed
between the read and the trim was trimmed unwritten. Here the interleaving is forced
with events, so the naive loop loses records every time; the list source loses none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis_helpers import (
    RedisServer,
    SharedRedis,
    await_for,
    drained,
    redis_server_fixture,  # noqa: F401 - fixture
    running,
    shared_redis_fixture,  # noqa: F401 - fixture
)

from syncward import JobState, job_key
from syncward.adapters.redis_list import ListConfig, RedisListSource
from syncward.errors import ConfigError
from syncward.store import JobRow, open_store

BATCH = 50


def db(tmp_path: Path, name: str = "jobs") -> str:
    return f"sqlite:///{tmp_path / name}.db"


async def jobs_in(url: str) -> list[JobRow]:
    """Every job of the store at ``url``, by id, read through `StoreReader` (read-only).

    One read per state: call it when no runtime is writing.
    """
    store = await open_store(url, readonly=True)
    try:
        jobs = [job for state in JobState for job in await store.jobs_in_state(state)]
    finally:
        await store.aclose()
    return sorted(jobs, key=lambda job: job.id)


async def keys_in(url: str) -> set[str]:
    return {job.key for job in await jobs_in(url)}


def item(i: int) -> str:
    return json.dumps({"identity": {"id": i}, "payload": {"row": f"record {i}"}})


def batch(n: int) -> list[str]:
    return [item(i) for i in range(n * BATCH, (n + 1) * BATCH)]


def source(r: SharedRedis, name: str, **kw: Any) -> RedisListSource:
    kw.setdefault("block", 0.05)
    return RedisListSource(ListConfig(url=r.url, list=name, **kw))


def test_config_from_url() -> None:
    cfg = ListConfig.from_url("redis://h:1/3?list=rows&idle=2&batch=10&dead=bad")
    assert (cfg.url, cfg.list, cfg.idle, cfg.batch, cfg.dead_letter_list) == (
        "redis://h:1/3", "rows", 2.0, 10, "bad")
    assert cfg.processing("syncward-1") == "rows:processing:syncward-1"
    with pytest.raises(ConfigError, match="give the list"):
        ListConfig.from_url("redis://h/0?batch=3")


@pytest.mark.integration
async def test_incident_naive_lrange_ltrim_loses_records_the_list_source_none(
        shared_redis: SharedRedis, tmp_path: Path) -> None:
    rounds = 10
    # --- the old pattern -----------------------------------------------------------
    old = shared_redis.key("old")
    r = shared_redis.aclient()
    written: list[str] = []
    read_done = [anyio.Event() for _ in range(rounds)]
    pushed_late = [anyio.Event() for _ in range(rounds)]
    pushed = [anyio.Event() for _ in range(rounds)]

    async def producers() -> None:
        for n in range(rounds):
            await r.rpush(old, *batch(2 * n))  # producer A: a batch of 50
            pushed[n].set()
            await read_done[n].wait()
            await r.rpush(old, *batch(2 * n + 1))  # producer B, while the sync writes
            pushed_late[n].set()

    async def naive_sync() -> None:
        for n in range(rounds):
            await pushed[n].wait()
            rows = await r.lrange(old, 0, 99)  # "read 100"
            read_done[n].set()
            written.extend(row.decode() for row in rows)  # "write"
            await pushed_late[n].wait()
            await r.ltrim(old, 100, -1)  # "trim 100": B's batch goes unwritten

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producers)
            tg.start_soon(naive_sync)
    total = rounds * 2 * BATCH
    lost_old = total - len(set(written)) - await r.llen(old)
    assert lost_old == rounds * BATCH  # every late batch vanished, silently

    # --- the list source, same producers, same interleaving --------------------------
    new = shared_redis.key("new")
    src = source(shared_redis, new, batch=100)
    gate, held = anyio.Event(), anyio.Event()
    try:
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                apply = rt.store.apply

                async def commit_after_the_late_batch(batch_: Any, **kw: Any) -> Any:
                    if any(type(m).__name__ == "Submit" and m.jobs for m in batch_):
                        held.set()
                        await gate.wait()
                    return await apply(batch_, **kw)

                rt.store.apply = commit_after_the_late_batch  # type: ignore[method-assign]
                for n in range(rounds):
                    held = anyio.Event()
                    await r.rpush(new, *batch(2 * n))
                    await held.wait()  # read, not yet committed
                    await r.rpush(new, *batch(2 * n + 1))  # the late batch
                    gate.set()
                    gate = anyio.Event()
                rt.store.apply = apply  # type: ignore[method-assign]
                gate.set()
                status = await drained(rt, src)
        left = [await r.llen(new), await r.llen(f"{new}:processing:{status['consumer']}")]
    finally:
        await r.aclose()
    assert await keys_in(db(tmp_path)) == {job_key({"id": i}) for i in range(total)}
    assert left == [0, 0]
    assert status["read"] == status["acked"] == total


@pytest.mark.integration
async def test_drains_the_list_and_dead_letters_malformed_items(shared_redis: SharedRedis,
                                                                tmp_path: Path) -> None:
    name = shared_redis.key("rows")
    r = shared_redis.aclient()
    bad = ["not json", '{"identity": {"id": 1.5}}', '{"payload": {}}', '["a"]', b"\xff"]
    try:
        await r.rpush(name, *[item(i) for i in range(400)], *bad, item(400))
        src = source(shared_redis, name, batch=64)
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                status = await drained(rt, src)
        dead = [json.loads(x) for x in await r.lrange(f"{name}:dead", 0, -1)]
        left = await r.llen(name), await r.llen(f"{name}:processing:syncward-1")
    finally:
        await r.aclose()
    assert len(await keys_in(db(tmp_path))) == 401
    assert left == (0, 0)
    assert status["dead_lettered"] == 5 and status["consumer"] == "syncward-1"
    assert [d["item"] for d in dead] == [*bad[:4], "\\xff"]
    reasons = [d["error"] for d in dead]
    assert "item is not valid JSON" in reasons[0]
    assert "floats are not exact identities" in reasons[1]
    assert "no 'identity' field" in reasons[2]
    assert "item must be a JSON object, got list" in reasons[3]
    assert "not valid UTF-8" in reasons[4]


@pytest.mark.integration
async def test_start_up_finishes_its_own_processing_list_first(shared_redis: SharedRedis,
                                                               tmp_path: Path) -> None:
    name = shared_redis.key("rows")
    r = shared_redis.aclient()
    try:
        first = source(shared_redis, name)
        with anyio.fail_after(20):
            async with running(first, db(tmp_path)) as rt:
                await drained(rt, first)
        processing = f"{name}:processing:syncward-1"
        # A crash after BLMOVE and before the commit: items wait in the processing list.
        await r.rpush(processing, *[item(i) for i in range(30)])
        await r.rpush(name, *[item(i) for i in range(30, 100)])
        again = source(shared_redis, name, batch=10)
        with anyio.fail_after(20):
            async with running(again, db(tmp_path)) as rt:
                status = await drained(rt, again)
        left = await r.llen(processing)
    finally:
        await r.aclose()
    assert status["consumer"] == "syncward-1" and left == 0
    order = [job.identity["id"] for job in await jobs_in(db(tmp_path))]
    assert sorted(order[:30]) == list(range(30))  # its own processing list, first
    assert sorted(order) == list(range(100))


@pytest.mark.integration
async def test_a_gone_consumers_processing_list_goes_back_to_the_list(
        shared_redis: SharedRedis, tmp_path: Path) -> None:
    name = shared_redis.key("rows")
    r = shared_redis.aclient()
    try:
        await r.sadd(f"{name}:consumers", "syncward-7", "syncward-8")
        await r.rpush(f"{name}:processing:syncward-7", *[item(i) for i in range(40)])  # gone
        await r.rpush(f"{name}:processing:syncward-8", item(1000))  # alive, slow
        await r.set(f"{name}:alive:syncward-8", "1", ex=60)
        await r.rpush(name, *[item(i) for i in range(40, 60)])
        src = source(shared_redis, name, idle=0.3)
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                await rt.wait(lambda s: s.total == 60 and s.active == 0)
                await await_for(lambda: src.status()["unacked"] == 0, timeout=5, what="acks")
        gone = await r.exists(f"{name}:processing:syncward-7")
        alive = await r.lrange(f"{name}:processing:syncward-8", 0, -1)
        members = await r.smembers(f"{name}:consumers")
    finally:
        await r.aclose()
    assert await keys_in(db(tmp_path)) == {job_key({"id": i}) for i in range(60)}
    assert src.status()["reclaimed"] == 40 and not gone
    assert [a.decode() for a in alive] == [item(1000)]  # a live consumer's list is its own
    assert members == {b"syncward-1", b"syncward-8"}


@pytest.mark.integration
@pytest.mark.slow
async def test_a_redis_restart_without_persistence_is_a_gap_and_the_list_goes_on(
        redis_server: Any, tmp_path: Path) -> None:
    server: RedisServer = redis_server(persist=False)
    src = RedisListSource(ListConfig(url=server.url, list="rows", block=0.05,
                                     retry_initial=0.05, retry_max=0.2))
    with anyio.fail_after(30):
        async with running(src, db(tmp_path)) as rt:
            r = server.aclient()
            await r.rpush("rows", *[item(i) for i in range(50)])
            await r.aclose()
            await drained(rt, src)
            server.kill()
            await await_for(lambda: not src.status()["connected"], timeout=10,
                            what="status shows disconnected")
            server.start()  # empty: its registry of consumers is gone
            r = server.aclient()
            await r.rpush("rows", *[item(i) for i in range(50, 100)])
            await await_for(lambda: bool(src.status()["gaps"]), timeout=10, what="the gap")
            status = await drained(rt, src)
            await r.aclose()
    assert await keys_in(db(tmp_path)) == {job_key({"id": i}) for i in range(100)}
    assert status["redis_restarts"] == 1 and len(status["gaps"]) == 1
    assert "lost the consumers of list 'rows'" in status["gaps"][0]["reason"]


@pytest.mark.integration
async def test_each_commit_removes_one_copy_per_item_recorded(shared_redis: SharedRedis,
                                                              tmp_path: Path) -> None:
    # Equal items are the same job: each copy taken is removed once (one LREM each, in
    # one script call), whichever batch took it, and nothing else in the list is touched.
    name = shared_redis.key("rows")
    r = shared_redis.aclient()
    items = [item(i % 7) for i in range(300)]  # every item 42 or 43 times, interleaved
    try:
        await r.rpush(name, *items)
        src = source(shared_redis, name, batch=16, max_outstanding=40)
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                status = await drained(rt, src)
        left = await r.llen(name), await r.llen(f"{name}:processing:{status['consumer']}")
    finally:
        await r.aclose()
    assert await keys_in(db(tmp_path)) == {job_key({"id": i}) for i in range(7)}
    assert left == (0, 0)
    assert status["read"] == status["acked"] == 300
