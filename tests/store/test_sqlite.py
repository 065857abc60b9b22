"""The SQLite backend's own machinery: schema and migrations, the owner lock, files, and
what only raw SQL can see. The rules every backend shares are in ``test_contract.py``.

Every test uses real SQLite files under ``tmp_path``. Time is passed in as ``now``, so
nothing here sleeps; leases expire because a later ``now`` says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from store_helpers import T0, mixed_batch, new_job, prepare_history, row, submit

import syncward
from syncward.errors import SchemaTooNew, StoreError, StoreLocked
from syncward.jobs import JobState, canonical_identity, job_key
from syncward.messages import RegisterWorker, Reply, StartRun, Submit
from syncward.store.sqlite import SQLiteStore
from syncward.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    OpenStore = Callable[..., Awaitable[SQLiteStore]]

#: Tables whose rows must not depend on how often a batch was applied. The append-only
#: logs (``rejections``, ``events``) are left out: a redelivered stale message is logged.
STATE_TABLES = ("jobs", "ops", "workers", "runs", "run_entries", "run_rejects", "meta")


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
async def open_store() -> AsyncIterator[OpenStore]:
    """A factory of stores; whatever it opened is closed at teardown (aclose is idempotent)."""
    opened: list[SQLiteStore] = []

    async def _open(url: str, **kwargs: Any) -> SQLiteStore:
        store = await SQLiteStore.open(url, **kwargs)
        opened.append(store)
        return store

    try:
        yield _open
    finally:
        for store in reversed(opened):
            await store.aclose()


@pytest.fixture
async def store(open_store: OpenStore, tmp_db_url: str) -> SQLiteStore:
    return await open_store(tmp_db_url)


def db_path(url: str) -> Path:
    from syncward.store.sqlite.store import sqlite_path_from_url

    return sqlite_path_from_url(url)


def sql(path: Path, query: str, *params: Any) -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, params).fetchall()


def dump(path: Path, tables: tuple[str, ...] | None = None) -> dict[str, list[Any]]:
    """Every row of ``tables`` (default: all), order-independent."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        if tables is None:
            tables = tuple(
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            )
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def aiosqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


def leaked_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """aiosqlite threads started since ``before`` that do not end within 5 s.

    A closed connection's thread ends shortly after ``close()`` returns, not before.
    """
    new = aiosqlite_threads() - before
    for thread in new:
        thread.join(timeout=5)
    return [t for t in new if t.is_alive()]


# --- schema, migrations, ownership ----------------------------------------------------


