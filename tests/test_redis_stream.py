"""The Redis stream source against a real Redis: acks after commit, claims, faults, gaps.

The shared server (``shared_redis``) serves the quick tests, each under its own key
prefix; tests that kill or restart Redis start their own (``redis_server``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from redis_helpers import (
    RedisServer,
    SharedRedis,
    await_for,
    drained,
    redis_server_fixture,  # noqa: F401 - fixture
    running,
    shared_redis_fixture,  # noqa: F401 - fixture
    wait_for,
)

from syncward import (
    Context,
    InvalidJob,
    Job,
    JobSpec,
    JobState,
    RestartIntensity,
    Runtime,
    job_key,
)
from syncward.adapters._redis_base import endpoint
from syncward.adapters.redis import (
    Malformed,
    RedisStreamSource,
    StreamConfig,
    enqueue,
    parse_fields,
)
from syncward.cli import cli as syncward_cli
from syncward.errors import ConfigError, StoreError
from syncward.store import JobRow, StoreReader, open_store
from syncward.testing import Faults


def db(tmp_path: Path, name: str = "jobs") -> str:
    return f"sqlite:///{tmp_path / name}.db"


@asynccontextmanager
async def reading(url: str) -> AsyncIterator[StoreReader]:
    """The store at ``url`` as another reader sees it: read-only, through `StoreReader`."""
    store = await open_store(url, readonly=True)
    try:
        yield store
    finally:
        await store.aclose()


async def all_jobs(url: str) -> list[JobRow]:
    """Every job, by id. (One read per state: call it when no runtime is writing.)"""
    async with reading(url) as store:
        jobs = [job for state in JobState for job in await store.jobs_in_state(state)]
    return sorted(jobs, key=lambda job: job.id)


async def keys_in(url: str) -> set[str]:
    return {job.key for job in await all_jobs(url)}


async def states_in(url: str) -> set[JobState]:
    """The states some job is in (SQL's ``SELECT DISTINCT state``)."""
    async with reading(url) as store:
        return {state for state, n in (await store.counts()).items() if n}


def source(r: SharedRedis | RedisServer, stream: str, **kw: Any) -> RedisStreamSource:
    url = r.url
    kw.setdefault("block", 0.05)
    return RedisStreamSource(StreamConfig(url=url, stream=stream, **kw))


def ids(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i} for i in range(start, start + n)]


# --- the format --------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "reason"), [
    ({b"payload": b"{}"}, "no 'identity' field"),
    ({b"identity": b"{not json"}, "identity is not valid JSON"),
    ({b"identity": b"[1, 2]"}, "identity must be a JSON object, got list"),
    ({b"identity": b'{"id": 1.5}'}, "floats are not exact identities"),
    ({b"identity": b'{"id": NaN}'}, "identity is not valid JSON"),
    ({b"identity": b"{}"}, "identity is empty"),
    ({b"identity": b'{"id": 1}', b"payload": b"[]"}, "payload must be a JSON object"),
    ({b"identity": b'{"id": 1}', b"extra": b"x"}, "unknown field(s) 'extra'"),
    ({b"identity": b'{"id": "\xff"}'}, "identity is not valid UTF-8"),
])
def test_malformed_fields_are_named(fields: dict[bytes, bytes], reason: str) -> None:
    parsed = parse_fields(fields)
    assert isinstance(parsed, Malformed)
    assert reason in parsed.reason


def test_good_fields_parse_to_a_spec() -> None:
    parsed = parse_fields({b"identity": b'{"id": 7, "kind": "a"}', b"payload": b'{"n": [1]}'})
    assert parsed == JobSpec(identity={"id": 7, "kind": "a"}, payload={"n": [1]})
    assert parse_fields(None) is None  # an entry deleted while pending


