"""The SQLite store: schema and ownership, exact round trips, and the write contract.

Every test uses real SQLite files under ``tmp_path``. Time is passed in as ``now``, so
nothing here sleeps; leases expire because a later ``now`` says so.

The central property is DESIGN.md's "every message is idempotent to apply twice": a batch
applied to one database once and to an identical database twice leaves the same rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import sqlite3
import threading
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from syncward.errors import SchemaTooNew, StoreError, StoreLocked
from syncward.jobs import JobState, canonical_identity, job_key, op_key
from syncward.messages import (
    Accepted,
    Effect,
    EffectResult,
    FinishRun,
    LeaseOrder,
    NewJob,
    Outcome,
    OutcomeKind,
    ReapExpired,
    Reconcile,
    ReconcileReport,
    Recount,
    RegisterWorker,
    Rejected,
    Release,
    Renew,
    Reply,
    Requeue,
    RunRejects,
    Stage,
    StartRun,
    Submit,
    SubmitResult,
    SyncerMsg,
)
from syncward.store.sqlite import SQLiteStore
from syncward.store.sqlite.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from syncward.jobs import Job

    OpenStore = Callable[..., Awaitable[SQLiteStore]]

T0 = 1_700_000_000.0
#: Tables whose rows must not depend on how often a batch was applied. The append-only
#: logs (``rejections``, ``events``) are left out: a redelivered stale message is logged.
STATE_TABLES = ("jobs", "ops", "workers", "runs", "run_entries", "run_rejects", "meta")
ACCEPTED = Accepted()


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


def new_job(
    identity: dict[str, Any],
    *,
    payload: Any = None,
    max_attempts: int = 3,
    line: int | None = None,
    lease_seconds: float | None = None,
) -> NewJob:
    return NewJob(
        key=job_key(identity),
        identity=canonical_identity(identity),
        payload=json.dumps(payload if payload is not None else {}),
        max_attempts=max_attempts,
        lease_seconds=lease_seconds,
        line=line,
    )


async def submit(store: SQLiteStore, *jobs: NewJob, now: float = T0) -> SubmitResult:
    result = (await store.apply([Submit(tuple(jobs))], now=now)).results[0]
    assert isinstance(result, SubmitResult)
    return result


async def lease(
    store: SQLiteStore,
    n: int,
    *,
    now: float,
    owner: str = "w1",
    boot: str = "boot-1",
    seconds: float = 10.0,
) -> list[Job]:
    order = LeaseOrder(n=n, owner=owner, boot_id=boot, default_lease_seconds=seconds)
    return (await store.apply([], now=now, lease=order)).leased


async def row(store: SQLiteStore, identity: dict[str, Any]) -> Any:
    job = await store.get_job(job_key(identity))
    assert job is not None
    return job


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


# --- exact round trips ----------------------------------------------------------------

NASTY_IDENTITIES = [
    {"q": 'he said "hi"', "s": "it's"},
    {'"': '"', "'": "'"},
    {"semi": "a;b;c;", "stmt": "x'); DROP TABLE jobs; --"},
    {"sql": "' OR 1=1 --"},
    {"'; DROP TABLE jobs; --": "name is an injection too"},
    {"like": "100%_match\\", "ws": " \t\r\n "},
    {"nul": "before\x00after"},
    {"emoji": "\U0001f680\U0001f469\u200d\U0001f4bb\U0001f1eb\U0001f1f7"},
    {"rtl": "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202eabc\u202c\u200f"},
    {"combining": "Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032dl\u036e\u0312g\u0332o"},
    {"nfd": "cafe\u0301", "cafe\u0301": 1},
    {"big": "x" * 10_240},
    {"bigu": "\u00e9\U0001f680\u05e9" * 1_200, "n": 7},
    {"k" * 10_240: "long field name"},
    {"i64": 2**63, "neg": -(2**100), "zero": 0},
]


def nfc_identity(identity: dict[str, Any]) -> dict[str, Any]:
    def n(x: Any) -> Any:
        return unicodedata.normalize("NFC", x) if isinstance(x, str) else x

    return {n(k): n(v) for k, v in identity.items()}


async def test_identities_are_stored_and_read_back_exactly(
    store: SQLiteStore, tmp_db_url: str
) -> None:
    result = await submit(store, *(new_job(i) for i in NASTY_IDENTITIES))
    assert result == SubmitResult(new=len(NASTY_IDENTITIES), duplicates=0)
    for identity in NASTY_IDENTITIES:
        job = await store.get_job(job_key(identity))
        assert job is not None
        assert job.identity == nfc_identity(identity)
        if all(
            unicodedata.is_normalized("NFC", x)
            for x in (*identity, *identity.values())
            if isinstance(x, str)
        ):
            assert job.identity == identity
        ((stored,),) = sql(db_path(tmp_db_url), "SELECT identity FROM jobs WHERE id = ?", job.id)
        assert stored == canonical_identity(identity)
    # Nothing was interpreted as SQL.
    assert (await store.counts())[JobState.PLANNED] == len(NASTY_IDENTITIES)
    leased = await lease(store, len(NASTY_IDENTITIES), now=T0)
    assert sorted(map(canonical_identity, (j.identity for j in leased))) == sorted(
        map(canonical_identity, NASTY_IDENTITIES)
    )


async def test_payload_json_round_trip(store: SQLiteStore) -> None:
    payload = {
        "url": "https://example.org/q?a=1&b='2'",
        "nested": {"list": [1, 2.5, None, True, False, "\u00e9\U0001f680"], "empty": {}},
        "big": 2**70,
        "float": 0.1,
        "neg": -1e-300,
        "sql": "' OR 1=1 --;",
        "text": "\u05e9\u05dc\u05d5\u05dd\n" * 2000,
    }
    await submit(store, new_job({"n": 1}, payload=payload))
    assert (await row(store, {"n": 1})).payload == payload
    (job,) = await lease(store, 1, now=T0)
    assert job.payload == payload
    assert job.identity == {"n": 1}


# --- the write contract -----------------------------------------------------------------


async def _prepare(store: SQLiteStore) -> tuple[int, dict[int, Job], list[NewJob]]:
    """The same history for every database of the idempotency test."""
    run_id = (
        await store.apply([StartRun("run-1", "manifest.csv", {"limit": 8}, Reply())], now=T0)
    ).results[0]
    assert isinstance(run_id, int)
    jobs = [new_job({"n": i}, line=i + 1, lease_seconds=5.0 if i == 7 else None) for i in range(8)]
    # The same token in both databases: a job row records the submit that created it.
    await store.apply([Submit(tuple(jobs), run_id=run_id, token=1)], now=T0)
    leased = {int(j.identity["n"]): j for j in await lease(store, 8, now=T0 + 1)}
    assert sorted(leased) == list(range(8))
    j6 = leased[6]
    await store.apply([Outcome(j6.id, j6.fence, OutcomeKind.FAILED, error="gone")], now=T0 + 2)
    return run_id, leased, jobs


def _mixed_batch(run_id: int, leased: dict[int, Job], jobs: list[NewJob]) -> list[SyncerMsg]:
    j = leased
    more = tuple(new_job({"n": i}, line=i + 1) for i in range(8, 11))
    return [
        StartRun("run-1", "manifest.csv", {"limit": 8}, Reply()),  # redelivered: same id
        Submit((*more, jobs[0]), run_id=run_id),  # one duplicate
        Stage(j[0].id, j[0].fence, "downloaded"),
        Effect(j[0].id, j[0].fence, op_key("fetch", j[0].key, part=1), "fetch", '{"bytes":10}'),
        Outcome(j[0].id, j[0].fence, OutcomeKind.SUCCEEDED, result='{"ok":true}'),
        Outcome(j[1].id, j[1].fence, OutcomeKind.RETRY, error="HTTP 503", retry_at=T0 + 100),
        Outcome(j[2].id, j[2].fence, OutcomeKind.SKIPPED, error="duplicate content"),
        Outcome(j[3].id, j[3].fence, OutcomeKind.FAILED, error="HTTP 404"),
        Renew(((j[4].id, j[4].fence, 60.0),)),
        Release(j[5].id, j[5].fence),
        Requeue(keys=(j[6].key,)),
        ReapExpired(((j[7].id, j[7].fence),)),
        RegisterWorker("boot-1", 4242, "host-a", Reply()),
        RunRejects(run_id, ((20, "invalid JSON", "{oops"), (21, "missing field", "{}"))),
        FinishRun(run_id, "finished"),
    ]


async def test_a_batch_applied_twice_gives_the_same_database_as_once(
    open_store: OpenStore, tmp_path: Path
) -> None:
    once = await open_store(f"sqlite:///{tmp_path}/once.db")
    twice = await open_store(f"sqlite:///{tmp_path}/twice.db")
    prepared = [await _prepare(once), await _prepare(twice)]
    assert prepared[0] == prepared[1]  # same ids and fences in both
    batch = _mixed_batch(*prepared[0])
    now = T0 + 10

    first = await once.apply(batch, now=now)
    assert first.results == [
        prepared[0][0],
        SubmitResult(new=3, duplicates=1),
        ACCEPTED,
        EffectResult('{"bytes":10}', recorded_before=False),
        ACCEPTED,
        ACCEPTED,
        ACCEPTED,
        ACCEPTED,
        ACCEPTED,
        ACCEPTED,
        1,
        1,
        "worker-1",
        ACCEPTED,
        ACCEPTED,
    ]
    assert (await twice.apply(batch, now=now)).results == first.results
    again = await twice.apply(batch, now=now)
    assert again.deltas == {}
    # The submit delivered again still knows the jobs it created (their rows carry its
    # token): it answers what it answered the first time.
    assert again.results[1] == SubmitResult(new=3, duplicates=1)
    assert again.results[12] == "worker-1"

    await once.aclose()
    await twice.aclose()
    a = dump(tmp_path / "once.db", STATE_TABLES)
    b = dump(tmp_path / "twice.db", STATE_TABLES)
    assert a == b
    # The comparison covers something: every table the batch writes has rows.
    assert all(a[t] for t in STATE_TABLES)
    states = Counter(r[4] for r in a["jobs"])
    assert states == {"planned": 7, "leased": 1, "succeeded": 1, "skipped": 1, "failed": 1}


async def test_requeue_then_failure_redelivered(open_store: OpenStore, tmp_path: Path) -> None:
    once = await open_store(f"sqlite:///{tmp_path}/once.db")
    twice = await open_store(f"sqlite:///{tmp_path}/twice.db")
    for store in (once, twice):
        await submit(store, new_job({"n": 1}))
        (job,) = await lease(store, 1, now=T0)
    # The requeue was decided at T0: a job that failed after that is not requeued by it.
    batch = [Requeue(decided_at=T0),
             Outcome(job.id, job.fence, OutcomeKind.FAILED, error="404")]
    await once.apply(batch, now=T0 + 1)
    await twice.apply(batch, now=T0 + 1)
    await twice.apply(batch, now=T0 + 1)
    assert (await row(twice, {"n": 1})).state == (await row(once, {"n": 1})).state


async def test_stale_fence_is_rejected_and_the_new_owner_wins(store: SQLiteStore) -> None:
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    (old,) = await lease(store, 1, now=T0, owner="w-old", seconds=10)
    assert old.identity == {"n": 1}

    # The old owner goes quiet; its lease expires and the reaper sends the job back.
    assert await store.expired_leases(T0 + 20, limit=10) == [(old.id, old.fence)]
    reaped = await store.apply([ReapExpired(((old.id, old.fence),))], now=T0 + 20)
    assert reaped.results == [1]
    lost = await row(store, {"n": 1})
    assert lost.state is JobState.PLANNED
    assert lost.last_error == "lease lost at stage start, attempt 1 (lease expired)"

    leased = {j.id: j for j in await lease(store, 2, now=T0 + 20, owner="w-new", seconds=10)}
    new = leased.pop(old.id)
    (other,) = leased.values()
    assert new.attempt == 2
    assert new.fence > old.fence
    rejections = await store.rejection_count()

    result = await store.apply(
        [
            Stage(old.id, old.fence, "late-stage"),
            Outcome(old.id, old.fence, OutcomeKind.SUCCEEDED, result='"old"'),
            Submit((new_job({"n": 3}),)),
            Outcome(other.id, other.fence, OutcomeKind.SUCCEEDED, result='"other"'),
            Outcome(new.id, new.fence, OutcomeKind.SUCCEEDED, result='"new"'),
            Outcome(old.id, old.fence, OutcomeKind.FAILED, error="late failure"),
            Renew(((old.id, old.fence, 30.0),)),
        ],
        now=T0 + 21,
    )

    r = result.results
    assert isinstance(r[0], Rejected) and "stale fence" in r[0].reason
    assert isinstance(r[1], Rejected) and "stale fence" in r[1].reason
    assert r[2:5] == [SubmitResult(new=1, duplicates=0), ACCEPTED, ACCEPTED]
    assert isinstance(r[5], Rejected)
    assert isinstance(r[6], Rejected)
    assert await store.rejection_count() == rejections + 4
    job = await row(store, {"n": 1})
    # The new owner's outcome stands; the stale stage report was not applied.
    assert (job.state, job.result, job.stage) == (JobState.SUCCEEDED, "new", None)
    assert (await row(store, {"n": 2})).result == "other"
    assert (await row(store, {"n": 3})).state is JobState.PLANNED
    assert result.deltas == {JobState.LEASED: -2, JobState.SUCCEEDED: 2, JobState.PLANNED: 1}


async def test_a_renewal_that_raced_the_reaper_wins(store: SQLiteStore) -> None:
    await submit(store, new_job({"n": 1}))
    (job,) = await lease(store, 1, now=T0, seconds=10)
    expired = await store.expired_leases(T0 + 11, limit=10)  # the reaper's view ...
    await store.apply([Renew(((job.id, job.fence, 30.0),))], now=T0 + 11)  # ... then a renewal
    result = await store.apply([ReapExpired(tuple(expired))], now=T0 + 12)
    assert result.results == [0]
    assert result.deltas == {}
    current = await row(store, {"n": 1})
    assert (current.state, current.fence, current.lease_expires_at) == (
        JobState.LEASED,
        job.fence,
        T0 + 41,
    )


async def test_rejected_messages_do_not_disturb_their_batch(store: SQLiteStore) -> None:
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    a, b = await lease(store, 2, now=T0)
    await store.apply([Outcome(a.id, a.fence, OutcomeKind.SUCCEEDED, result="1")], now=T0 + 1)

    result = await store.apply(
        [
            Requeue(state=JobState.SUCCEEDED),  # succeeded -> planned is illegal
            Requeue(state=JobState.PLANNED),  # so is planned -> planned
            Outcome(999, 1, OutcomeKind.SUCCEEDED),  # unknown job
            Stage(a.id, a.fence, "after the end"),  # job no longer leased
            Submit((new_job({"n": 3}),)),
            Stage(b.id, b.fence, "half-way"),
        ],
        now=T0 + 2,
    )

    r = result.results
    assert isinstance(r[0], Rejected) and "succeeded -> planned" in r[0].reason
    assert isinstance(r[1], Rejected) and "planned -> planned" in r[1].reason
    assert isinstance(r[2], Rejected) and "unknown job id 999" in r[2].reason
    assert isinstance(r[3], Rejected)
    assert r[4:] == [SubmitResult(new=1, duplicates=0), ACCEPTED]
    assert (await row(store, {"n": 1})).state is JobState.SUCCEEDED
    assert (await row(store, {"n": 2})).stage == "half-way"
    assert (await row(store, {"n": 3})).state is JobState.PLANNED
    assert await store.rejection_count() == 4


async def test_retry_until_attempts_are_exhausted(store: SQLiteStore) -> None:
    ident = {"url": "https://example.org/flaky"}
    await submit(store, new_job(ident, max_attempts=3))
    now = T0
    for attempt in (1, 2):
        (job,) = await lease(store, 1, now=now)
        assert (job.attempt, job.max_attempts) == (attempt, 3)
        result = await store.apply(
            [Outcome(job.id, job.fence, OutcomeKind.RETRY, error="HTTP 503", retry_at=now + 100)],
            now=now,
        )
        assert result.results == [ACCEPTED]
        current = await row(store, ident)
        assert (current.state, current.attempts, current.next_attempt_at, current.last_error) == (
            JobState.PLANNED,
            attempt,
            now + 100,
            "HTTP 503",
        )
        assert await store.next_due() == now + 100
        assert await lease(store, 1, now=now + 99) == []  # not due before retry_at
        now += 100

    (job,) = await lease(store, 1, now=now)
    assert job.attempt == 3
    await store.apply(
        [Outcome(job.id, job.fence, OutcomeKind.RETRY, error="HTTP 503", retry_at=now + 100)],
        now=now,
    )
    dead = await row(store, ident)
    assert dead.state is JobState.FAILED
    assert dead.last_error is not None
    assert "attempts exhausted (3/3)" in dead.last_error
    assert "HTTP 503" in dead.last_error
    assert [j.key for j in await store.jobs_in_state(JobState.FAILED)] == [job.key]

    # The dead-letter path: a person re-queues it, with its attempts reset.
    assert (await store.apply([Requeue(keys=(job.key,))], now=now + 1)).results == [1]
    again = await row(store, ident)
    assert (again.state, again.attempts) == (JobState.PLANNED, 0)


async def test_release_gives_the_lease_back_without_counting_the_attempt(
    store: SQLiteStore,
) -> None:
    await submit(store, new_job({"n": 1}))
    (job,) = await lease(store, 1, now=T0)
    result = await store.apply([Release(job.id, job.fence)], now=T0 + 1)
    assert result.deltas == {JobState.LEASED: -1, JobState.PLANNED: 1}
    released = await row(store, {"n": 1})
    assert (released.state, released.attempts, released.lease_owner) == (JobState.PLANNED, 0, None)
    (again,) = await lease(store, 1, now=T0 + 1)
    assert again.attempt == 1


async def _two_boots(store: SQLiteStore) -> dict[str, Job]:
    await submit(
        store,
        new_job({"n": "a"}, max_attempts=3),
        new_job({"n": "b"}, max_attempts=1),
        new_job({"n": "c"}),
    )
    await store.apply([RegisterWorker("old", 100, "h", Reply())], now=T0)
    old = {str(j.identity["n"]): j for j in await lease(store, 2, now=T0, boot="old")}
    a = old["a"]
    await store.apply([Stage(a.id, a.fence, "downloaded")], now=T0 + 1)
    await store.apply([RegisterWorker("new", 200, "h", Reply())], now=T0 + 2)
    (c,) = await lease(store, 1, now=T0 + 2, boot="new")
    return {**old, "c": c}


def _check_report(report: object, *, dry_run: bool) -> None:
    assert isinstance(report, ReconcileReport)
    assert (report.boot_id, report.dry_run) == ("new", dry_run)
    assert (report.leases_requeued, report.leases_failed) == (1, 1)
    assert report.workers_marked_dead == ("worker-1",)
    assert len(report.lost) == 2
    assert any("lease lost at stage downloaded, attempt 1" in x for x in report.lost)


@pytest.mark.parametrize("how", ["apply-dry-run", "message-dry-run", "both"])
async def test_reconcile_dry_run_changes_nothing(
    store: SQLiteStore, tmp_db_url: str, how: str
) -> None:
    await _two_boots(store)
    before = dump(db_path(tmp_db_url))
    msg_dry = how != "apply-dry-run"
    result = await store.apply(
        [Reconcile("new", dry_run=msg_dry)], now=T0 + 5, dry_run=how != "message-dry-run"
    )
    _check_report(result.results[0], dry_run=msg_dry)
    if msg_dry:  # a dry-run Reconcile in a committed batch must not feed the stats-keeper
        assert result.deltas == {}
    else:  # a rolled-back batch reports what it would have done
        assert result.deltas == {JobState.LEASED: -2, JobState.PLANNED: 1, JobState.FAILED: 1}
    assert dump(db_path(tmp_db_url)) == before


async def test_reconcile_requeues_or_fails_leases_of_earlier_boots(store: SQLiteStore) -> None:
    jobs = await _two_boots(store)
    result = await store.apply([Reconcile("new")], now=T0 + 5)
    _check_report(result.results[0], dry_run=False)
    assert result.deltas == {JobState.LEASED: -2, JobState.PLANNED: 1, JobState.FAILED: 1}

    a = await row(store, {"n": "a"})
    assert (a.state, a.attempts, a.stage, a.next_attempt_at, a.lease_owner) == (
        JobState.PLANNED,
        1,
        "downloaded",
        T0 + 5,
        None,
    )
    assert a.last_error == "lease lost at stage downloaded, attempt 1 (its process is gone)"
    b = await row(store, {"n": "b"})
    assert b.state is JobState.FAILED
    assert b.last_error == "lease lost at stage start, attempt 1 (its process is gone)"
    c = await row(store, {"n": "c"})  # this boot's lease is not touched
    assert (c.state, c.fence) == (JobState.LEASED, jobs["c"].fence)
    assert {w.name: w.status for w in await store.workers()} == {
        "worker-1": "dead",
        "worker-2": "running",
    }
    meta = json.loads(await store.get_meta("last_reconcile") or "{}")
    assert (meta["leases_requeued"], meta["leases_failed"]) == (1, 1)

    # The old owner's late outcome is fenced off; the retried job resumes at its stage.
    late = await store.apply(
        [Outcome(jobs["a"].id, jobs["a"].fence, OutcomeKind.SUCCEEDED)], now=T0 + 6
    )
    assert isinstance(late.results[0], Rejected)
    (retried,) = await lease(store, 1, now=T0 + 6, boot="new")
    assert (retried.identity, retried.attempt, retried.stage) == ({"n": "a"}, 2, "downloaded")

    again = await store.apply([Reconcile("new")], now=T0 + 7)
    report = again.results[0]
    assert isinstance(report, ReconcileReport)
    assert (report.leases_requeued, report.leases_failed, report.workers_marked_dead) == (0, 0, ())


async def test_effect_first_writer_wins(store: SQLiteStore) -> None:
    await submit(store, new_job({"n": 1}))
    (job,) = await lease(store, 1, now=T0, seconds=10)
    op = op_key("upload", job.key, part=1)

    first = await store.apply([Effect(job.id, job.fence, op, "upload", '{"etag":"A"}')], now=T0)
    assert first.results == [EffectResult('{"etag":"A"}', recorded_before=False)]
    second = await store.apply(
        [
            Effect(job.id, job.fence, op, "upload", '{"etag":"B"}'),
            Effect(job.id, job.fence, op_key("upload", job.key, part=2), "upload", '{"etag":"C"}'),
        ],
        now=T0 + 1,
    )
    assert second.results == [
        EffectResult('{"etag":"A"}', recorded_before=True),
        EffectResult('{"etag":"C"}', recorded_before=False),
    ]

    # After the lease is lost and granted again, the ledger still answers with the first.
    await store.apply([ReapExpired(((job.id, job.fence),))], now=T0 + 20)
    (again,) = await lease(store, 1, now=T0 + 20)
    third = await store.apply(
        [
            Effect(job.id, job.fence, op, "upload", '{"etag":"stale"}'),
            Effect(again.id, again.fence, op, "upload", '{"etag":"D"}'),
        ],
        now=T0 + 21,
    )
    assert isinstance(third.results[0], Rejected)
    assert third.results[1] == EffectResult('{"etag":"A"}', recorded_before=True)
    assert await store.get_op(op) == '{"etag":"A"}'
    assert await store.ops_count() == (2, 2)


async def test_recount_equals_counts(store: SQLiteStore) -> None:
    await submit(store, *(new_job({"n": i}) for i in range(10)))
    leased = await lease(store, 6, now=T0)
    kinds = [OutcomeKind.SUCCEEDED, OutcomeKind.FAILED, OutcomeKind.SKIPPED, OutcomeKind.RETRY]
    await store.apply(
        [Outcome(j.id, j.fence, k) for j, k in zip(leased, kinds, strict=False)], now=T0 + 1
    )
    result = await store.apply([Recount(reset=True)], now=T0 + 2, recount=True)
    assert result.results == [ACCEPTED]
    counts = await store.counts()
    assert result.counts == counts
    assert counts == {
        JobState.PLANNED: 5,
        JobState.LEASED: 2,
        JobState.SUCCEEDED: 1,
        JobState.FAILED: 1,
        JobState.SKIPPED: 1,
    }


def _random_batch(rnd: random.Random, held: list[Job], now: float) -> list[SyncerMsg]:
    batch: list[SyncerMsg] = []
    if rnd.random() < 0.6:
        batch.append(
            Submit(
                tuple(
                    new_job({"n": rnd.randrange(60)}, max_attempts=rnd.randint(1, 3))
                    for _ in range(rnd.randint(1, 6))
                )
            )
        )
    for job in rnd.sample(held, k=min(len(held), rnd.randint(0, 5))):
        fence = job.fence if rnd.random() < 0.85 else job.fence - 1  # some stale messages
        pick = rnd.random()
        if pick < 0.45:
            kind = rnd.choice(list(OutcomeKind))
            batch.append(
                Outcome(
                    job.id,
                    fence,
                    kind,
                    error="e",
                    retry_at=now + rnd.uniform(0, 30) if rnd.random() < 0.5 else None,
                )
            )
        elif pick < 0.6:
            batch.append(Release(job.id, fence))
        elif pick < 0.75:
            batch.append(Stage(job.id, fence, rnd.choice(["fetched", "parsed"])))
        else:
            batch.append(Renew(((job.id, fence, rnd.uniform(1, 20)),)))
    if rnd.random() < 0.3:
        batch.append(ReapExpired(tuple((j.id, j.fence) for j in held if j.lease_expires_at <= now)))
    if rnd.random() < 0.1:
        batch.append(Requeue(state=rnd.choice([JobState.FAILED, JobState.SKIPPED])))
    if rnd.random() < 0.05:
        batch.append(Reconcile(f"boot-{rnd.randint(1, 2)}", dry_run=rnd.random() < 0.5))
    rnd.shuffle(batch)
    return batch


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_deltas_sum_to_the_counts(open_store: OpenStore, tmp_db_url: str, seed: int) -> None:
    store = await open_store(tmp_db_url, synchronous="normal")
    rnd = random.Random(seed)
    running: Counter[JobState] = Counter()
    held: list[Job] = []
    now = T0
    for step in range(80):
        now += rnd.uniform(0, 8)
        order = LeaseOrder(
            n=rnd.randint(0, 4),
            owner="w",
            boot_id=f"boot-{rnd.randint(1, 2)}",
            default_lease_seconds=rnd.choice([5.0, 15.0]),
        )
        result = await store.apply(
            _random_batch(rnd, held, now), now=now, lease=order, recount=step % 10 == 0
        )
        running.update(result.deltas)
        held = [*held[-30:], *result.leased]
        counts = await store.counts()
        assert {s: running[s] for s in JobState} == counts, f"step {step}"
        if result.counts is not None:
            assert result.counts == counts
    assert sum(counts.values()) > 20
    assert sum(1 for n in counts.values() if n) >= 3  # the walk went somewhere
