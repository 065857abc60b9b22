"""PostgreSQL faults: a server restarted under a running runtime, and stores refused at once.

PostgreSQL backend only: these tests read state with raw SQL where the reader protocol
cannot say it (does a schema exist, may a role create one, what is in a table).

* Restarts (a private server, `pg_instance.PgInstance`, which the test stops and starts):
  the runtime reports the failed commits while the server is down, reconnects by itself
  (writer, read pool, liveness lock) when it is back, and finishes every job once, each
  effect's ledger row once; ``submit`` returns only after its jobs are committed.
* Bad input through ``syncward run`` in a subprocess: an unreachable server, a port that
  is no number, a wrong password (the private server, with scram-sha-256), a schema the
  login role may not create (a role of the test's own on the machine's server), a schema
  from a newer syncward. Each is one line on stderr naming the store (its password as
  ``***``) and what is wrong, exit 2, nothing run and nothing written, the password
  nowhere in the output.

Waiting: on events set by the handler where the test owns the code, and otherwise on a
condition polled under a deadline (the syncer's health, the liveness lock) — never a
fixed sleep. Missing PostgreSQL skips with the reason, and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest
from pg_instance import PgInstance, spare_port
from store_helpers import POSTGRES_URL, drop_schemas, require_postgres

import syncward
from syncward.errors import SchemaTooNew
from syncward.jobs import JobState, job_key
from syncward.store import open_store, redact
from syncward.store.postgres.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

pytestmark = pytest.mark.integration

#: Short back-offs, so a restart costs a fraction of a second of retrying.
QUICK = syncward.SyncerConfig(retry_initial=0.01, retry_max=0.1, idle_poll=0.05)
HANDLER = '''
from pathlib import Path

async def fn(job, ctx):
    Path(__file__).with_name("handler-ran").touch()
'''


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgInstance]:
    """A private server for this module (made once: initdb takes a second)."""
    instance = PgInstance.create()
    try:
        yield instance
    finally:
        instance.destroy()


@pytest.fixture
def pg_instance(pg_cluster: PgInstance) -> PgInstance:
    """The private server, running (a test before this one may have stopped it)."""
    pg_cluster.ensure_running()
    return pg_cluster


@pytest.fixture
async def private_db(pg_instance: PgInstance) -> AsyncIterator[str]:
    """A database of this test's own on the private server; dropped at teardown."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await admin_sql(pg_instance, f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg_instance.ensure_running()
        await admin_sql(pg_instance, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def main_schema() -> AsyncIterator[str]:
    """A schema name of this test's own on the machine's server; dropped at teardown."""
    require_postgres()
    name = f"t_{uuid.uuid4().hex[:12]}_faults"
    try:
        yield name
    finally:
        await drop_schemas(name)


# --- helpers -----------------------------------------------------------------------------


async def admin_sql(pg: PgInstance, *statements: str) -> None:
    """Run ``statements`` as the private server's superuser, on a connection of their own."""
    conn = await asyncpg.connect(pg.url())
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def until(predicate: Callable[[], bool], *, what: str, timeout: float = 10) -> None:
    """Wait for in-process state that changes with no event to await (a deadline, not a
    fixed sleep: returns as soon as ``predicate`` holds)."""
    with anyio.move_on_after(timeout) as scope:
        while not predicate():
            await anyio.sleep(0.005)
    if scope.cancelled_caught:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def until_async(predicate: Callable[[], Awaitable[bool]], *, what: str,
                      timeout: float = 10) -> None:
    """`until` for a condition that must be read from the database."""
    with anyio.move_on_after(timeout) as scope:
        while not await predicate():
            await anyio.sleep(0.02)
    if scope.cancelled_caught:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def holds_its_lock(rt: syncward.Runtime) -> bool:
    """Whether the store sees ``rt``'s boot alive (its advisory lock held)."""
    return any(o.boot_id == rt.boot_id and o.alive for o in await rt.store.owners())


async def schemas_like(dsn: str, pattern: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                                pattern)
        return sorted(r[0] for r in rows)
    finally:
        await conn.close()


def syncward_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m syncward.cli ARGS`` in ``tmp``, as a user runs it."""
    (tmp / "m.txt").write_text("a\nb\nc\n")
    (tmp / "h.py").write_text(HANDLER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWARD_")}
    return subprocess.run([sys.executable, "-m", "syncward.cli", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def run_cli(tmp: Path, db: str) -> subprocess.CompletedProcess[str]:
    return syncward_cli(tmp, "run", "m.txt", "--handler", "h.py:fn", "--db", db)


def one_line(result: subprocess.CompletedProcess[str], pattern: str, *,
             secret: str | None = None) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr, matching ``pattern``."""
    output = result.stdout + result.stderr
    if secret is not None:
        assert secret not in output, output
    assert result.returncode == 2, output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]
    return lines[0]