def test_config_from_url() -> None:
    cfg = StreamConfig.from_url("redis://h:7000/2?stream=in&group=g&idle=5&batch=10"
                                "&delete_acked=yes&dead=bad")
    assert (cfg.url, cfg.stream, cfg.group, cfg.claim_idle, cfg.batch) == (
        "redis://h:7000/2", "in", "g", 5.0, 10)
    assert cfg.delete_acked and cfg.dead_letter_stream == "bad" and cfg.claim_period == 2.5
    for bad, needle in [("redis://h/0?group=g", "give the stream"),
                        ("redis://h/0?stream=s&colour=red", "unknown parameter 'colour'"),
                        ("redis://h/0?stream=s&idle=soon", "idle='soon' is not a number"),
                        ("http://h/0?stream=s", "not a Redis URL"),
                        ("redis://:pw@h/0?stream=s&x=1", "redis://:***@h/0")]:
        with pytest.raises(ConfigError, match=None) as info:
            StreamConfig.from_url(bad)
        assert needle in str(info.value)
        assert "pw" not in str(info.value)


@pytest.mark.integration
async def test_enqueue_writes_the_format_and_refuses_bad_specs_whole(
        shared_redis: SharedRedis) -> None:
    stream = shared_redis.key("in")
    r = shared_redis.aclient()
    try:
        with pytest.raises(InvalidJob):
            await enqueue(r, stream, [{"id": 1}, {"id": 1.5}])
        with pytest.raises(InvalidJob, match="max_attempts"):
            await enqueue(r, stream, [JobSpec(identity={"id": 1}, max_attempts=2)])
        assert await r.xlen(stream) == 0  # nothing sent
        new = await enqueue(r, stream, [{"id": 1}, JobSpec({"id": "é"}, {"url": "u"})])
        entries = await r.xrange(stream)
    finally:
        await r.aclose()
    assert [e[0].decode() for e in entries] == new
    assert entries[0][1] == {b"identity": b'{"id":1}'}
    assert json.loads(entries[1][1][b"payload"]) == {"url": "u"}
    assert parse_fields(entries[1][1]) == JobSpec({"id": "é"}, {"url": "u"})


def test_importing_without_redis_raises_missing_dependency() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "try:\n    import syncward.adapters.redis\n"
            "except Exception as e:\n    print(type(e).__name__, e.extra)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30)
    assert out.stdout.strip() == "MissingDependency redis"


# --- consuming ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_entries_become_jobs_acked_only_after_commit(shared_redis: SharedRedis,
                                                         tmp_path: Path) -> None:
    stream, group = shared_redis.key("in"), "g"
    r = shared_redis.aclient()
    specs = [JobSpec({"id": i}, {"n": i}) for i in range(1200)]
    await enqueue(r, stream, specs)
    src = source(shared_redis, stream, group=group, batch=100)
    try:
        with anyio.fail_after(30):
            async with running(src, db(tmp_path)) as rt:
                status = await drained(rt, src)
                meta = await rt.store.get_meta(
                    f"redis.stream.consumer:{src.config.url.split('//')[1]}/{stream}/{group}")
        pending = await r.xpending(stream, group)
        length = await r.xlen(stream)
    finally:
        await r.aclose()
    assert await keys_in(db(tmp_path)) == {job_key(s.identity) for s in specs}
    async with reading(db(tmp_path)) as store:
        fifth = await store.get_job(job_key({"id": 5}))
    assert fifth is not None and fifth.identity == {"id": 5}
    assert fifth.payload == {"n": 5}
    assert pending["pending"] == 0
    assert length == 1200  # acknowledged, not deleted (delete_acked is off)
    assert status["consumer"] == meta == "syncward-1"
    assert (status["read"], status["committed"], status["acked"]) == (1200, 1200, 1200)
    assert status["connected"] and status["gaps"] == [] and status["dead_lettered"] == 0