async def test_fresh_store_is_migrated_to_current_version(
    open_store: OpenStore, tmp_db_url: str
) -> None:
    store = await open_store(tmp_db_url)
    path = db_path(tmp_db_url)
    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in sql(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(STATE_TABLES) | {"rejections", "events"} <= tables
    assert await store.counts() == dict.fromkeys(JobState, 0)
    assert await store.get_meta("worker_seq") == "0"


async def test_reopen_is_idempotent(open_store: OpenStore, tmp_db_url: str) -> None:
    path = db_path(tmp_db_url)
    store = await open_store(tmp_db_url)
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    await store.apply([RegisterWorker("boot-1", 1, "h", Reply())], now=T0)
    await store.aclose()
    before = dump(path)

    for _ in range(2):
        store = await open_store(tmp_db_url)
        assert (await row(store, {"n": 2})).state is JobState.PLANNED
        await store.aclose()
        assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert dump(path) == before  # migrations did not run again (worker_seq is still 1)
    assert sql(path, "SELECT value FROM meta WHERE key='worker_seq'") == [("1",)]


async def test_schema_too_new_is_refused_writable_and_readonly(
    open_store: OpenStore, tmp_db_url: str
) -> None:
    path = db_path(tmp_db_url)
    store = await open_store(tmp_db_url)
    await submit(store, new_job({"n": 1}))
    await store.aclose()  # releases <db>.lock
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = dump(path)

    for readonly in (False, True, False):
        with pytest.raises(SchemaTooNew) as info:
            await open_store(tmp_db_url, readonly=readonly)
        assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
        assert str(path) in str(info.value)

    # The refused file is untouched: same rows, version and journal mode (not switched to WAL).
    assert dump(path) == before
    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert sql(path, "PRAGMA journal_mode") == [("delete",)]
    # ... and the refused writable open let its owner lock go.
    with open(str(path) + ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


async def test_second_writer_is_locked_out(open_store: OpenStore, tmp_db_url: str) -> None:
    first = await open_store(tmp_db_url)
    await first.attach("boot-A")
    lock_file = db_path(tmp_db_url).with_name("jobs.db.lock")
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()

    with pytest.raises(StoreLocked) as info:
        await open_store(tmp_db_url)
    assert info.value.owner["pid"] == os.getpid()
    assert info.value.owner["host"] == socket.gethostname()
    assert info.value.owner["boot_id"] == "boot-A"
    assert f"pid {os.getpid()}" in str(info.value)
    assert f"host {socket.gethostname()}" in str(info.value)
    # The failed attempt did not disturb the owner.
    await submit(first, new_job({"n": 1}))

    await first.aclose()
    second = await open_store(tmp_db_url)
    assert (await row(second, {"n": 1})).state is JobState.PLANNED


async def test_readonly_open_while_a_writer_holds_the_store(
    open_store: OpenStore, tmp_db_url: str
) -> None:
    writer = await open_store(tmp_db_url)
    await submit(writer, new_job({"n": 1}))
    reader = await open_store(tmp_db_url, readonly=True)
    assert (await row(reader, {"n": 1})).state is JobState.PLANNED
    with pytest.raises(StoreError, match="read-only"):
        await reader.apply([Submit((new_job({"n": 2}),))], now=T0)

    await submit(writer, new_job({"n": 2}))  # the writer is unaffected, the reader sees it
    assert (await reader.counts())[JobState.PLANNED] == 2


async def test_readonly_open_of_a_missing_file(open_store: OpenStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await open_store(f"sqlite:///{tmp_path}/nothing.db", readonly=True)
    assert list(tmp_path.iterdir()) == []  # and nothing was created


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "writable"])
async def test_a_file_that_is_not_a_database(
    open_store: OpenStore, tmp_path: Path, readonly: bool
) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite " * 300)
    threads = aiosqlite_threads()
    with pytest.raises(StoreError, match="not a database"):
        await open_store(f"sqlite:///{tmp_path}/junk.db", readonly=readonly)
    # No connection thread is left behind (it would keep the interpreter from exiting).
    assert leaked_threads(threads) == []


async def test_readonly_open_of_an_empty_file(open_store: OpenStore, tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    with pytest.raises(StoreError, match="not a syncward store"):
        await open_store(f"sqlite:///{tmp_path}/empty.db", readonly=True)


async def test_a_v1_store_is_migrated_forward_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for stmt in (s.strip() for s in MIGRATIONS[0].split(";") if s.strip()):
            conn.execute(stmt)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO runs (token, source, options, status, started_at)"
                     " VALUES ('t', 'm.txt', '{}', 'running', 1.0)")
    store = await SQLiteStore.open(f"sqlite:///{path}")
    try:
        assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        info = await store.run_info(1)
        assert info is not None and (info.source, info.status) == ("m.txt", "running")
        assert sql(path, "SELECT boot_id FROM runs") == [(None,)]
    finally:
        await store.aclose()


# --- what only raw SQL sees -------------------------------------------------------------


async def test_identity_is_stored_in_its_canonical_form_sqlite(
    store: SQLiteStore, tmp_db_url: str
) -> None:
    identity = {"b": "cafe\u0301", "a": 2**63}
    await submit(store, new_job(identity))
    job = await row(store, identity)
    ((stored, key),) = sql(db_path(tmp_db_url), "SELECT identity, key FROM jobs WHERE id = ?",
                           job.id)
    assert stored == canonical_identity(identity)
    assert bytes(key).hex() == job_key(identity)


async def test_a_batch_applied_twice_gives_the_same_tables_as_once_sqlite(
    open_store: OpenStore, tmp_path: Path
) -> None:
    """Every column, including those no reader shows (who ended a lease, which submit
    created a row), is the same after a batch applied twice as after it applied once."""
    once = await open_store(f"sqlite:///{tmp_path}/once.db")
    twice = await open_store(f"sqlite:///{tmp_path}/twice.db")
    prepared = [await prepare_history(once), await prepare_history(twice)]
    assert prepared[0] == prepared[1]
    batch = mixed_batch(*prepared[0])
    await once.apply(batch, now=T0 + 10)
    await twice.apply(batch, now=T0 + 10)
    await twice.apply(batch, now=T0 + 10)
    await once.aclose()
    await twice.aclose()
    a = dump(tmp_path / "once.db", STATE_TABLES)
    assert a == dump(tmp_path / "twice.db", STATE_TABLES)
    assert all(a[t] for t in STATE_TABLES)  # the comparison covers something


async def test_start_run_records_its_boot_sqlite(store: SQLiteStore, tmp_db_url: str) -> None:
    await store.apply([StartRun("tok", "m.txt", {}, Reply(), boot_id="boot-9")], now=T0)
    assert sql(db_path(tmp_db_url), "SELECT boot_id FROM runs") == [("boot-9",)]


async def test_worker_counter_lives_in_meta_sqlite(store: SQLiteStore, tmp_db_url: str) -> None:
    await store.apply([RegisterWorker("b1", 1, "h", Reply()), RegisterWorker("b2", 1, "h",
                                                                             Reply())], now=T0)
    assert sql(db_path(tmp_db_url), "SELECT value FROM meta WHERE key = 'worker_seq'") == [
        ("2",)]


# --- the WAL stays bounded ------------------------------------------------------------


async def _peak_wal(url: str, *, wal_limit: int, jobs: int) -> tuple[int, int]:
    """Run ``jobs`` jobs with 200-byte results while a reader of its own reads all along;
    returns the WAL's peak size, sampled after every read, and the database's size."""
    store = await SQLiteStore.open(url, wal_limit=wal_limit, checkpoint_every=0.02)
    reader = await SQLiteStore.open(url, readonly=True)
    peak = 0

    async def padded(job: syncward.Job, ctx: syncward.Context) -> dict[str, str]:
        return {"pad": "x" * 200}

    try:
        async with syncward.Runtime(padded, store=store, concurrency=50) as rt:
            done = anyio.Event()

            async def watch() -> None:
                nonlocal peak
                while not done.is_set():
                    await reader.counts()  # a user's own read connection, busy all along
                    peak = max(peak, store.wal_size())

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await rt.submit({"n": i} for i in range(jobs))
                await rt.join()
                done.set()
            assert rt.stats().counts[JobState.SUCCEEDED] == jobs
    finally:
        await reader.aclose()
        await store.aclose()
    return peak, db_path(url).stat().st_size


@pytest.mark.slow
async def test_the_wal_stays_bounded_whatever_a_reader_does(tmp_path: Path) -> None:
    """After a commit that leaves the WAL past its limit, the writer truncates it: its
    peak is the limit plus the batches committed while a reader deferred the truncation
    (measured here: 2.6-3.3 MB with a 1 MB limit), however long the run; without the
    limit it grows with the run (44-47 MB for these 40,000 jobs)."""
    limit = 1024 * 1024
    bound = 6 * limit
    bounded, size = await _peak_wal(f"sqlite:///{tmp_path}/a.db", wal_limit=limit, jobs=40_000)
    # The same run without the limit (PASSIVE checkpoints only, as before): the WAL
    # outgrows the bound several times over, so the limit is what held it.
    unbounded, _ = await _peak_wal(f"sqlite:///{tmp_path}/b.db", wal_limit=2**62, jobs=40_000)
    print(f"\nWAL peak {bounded:,} bytes with a {limit:,}-byte limit, {unbounded:,} without;"
          f" database {size:,} bytes")
    assert unbounded > 2 * bound
    assert bounded <= bound