def nothing_ran(tmp: Path) -> None:
    assert not (tmp / "handler-ran").exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["h.py", "m.txt"]


def store_name(url: str) -> str:
    """The store as an error names it: the URL with its password as ``***``, escaped."""
    parts = urlsplit(url)
    if parts.password is not None:
        url = url.replace(f":{parts.password}@", ":***@", 1)
    return re.escape(url)


# --- 1. a restart mid-run ----------------------------------------------------------------


@pytest.mark.slow
async def test_a_restarted_server_is_reconnected_and_every_job_finishes_once(
        pg_instance: PgInstance, private_db: str) -> None:
    """Four jobs hold with their effects committed while the server stops; they finish
    while it is down (their outcomes cannot commit), more jobs are submitted (that submit
    cannot return), then the server starts again."""
    url = pg_instance.url(database=private_db)
    concurrency, first, second = 4, 20, 10
    effects: Counter[int] = Counter()
    held: set[int] = set()
    all_held = anyio.Event()
    gate = anyio.Event()
    submitted_late = anyio.Event()
    late_keys = [job_key({"n": n}) for n in range(first, first + second)]
    late_seen: dict[str, JobState] = {}

    async def handler(job: syncward.Job, ctx: syncward.Context) -> dict[str, int]:
        n = int(job.identity["n"])

        async def mark() -> int:
            effects[n] += 1
            return n

        value = await ctx.effect("mark", mark)
        if not gate.is_set():  # the first jobs wait here, their effects committed
            held.add(n)
            if len(held) == concurrency:
                all_held.set()
            await gate.wait()
        return {"n": value}

    late_read = anyio.Event()

    def late_specs() -> Iterator[dict[str, int]]:
        yield from ({"n": n} for n in range(first, first + second))
        late_read.set()  # rt.submit has taken every spec: it is sending them, or waiting

    async def submit_late(rt: syncward.Runtime) -> None:
        result = await rt.submit(late_specs())
        assert (result.new, result.duplicates) == (second, 0)
        late_seen.update(await key_states(url, late_keys))  # at once: was it committed?
        submitted_late.set()

    with anyio.fail_after(60):
        async with syncward.Runtime(handler, store=url, concurrency=concurrency, prefetch=0,
                                    syncer=QUICK, max_attempts=100,
                                    retry=syncward.RetryPolicy(base=0.05, cap=0.2)) as rt:
            result = await rt.submit({"n": n} for n in range(first))
            assert (result.new, result.duplicates) == (first, 0)
            assert len(await key_states(url, [job_key({"n": n}) for n in range(first)])) == first
            await all_held.wait()  # mid-run: 4 jobs leased, effects committed; 16 planned

            await anyio.to_thread.run_sync(pg_instance.stop)
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_late, rt)
                await late_read.wait()
                gate.set()  # the held jobs finish: their outcomes cannot be committed
                await until(lambda: rt.status().syncer["error"] is not None,
                            what="the syncer to report the failed commit")
                down = rt.status().syncer
                assert not submitted_late.is_set()  # in progress, not acknowledged: no commit
                await anyio.to_thread.run_sync(pg_instance.start)
            assert str(down["error"]).startswith("store commit failed: ")
            assert int(down["failures_total"]) >= 1 and int(down["retries"]) >= 1
            assert down["error_since"] is not None

            assert set(late_seen) == set(late_keys)  # all committed when submit returned
            await rt.join()
            up = rt.status().syncer
            assert up["error"] is None and up["error_since"] is None
            assert int(up["commits"]) > int(down["commits"])
            assert rt.stats().counts == await rt.store.counts()
            assert rt.restarts == []  # handled where it happened: no actor crashed
            await until_async(lambda: holds_its_lock(rt),
                              what="the runtime to hold its liveness lock again")

    reader = await open_store(url, readonly=True)
    try:
        total = first + second
        counts = await reader.counts()
        assert counts == {**dict.fromkeys(JobState, 0), JobState.SUCCEEDED: total}
        assert await reader.ops_count() == (total, total)
        for n in range(total):
            job = await reader.get_job(job_key({"n": n}))
            assert job is not None and job.result == {"n": n}, job
            if n in held:  # their outcomes waited out the restart in the syncer's mailbox
                assert (job.attempts, job.last_error) == (1, None), job
    finally:
        await reader.aclose()
    assert effects == dict.fromkeys(range(first + second), 1)