@pytest.mark.integration
async def test_nothing_is_acknowledged_before_its_commit(shared_redis: SharedRedis,
                                                       tmp_path: Path) -> None:
    stream, group = shared_redis.key("in"), "g"
    r = shared_redis.aclient()
    await enqueue(r, stream, ids(200))
    src = source(shared_redis, stream, group=group, batch=50)
    gate = anyio.Event()
    try:
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                apply = rt.store.apply

                async def held(batch: Any, **kw: Any) -> Any:
                    if any(type(m).__name__ == "Submit" and m.jobs for m in batch):
                        await gate.wait()  # the commit that records the entries waits
                    return await apply(batch, **kw)

                rt.store.apply = held  # type: ignore[method-assign]
                await await_for(lambda: src.status()["read"] == 200, timeout=10,
                                what="every entry read")
                before = src.status()
                pending = (await r.xpending(stream, group))["pending"]
                gate.set()
                after = await drained(rt, src)
        assert (await r.xpending(stream, group))["pending"] == 0
    finally:
        await r.aclose()
    assert before["acked"] == before["committed"] == 0 and before["outstanding"] == 200
    assert pending == 200  # every entry read is still pending in Redis
    assert after["acked"] == 200
    assert len(await keys_in(db(tmp_path))) == 200


@pytest.mark.integration
async def test_a_crash_between_commit_and_ack_acks_after_the_redelivery(
        shared_redis: SharedRedis, tmp_path: Path) -> None:
    stream, group = shared_redis.key("in"), "g"
    r = shared_redis.aclient()
    await enqueue(r, stream, ids(300))
    faults = Faults()
    faults.arm("syncer.after_commit", times=3)
    src = source(shared_redis, stream, group=group, batch=50)
    try:
        with anyio.fail_after(20):
            async with running(src, db(tmp_path), faults=faults,
                               intensity=RestartIntensity(max_restarts=10, within=5)) as rt:
                await drained(rt, src)
        assert (await r.xpending(stream, group))["pending"] == 0
    finally:
        await r.aclose()
    assert faults.fired["syncer.after_commit"] == 3
    assert len(await keys_in(db(tmp_path))) == 300


@pytest.mark.integration
async def test_delete_acked_deletes_acknowledged_entries(shared_redis: SharedRedis,
                                                         tmp_path: Path) -> None:
    stream = shared_redis.key("in")
    r = shared_redis.aclient()
    await enqueue(r, stream, ids(300))
    src = source(shared_redis, stream, delete_acked=True, batch=50)
    try:
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                await drained(rt, src)
        assert await r.xlen(stream) == 0
    finally:
        await r.aclose()
    assert len(await keys_in(db(tmp_path))) == 300


@pytest.mark.integration
async def test_malformed_entries_land_in_the_dead_letter_stream_with_their_reason(
        shared_redis: SharedRedis, tmp_path: Path) -> None:
    stream = shared_redis.key("in")
    r = shared_redis.aclient()
    bad = [{"payload": "{}"}, {"identity": "{oops"}, {"identity": '{"id": true}'},
           {"identity": '{"id": 1}', "payload": '"text"'}, {"identity": b"\xff\xfe"}]
    try:
        await enqueue(r, stream, ids(5))
        bad_ids = [await r.xadd(stream, fields) for fields in bad]  # type: ignore[arg-type]
        await enqueue(r, stream, ids(5, start=5))
        src = source(shared_redis, stream, group="g")
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                status = await drained(rt, src)
        dead = await r.xrange(f"{stream}:dead")
        pending = await r.xpending(stream, "g")
    finally:
        await r.aclose()
    assert len(await keys_in(db(tmp_path))) == 10
    assert status["dead_lettered"] == 5 and pending["pending"] == 0
    assert [fields[b"id"] for _, fields in dead] == bad_ids
    reasons = [fields[b"error"].decode() for _, fields in dead]
    assert "no 'identity' field" in reasons[0]
    assert "identity is not valid JSON" in reasons[1]
    assert "got bool" in reasons[2]
    assert "payload must be a JSON object, got str" in reasons[3]
    assert "not valid UTF-8" in reasons[4]
    assert dead[4][1][b"entry.identity"] == b"\xff\xfe"  # the entry, byte for byte
    assert dead[0][1][b"stream"] == stream.encode() and dead[0][1][b"group"] == b"g"