async def key_states(url: str, keys: list[str]) -> dict[str, JobState]:
    """The states of ``keys`` read on a new connection (not the runtime's)."""
    reader = await open_store(url, readonly=True)
    try:
        return await reader.key_states(keys)
    finally:
        await reader.aclose()


@pytest.mark.slow
async def test_a_server_crash_while_commits_flow_loses_nothing_and_repeats_nothing(
        pg_instance: PgInstance, private_db: str) -> None:
    """The server is stopped in immediate mode (as a crash: no checkpoint, connections cut
    mid-statement, recovery at start) while jobs are being leased, effects recorded and
    outcomes committed: whatever was in flight is retried, nothing is applied twice."""
    url = pg_instance.url(database=private_db)
    total, crash_after = 1000, 200
    effects: Counter[int] = Counter()
    finished = 0
    busy = anyio.Event()

    async def handler(job: syncward.Job, ctx: syncward.Context) -> dict[str, int]:
        nonlocal finished
        n = int(job.identity["n"])

        async def mark() -> int:
            effects[n] += 1
            return n

        value = await ctx.effect("mark", mark)
        finished += 1
        if finished == crash_after:
            busy.set()
        return {"n": value}

    keys = [job_key({"n": n}) for n in range(total)]
    committed: dict[str, JobState] = {}

    async def submit_all(rt: syncward.Runtime) -> None:
        result = await rt.submit({"n": n} for n in range(total))
        assert (result.new, result.duplicates) == (total, 0)
        committed.update(await key_states(url, keys))

    with anyio.fail_after(60):
        async with syncward.Runtime(handler, store=url, concurrency=16, syncer=QUICK,
                                    max_attempts=100,
                                    retry=syncward.RetryPolicy(base=0.05, cap=0.2)) as rt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_all, rt)
                await busy.wait()
                await anyio.to_thread.run_sync(pg_instance.stop, "immediate")
                # The outcome of the job that set `busy` at least must fail to commit.
                await until(lambda: rt.status().syncer["error"] is not None,
                            what="the syncer to report the failed commit")
                await anyio.to_thread.run_sync(pg_instance.start)
            assert set(committed) == set(keys)
            await rt.join()
            syncer = rt.status().syncer
            assert syncer["error"] is None and int(syncer["failures_total"]) >= 1
            assert rt.stats().counts == await rt.store.counts()
            assert rt.restarts == []

    reader = await open_store(url, readonly=True)
    try:
        assert await reader.counts() == {**dict.fromkeys(JobState, 0),
                                         JobState.SUCCEEDED: total}
        assert await reader.ops_count() == (total, total)
        states = await reader.key_states(keys)
        assert set(states.values()) == {JobState.SUCCEEDED}
    finally:
        await reader.aclose()
    # A failed effect commit is retried by the syncer with the same message, and a failed
    # ledger read fails the attempt before the effect runs: no effect ran twice.
    assert effects == dict.fromkeys(range(total), 1)