@pytest.mark.integration
async def test_same_store_is_the_same_consumer_and_rereads_its_own_pending_first(
        shared_redis: SharedRedis, tmp_path: Path) -> None:
    stream, group = shared_redis.key("in"), "g"
    r = shared_redis.aclient()
    try:
        src = source(shared_redis, stream, group=group)
        with anyio.fail_after(20):
            async with running(src, db(tmp_path, "a")) as rt:
                await drained(rt, src)
        assert src.status()["consumer"] == "syncward-1"
        await enqueue(r, stream, ids(30))
        # A crash after reading, before committing: 20 entries pending on syncward-1.
        await r.xreadgroup(group, "syncward-1", {stream: ">"}, count=20)
        # Another store joins meanwhile and gets the next number.
        other = source(shared_redis, stream, group=group, claim_idle=3600)
        again = source(shared_redis, stream, group=group, claim_idle=3600)
        with anyio.fail_after(20):
            async with running(other, db(tmp_path, "b")) as rt_b:
                await drained_except_pending(other)
            async with running(again, db(tmp_path, "a")) as rt:
                status = await drained(rt, again)
        pending = await r.xpending(stream, group)
        seq = await r.get(f"{stream}:{group}:seq")
    finally:
        await r.aclose()
    assert other.status()["consumer"] == "syncward-2"
    assert status["consumer"] == "syncward-1"
    assert int(seq) == 2  # no new name for the restarted store
    assert pending["pending"] == 0
    assert {bytes.fromhex(k) for k in await keys_in(db(tmp_path, "a"))} >= {
        bytes.fromhex(job_key({"id": i})) for i in range(20)}
    assert len(await keys_in(db(tmp_path, "a")) | await keys_in(db(tmp_path, "b"))) == 30
    del rt_b


async def drained_except_pending(src: RedisStreamSource) -> None:
    """Wait until ``src`` has read everything new (others' pending entries remain)."""
    await await_for(lambda: src.status()["read"] > 0 and src.status()["unacked"] == 0
                    and src.status()["outstanding"] == 0, timeout=10, what="b read its share")


@pytest.mark.integration
async def test_a_consumer_that_never_comes_back_is_claimed_by_the_others(
        shared_redis: SharedRedis, tmp_path: Path) -> None:
    stream, group = shared_redis.key("in"), "g"
    r = shared_redis.aclient()
    try:
        await enqueue(r, stream, ids(60))
        await r.xgroup_create(stream, group, id="0")
        await r.xreadgroup(group, "ghost", {stream: ">"}, count=40)  # then it dies
        await enqueue(r, stream, ids(60, start=60))
        a = source(shared_redis, stream, group=group, claim_idle=0.3, claim_every=0.1)
        b = source(shared_redis, stream, group=group, claim_idle=0.3, claim_every=0.1)
        with anyio.fail_after(20):
            async with running(a, db(tmp_path, "a")) as rt_a, \
                    running(b, db(tmp_path, "b")) as rt_b:
                await drained(rt_a, a)
                await drained(rt_b, b)
        pending = await r.xpending(stream, group)
    finally:
        await r.aclose()
    ka, kb = await keys_in(db(tmp_path, "a")), await keys_in(db(tmp_path, "b"))
    assert ka | kb == {job_key({"id": i}) for i in range(120)}
    assert a.status()["claimed"] + b.status()["claimed"] >= 40
    assert pending["pending"] == 0
    for path in (db(tmp_path, "a"), db(tmp_path, "b")):  # a store may have got none
        assert await states_in(path) in (set(), {JobState.SUCCEEDED})