# --- 2. bad input: one line, exit 2, nothing written -------------------------------------


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://app:{password}@127.0.0.1:{spare_port()}/test"
    one_line(run_cli(tmp_path, url),
             rf"syncward: error: store {store_name(url)}: cannot connect: "
             r"ConnectionRefusedError: .+", secret=password)
    nothing_ran(tmp_path)


def test_a_port_that_is_not_a_number_is_one_line(tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://app:{password}@127.0.0.1:notaport/test"
    one_line(run_cli(tmp_path, url),
             rf"syncward: error: store URL '{store_name(url)}' is malformed: its port is "
             r"not a number .*", secret=password)
    nothing_ran(tmp_path)


def test_a_password_with_a_slash_is_not_quoted_by_a_parse_error(tmp_path: Path) -> None:
    """``user:se/cret@host`` splits at the '/': a parser's own message would quote 'se'."""
    secret = uuid.uuid4().hex[:10]
    url = f"postgresql://app:{secret}/x@127.0.0.1:{spare_port()}/test"
    result = run_cli(tmp_path, url)
    assert result.returncode == 2
    assert secret not in result.stdout + result.stderr


def test_a_password_given_as_a_query_parameter_is_not_printed(tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://app@127.0.0.1:{spare_port()}/test?password={password}"
    result = run_cli(tmp_path, url)
    assert result.returncode == 2
    assert password not in result.stdout + result.stderr


async def test_a_wrong_password_is_one_line(tmp_path: Path, pg_instance: PgInstance,
                                            private_db: str) -> None:
    role, password = f"app_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    await admin_sql(pg_instance, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        right = await asyncpg.connect(pg_instance.url(role, password, private_db))
        await right.close()  # the role and scram-sha-256 work: only the password is wrong
        wrong = f"wrong-{uuid.uuid4().hex}"
        url = pg_instance.url(role, wrong, private_db)
        one_line(run_cli(tmp_path, url),
                 rf"syncward: error: store {store_name(url)}: login refused: "
                 rf'password authentication failed for user "{role}"', secret=wrong)
        nothing_ran(tmp_path)
        assert await schemas_like(pg_instance.url(database=private_db), "syncward%") == []
    finally:
        await admin_sql(pg_instance, f"DROP ROLE {role}")


@pytest.fixture
async def limited_role() -> AsyncIterator[tuple[str, str]]:
    """A role on the machine's server that may log in (its password: the second item)
    but not create schemas; dropped, with anything it owns, at teardown."""
    require_postgres()
    role, password = f"sw_t_{uuid.uuid4().hex[:12]}", f"pw-{uuid.uuid4().hex}"
    await main_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            may_create = await conn.fetchval(
                "SELECT has_database_privilege($1, current_database(), 'CREATE')", role)
        finally:
            await conn.close()
        assert not may_create, "PUBLIC has CREATE on the test database: revoke it"
        yield role, password
    finally:
        await main_sql(f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def main_sql(*statements: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def main_url(role: str, password: str, schema: str) -> str:
    """The machine's server, logged in as ``role``, on ``schema``."""
    parts = urlsplit(POSTGRES_URL)
    return (f"postgresql://{role}:{password}@{parts.hostname}:{parts.port or 5432}"
            f"{parts.path}?schema={schema}")


async def test_a_schema_the_role_may_not_create_is_one_line(
        tmp_path: Path, limited_role: tuple[str, str], main_schema: str) -> None:
    role, password = limited_role
    url = main_url(role, password, main_schema)
    database = urlsplit(POSTGRES_URL).path.strip("/")
    one_line(run_cli(tmp_path, url),
             rf"syncward: error: store {store_name(url)}: cannot create the syncward schema "
             rf"'{main_schema}': permission denied for database {database} \(create it once "
             r"as a user who may, or grant CREATE\)", secret=password)
    nothing_ran(tmp_path)
    assert await schemas_like(POSTGRES_URL, main_schema) == []


async def test_the_advice_works_a_schema_created_for_the_role_is_used(
        tmp_path: Path, limited_role: tuple[str, str], main_schema: str) -> None:
    """The refusal above says "create it once as a user who may": once an administrator
    has created the schema for the role, the role (still without CREATE on the database)
    creates its tables in it and runs."""
    role, password = limited_role
    await main_sql(f'CREATE SCHEMA "{main_schema}" AUTHORIZATION {role}')
    result = run_cli(tmp_path, main_url(role, password, main_schema))
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    reader = await open_store(f"{POSTGRES_URL}?schema={main_schema}", readonly=True)
    try:
        assert (await reader.counts())[JobState.SUCCEEDED] == 3
    finally:
        await reader.aclose()


# --- 3. a schema from a newer syncward ---------------------------------------------------


async def test_a_schema_from_a_newer_syncward_is_refused(tmp_path: Path,
                                                         main_schema: str) -> None:
    """Its version set higher than this syncward's: opening it writable or read-only
    raises `SchemaTooNew`; ``run``, ``status`` and ``report`` say so in one line and exit
    2, and no row of any table changes."""
    url = f"{POSTGRES_URL}?schema={main_schema}"
    store = await open_store(url)
    await store.aclose()
    newer = SCHEMA_VERSION + 1
    await main_sql(f'UPDATE "{main_schema}".schema_version SET version = {newer}')
    before = await table_rows(main_schema)
    for readonly in (False, True):
        with pytest.raises(SchemaTooNew) as info:
            await open_store(url, readonly=readonly)
        assert (info.value.found, info.value.supported) == (newer, SCHEMA_VERSION)
        assert re.fullmatch(
            rf"store {store_name(url)} \(schema {main_schema}\) has schema version {newer}; "
            rf"this syncward supports up to {SCHEMA_VERSION}: upgrade syncward to open it",
            str(info.value)), str(info.value)
    expected = (rf"syncward: error: store {store_name(url)} \(schema {main_schema}\) has "
                rf"schema version {newer}; this syncward supports up to {SCHEMA_VERSION}: "
                "upgrade syncward to open it")
    one_line(run_cli(tmp_path, url), expected)
    nothing_ran(tmp_path)
    for command in (["status"], ["report", "--json"]):
        one_line(syncward_cli(tmp_path, *command, "--db", url), expected)
    assert await table_rows(main_schema) == before
    assert before["schema_version"] == [(newer,)]


async def table_rows(schema: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of ``schema``, sorted, by table name."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)]
        return {t: sorted((tuple(r) for r in await conn.fetch(
            f'SELECT * FROM "{schema}"."{t}"')), key=repr) for t in sorted(tables)}
    finally:
        await conn.close()


def test_a_password_that_was_not_percent_encoded_is_not_printed(tmp_path: Path) -> None:
    password = f"p#w/{uuid.uuid4().hex}"  # a '#' and a '/' as typed, not encoded
    url = f"postgresql://app:{password}@127.0.0.1:{spare_port()}/test"
    result = run_cli(tmp_path, url)
    assert result.returncode == 2
    assert password not in result.stdout + result.stderr
    assert "app:***@" in result.stderr


def test_status_and_report_never_print_the_password(tmp_path: Path) -> None:
    """On the machine's server (trust authentication: any password logs in), a run, its
    status and its report name the store with the password masked."""
    require_postgres()
    password = f"pw-{uuid.uuid4().hex}"
    schema = f"t_{uuid.uuid4().hex[:12]}_pw"
    parts = urlsplit(POSTGRES_URL)
    url = f"postgresql://{parts.username}:{password}@{parts.hostname}:{parts.port}" \
          f"{parts.path}?schema={schema}"
    try:
        ran = syncward_cli(tmp_path, "run", "m.txt", "--handler", "h.py:fn", "--db", url)
        assert ran.returncode == 0, ran.stderr
        for args in (("status",), ("status", "--json"), ("report",), ("report", "--json")):
            shown = syncward_cli(tmp_path, *args, "--db", url)
            assert shown.returncode == 0, shown.stderr
            assert password not in shown.stdout + shown.stderr
        status = json.loads(syncward_cli(tmp_path, "status", "--json", "--db", url).stdout)
        assert status["store"] == redact(url) and ":***@" in status["store"]
    finally:
        anyio.run(drop_schemas, schema)