@pytest.mark.integration
async def test_a_lost_group_is_recreated_and_the_gap_is_exposed(shared_redis: SharedRedis,
                                                               tmp_path: Path) -> None:
    stream, group = shared_redis.key("in"), "g"
    r = shared_redis.aclient()
    src = source(shared_redis, stream, group=group)
    try:
        await enqueue(r, stream, ids(10))
        with anyio.fail_after(20):
            async with running(src, db(tmp_path)) as rt:
                await drained(rt, src)
                await r.delete(stream)  # the stream and its group, as a flushed Redis would
                await enqueue(r, stream, ids(10, start=10))
                await await_for(lambda: bool(src.status()["gaps"]), timeout=10, what="gap")
                status = await drained(rt, src)
        pending = await r.xpending(stream, group)
    finally:
        await r.aclose()
    assert len(await keys_in(db(tmp_path))) == 20
    assert pending["pending"] == 0
    assert len(status["gaps"]) == 1
    assert "recreated from the start of what remains" in status["gaps"][0]["reason"]
    async with reading(db(tmp_path)) as store:
        events = await store.events(kind="source_gap")
    assert len(events) == 1 and events[0].detail["stream"] == stream


# --- Redis going away --------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
async def test_redis_restarted_mid_run_with_persistence_loses_nothing(
        redis_server: Any, tmp_path: Path) -> None:
    server: RedisServer = redis_server(persist=True)
    stream = "in"
    r = server.aclient()
    await enqueue(r, stream, ids(2000))
    await r.aclose()

    async def slow(job: Any, ctx: Any) -> None:
        await anyio.sleep(0.001)

    src = source(server, stream, batch=100, retry_initial=0.05, retry_max=0.2)
    with anyio.fail_after(40):
        async with running(src, db(tmp_path), slow, concurrency=8) as rt:
            await rt.wait(lambda s: s.total >= 500)
            server.kill()
            await await_for(lambda: not src.status()["connected"], timeout=10,
                            what="status shows disconnected")
            down = src.status()
            assert down["error"] and down["disconnected_since"] is not None
            assert rt.stats().total < 2000  # the runtime runs on, the rest waits in Redis
            server.start()
            r = server.aclient()
            await enqueue(r, stream, ids(500, start=2000))
            status = await drained(rt, src, timeout=30)
    pending = await r.xpending(stream, "syncward")
    await r.aclose()
    assert await keys_in(db(tmp_path)) == {job_key({"id": i}) for i in range(2500)}
    assert pending["pending"] == 0
    assert status["connected"] and status["redis_restarts"] >= 1
    assert status["gaps"] == []  # persistence on: nothing was lost
    assert await states_in(db(tmp_path)) == {JobState.SUCCEEDED}


@pytest.mark.integration
@pytest.mark.slow
async def test_redis_restarted_without_persistence_exposes_the_gap_and_goes_on(
        redis_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server: RedisServer = redis_server("--maxmemory-policy", "allkeys-lru", persist=False)
    stream = "in"
    src = source(server, stream, retry_initial=0.05, retry_max=0.2)
    with anyio.fail_after(30):
        async with running(src, db(tmp_path)) as rt:
            r = server.aclient()
            await enqueue(r, stream, ids(100))
            await r.aclose()
            await drained(rt, src)
            server.restart()  # everything Redis held is gone
            r = server.aclient()
            await enqueue(r, stream, ids(50, start=100))
            await await_for(lambda: bool(src.status()["gaps"]), timeout=10, what="the gap")
            status = await drained(rt, src)
            await r.aclose()
    assert len(await keys_in(db(tmp_path))) == 150
    assert len(status["gaps"]) == 1 and status["redis_restarts"] == 1
    assert any("maxmemory-policy is allkeys-lru" in w for w in status["warnings"])
    assert "maxmemory-policy is allkeys-lru" in caplog.text
    # The restarted Redis has a fresh counter: it is pushed past our name.
    check = server.client()
    assert int(check.get(f"{stream}:syncward:seq") or 0) >= 1
    check.close()


# --- the command line, as separate processes ---------------------------------------------

HANDLER = '''
import anyio

async def work(job, ctx):
    await anyio.sleep(0.002)
    return job.identity["id"]
'''


def cli(tmp_path: Path, *args: str) -> list[str]:
    (tmp_path / "h.py").write_text(HANDLER)
    return [sys.executable, "-m", "syncward.cli", "run", *args, "--handler", "h.py:work",
            "--no-progress", "--json"]


def start(tmp_path: Path, url: str, store: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(cli(tmp_path, url, "--db", store, *extra), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, json.loads(out) if out.strip() else {}, err


async def _counts(store: str) -> dict[JobState, int]:
    async with reading(store) as reader:
        return await reader.counts()


def active_jobs(store: str) -> int:
    """Planned and leased jobs in another process's store; -1 while it cannot be read."""
    try:
        counts = anyio.run(_counts, store)
    except StoreError:
        return -1
    return counts[JobState.PLANNED] + counts[JobState.LEASED]


def job_total(store: str) -> int:
    """How many jobs (so distinct keys: a key is unique) another process's store holds."""
    return sum(anyio.run(_counts, store).values())


async def consumer_names(stores: list[str], meta_key: str) -> list[str | None]:
    """The consumer name each store recorded for its stream and group."""
    names = []
    for store in stores:
        async with reading(store) as reader:
            names.append(await reader.get_meta(meta_key))
    return names


@pytest.mark.integration
@pytest.mark.slow
def test_ten_thousand_entries_three_processes_one_killed_and_restarted(
        shared_redis: SharedRedis, tmp_path: Path) -> None:
    stream, group, n = shared_redis.key("in"), "g", 10_000
    url = f"{shared_redis.url}?stream={stream}&group={group}&idle=10&block=0.1&batch=50"
    stores = [db(tmp_path, f"store{i}") for i in range(3)]
    r = shared_redis.client()
    procs = [start(tmp_path, url, s, "--concurrency", "8") for s in stores]
    try:
        wait_for(lambda: int(r.get(f"{stream}:{group}:seq") or 0) == 3, timeout=20,
                 what="three consumers joined")
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(stream, {"identity": json.dumps({"id": i})})
        pipe.execute()
        victim = 1
        wait_for(lambda: active_jobs(stores[victim]) > 0 and job_total(stores[victim]) >= 800,
                 timeout=20, what="the victim mid-way")
        procs[victim].kill()  # SIGKILL
        procs[victim].communicate(timeout=10)
        consumers = {c["name"].decode(): c["pending"] for c in r.xinfo_consumers(stream, group)}
        procs[victim] = start(tmp_path, url, stores[victim], "--concurrency", "8")

        def done() -> bool:
            info = r.xinfo_groups(stream)[0]
            return (info["entries-read"] == n and info["pending"] == 0
                    and all(active_jobs(s) == 0 for s in stores)
                    and sum(job_total(s) for s in stores) >= n)

        wait_for(done, timeout=40, what="every entry recorded and every job finished")
    finally:
        for proc in procs:
            proc.terminate()
        results = [finish(proc) for proc in procs]
        r.close()
    for code, report, err in results:
        assert code == 3, err  # stopped by a signal: "interrupted", by the convention
        assert report["source"]["gaps"] == [] and report["source"]["dead_lettered"] == 0
        assert report["counts"]["succeeded"] == report["total"], report
    keys = [anyio.run(keys_in, s) for s in stores]
    union = keys[0] | keys[1] | keys[2]
    duplicates = sum(len(k) for k in keys) - len(union)
    print(f"\nper store: {[len(k) for k in keys]}; cross-store duplicates: {duplicates}; "
          f"pending on consumers at the kill: {consumers}")
    assert union == {job_key({"id": i}) for i in range(n)}
    # A claim could only duplicate entries the victim committed and did not acknowledge;
    # it restarts well within the idle time, re-reads its own pending, so none is claimed.
    assert duplicates == 0
    meta_key = f"redis.stream.consumer:{endpoint(shared_redis.url)}/{stream}/{group}"
    names = anyio.run(consumer_names, stores, meta_key)
    assert sorted(name or "" for name in names) == ["syncward-1", "syncward-2", "syncward-3"]
    assert results[victim][1]["source"]["consumer"] == names[victim]  # same consumer


@pytest.mark.integration
@pytest.mark.slow
def test_cli_until_empty_and_its_exit_codes(shared_redis: SharedRedis, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    stream = shared_redis.key("in")
    r = shared_redis.client()
    try:
        for i in range(200):
            r.xadd(stream, {"identity": json.dumps({"id": i})})
        url = f"{shared_redis.url}?stream={stream}&group=g&block=0.1"
        code, report, err = finish(start(tmp_path, url, db(tmp_path), "--until-empty"))
        assert code == 0, err
        assert report["counts"]["succeeded"] == 200 and report["source"]["drained"]
        r.xadd(stream, {"identity": "not json"})
        code, report, err = finish(start(tmp_path, url, db(tmp_path), "--until-empty"))
        assert code == 1 and report["source"]["dead_lettered"] == 1, err  # a dead letter
        assert r.xpending(stream, "g")["pending"] == 0
    finally:
        r.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading the handler extends it
    for bad, needle in [(f"{shared_redis.url}?lst=x", "give ?stream=NAME&group=G or ?list"),
                        ("redis://127.0.0.1:1/0?stream=s", "cannot reach Redis"),
                        (f"{shared_redis.url}?list={stream}", "is a stream, not a list"),
                        (f"{shared_redis.url}?stream=s&group=g --strict", "apply to manifests")]:
        args = [*cli(tmp_path, *bad.split())[3:], "--db", db(tmp_path, "x"), "--until-empty"]
        result = CliRunner().invoke(syncward_cli, args, catch_exceptions=False)
        assert result.exit_code == 2 and needle in result.stderr, result.stderr
        assert not (tmp_path / "x.db").exists()  # refused before the store was opened


@pytest.mark.integration
async def test_with_a_shared_store_a_claimed_entry_is_a_no_op(shared_redis: SharedRedis,
                                                              tmp_path: Path) -> None:
    """Consumers on one PostgreSQL store: what a dead consumer committed but never
    acknowledged is claimed by the others and becomes nothing — not a second job, not a
    second run of its handler."""
    from store.store_helpers import POSTGRES_URL, drop_schemas, require_postgres

    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}_redis"
    url = f"{POSTGRES_URL}?schema={schema}"
    stream, group = shared_redis.key("in"), "g"
    r = shared_redis.aclient()
    runs: list[int] = []

    async def counted(job: Job, ctx: Context) -> None:
        runs.append(int(job.identity["id"]))

    try:
        await enqueue(r, stream, ids(120))
        await r.xgroup_create(stream, group, id="0")
        # A consumer read 40 entries, committed their jobs and ran them, then died before
        # acknowledging: the entries stay pending under its name.
        await r.xreadgroup(group, "ghost", {stream: ">"}, count=40)
        async with Runtime(counted, store=url) as ghost:
            await ghost.submit(ids(40))
            await ghost.join()
        assert sorted(runs) == list(range(40))
        a = source(shared_redis, stream, group=group, claim_idle=0.3, claim_every=0.1)
        b = source(shared_redis, stream, group=group, claim_idle=0.3, claim_every=0.1)
        with anyio.fail_after(30):
            async with running(a, url, counted) as rt_a, running(b, url, counted) as rt_b:
                await drained(rt_a, a)
                await drained(rt_b, b)
        pending = await r.xpending(stream, group)
        async with reading(url) as store:
            counts = await store.counts()
    finally:
        await r.aclose()
        await drop_schemas(schema)
    assert a.status()["claimed"] + b.status()["claimed"] >= 40  # the ghost's were claimed
    assert pending["pending"] == 0
    assert counts[JobState.SUCCEEDED] == sum(counts.values()) == 120
    assert sorted(runs) == list(range(120))  # every handler ran once, the claimed too
