"""The shared store: one PostgreSQL database, many runtimes on many machines.

Owns, per process: the write connection (used only by `apply`, i.e. only by this
process's syncer, which group-commits as with SQLite), a small pool of read connections,
and the *life* connection, which holds this boot's session-level advisory lock for as
long as the runtime lives and listens for wake-ups.

Liveness (`Liveness.SHARED`): a runtime's boot holds ``pg_advisory_lock(NS, key(boot))``
on its life connection. When its process dies — killed, crashed, its machine lost — the
server ends the session and the lock is gone with it; any live runtime that looks
(``pg_locks``) sees a lease whose boot's lock nobody holds and gives it back at once.
No timer is waited for. A runtime that is alive but stuck (stopped, partitioned) keeps
its lock while its connection lives; its leases go back when they expire and its late
writes are fenced out.

PgBouncer in transaction pooling mode hands a session to another client after each
transaction, so a session-level advisory lock neither stays held nor stays where it was
taken: point syncward at PostgreSQL directly, or at PgBouncer in session mode.

URL: ``postgresql://user[:password]@host[:port]/database[?schema=name]``; other query
parameters are passed to asyncpg (``sslmode``, ...). The password never appears in an
error, a log line or `url`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import asyncpg.exceptions as pgerr

from syncward.errors import (
    ConfigError,
    SchemaTooNew,
    StoreError,
    StoreFailure,
    StoreUnavailable,
)
from syncward.jobs import TERMINAL, Job, JobState
from syncward.store.apply import Applier
from syncward.store.base import (
    EventRow,
    JobRow,
    LeaseRow,
    Liveness,
    ManifestComparison,
    OwnerInfo,
    RunInfo,
    RunReject,
    WorkerRow,
)
from syncward.store.postgres.keeper import LivenessKeeper
from syncward.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from syncward.store.postgres.tx import LOCK_NAMESPACE, PostgresTx, clean, dead
from syncward.store.rows import JOB_COLUMNS, LEASED_COLUMNS, job_row, leased_job
from syncward.store.urls import redact

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from syncward.messages import ApplyResult, LeaseOrder, SyncerMsg
    from syncward.store.base import StoreHooks
    from syncward.supervisor import Actor

__all__ = ["PostgresStore", "boot_lock_key", "redact"]

log = logging.getLogger("syncward.postgres")

#: Failures worth retrying: the connection, the server going away, a deadlock or a
#: serialisation failure between writers, a row lock not granted in time, resources
#: running out.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, pgerr.PostgresConnectionError, pgerr.InterfaceError,
    pgerr.TransactionRollbackError, pgerr.OperatorInterventionError,
    pgerr.InsufficientResourcesError, pgerr.IdleInTransactionSessionTimeoutError,
    pgerr.LockNotAvailableError,
)
#: Failures of the store's environment, which waiting does not mend (as SQLite's
#: `failure_kind`): the runtime stops with one line after ``fatal_after``.
ENVIRONMENT: dict[type[BaseException], StoreFailure] = {
    pgerr.DiskFullError: StoreFailure.DISK_FULL,
    pgerr.ReadOnlySQLTransactionError: StoreFailure.READ_ONLY,
    pgerr.InvalidAuthorizationSpecificationError: StoreFailure.PERMISSION,
    pgerr.InsufficientPrivilegeError: StoreFailure.PERMISSION,
    pgerr.InvalidCatalogNameError: StoreFailure.GONE,
    pgerr.InvalidSchemaNameError: StoreFailure.GONE,
    pgerr.UndefinedTableError: StoreFailure.GONE,
}


def failure_kind(exc: BaseException) -> StoreFailure | None:
    """The kind of a store failure, or None for an error of the batch's own."""
    for cls, kind in ENVIRONMENT.items():
        if isinstance(exc, cls):
            return kind
    return StoreFailure.TRANSIENT if isinstance(exc, TRANSIENT) else None
_MIGRATION_LOCK = 0  # second key of the advisory lock migrations run under
#: The writer's session: a runtime stopped or stuck inside a transaction (SIGSTOP, a
#: blocked event loop) holds row locks every other runtime's batches wait for; the server
#: ends such a session after 10 s idle in its transaction (rolled back: nothing it had
#: not committed was acknowledged), and a batch waits at most 5 s for a row lock before it
#: fails and is retried, so the failure shows in the syncer's health meanwhile.
WRITER_SETUP = ("SET idle_in_transaction_session_timeout = '10s'; SET lock_timeout = '5s'")


def boot_lock_key(boot_id: str) -> int:
    """The second key of a boot's advisory lock: 32 bits of the boot id's SHA-256."""
    return int.from_bytes(hashlib.sha256(boot_id.encode()).digest()[:4], "big", signed=True)


def _what_is_wrong(dsn: str) -> str:
    """Which part of a DSN asyncpg could not parse, without quoting any of it."""
    try:
        port = urlsplit(dsn).port
    except ValueError:
        return "its port is not a number from 0 to 65535 (or a password holds ':' or '/')"
    return "asyncpg cannot parse it" if port is not None else "its host part cannot be parsed"


def _split(url: str) -> tuple[str, str]:
    """(the DSN for asyncpg, the schema) from a store URL.

    Raises:
        ConfigError: no database named, a schema name that is not an identifier, or a URL
            that cannot be parsed at all.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"store URL {redact(url)!r} is malformed (an unclosed '[' in "
                          "the host?)") from None
    if not parts.path.strip("/"):
        raise ConfigError(f"store URL {redact(url)!r} names no database "
                          "(postgresql://user@host:port/database)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = "syncward"
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not schema.isidentifier() or not schema.isascii():
        raise ConfigError(f"store URL {redact(url)!r}: schema {schema!r} must be a plain "
                          "identifier (letters, digits, _)")
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    return dsn, schema.lower()



class PostgresStore:
    """`Store` over PostgreSQL. Create with `PostgresStore.open`, close with `aclose`."""

    liveness = Liveness.SHARED

    def __init__(self, *, url: str, dsn: str, schema: str, pool: asyncpg.Pool,
                 writer: asyncpg.Connection | None) -> None:
        self.url = redact(url)
        self.schema = schema
        self.channel = f"syncward_{schema}"
        self._dsn = dsn
        self._pool = pool
        self._writer = writer
        self._readonly = writer is None
        self._applier = Applier()
        self._life: asyncpg.Connection | None = None
        self._configured: asyncpg.Connection | None = None
        self._listener: Callable[..., None] | None = None
        self.boot_id: str | None = None

    # --- opening -----------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, readonly: bool = False) -> PostgresStore:
        """Connect, and create or migrate the schema when writable.

        Raises:
            ConfigError: a malformed URL.
            StoreError: the server cannot be reached, refuses the login, has no such
                database, or the schema is missing (read-only) or cannot be created.
            SchemaTooNew: the schema was written by a newer syncward.
        """
        dsn, schema = _split(url)
        where = redact(url)
        writer = None
        try:
            if not readonly:
                writer = await cls._connect(dsn, schema, where)
                await _migrate(writer, schema, where)
            else:
                probe = await cls._connect(dsn, schema, where)
                try:
                    await _check_version(probe, schema, where)
                finally:
                    await probe.close()
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=4, server_settings=_settings(schema))
        except BaseException:
            if writer is not None:
                await writer.close()
            raise
        return cls(url=url, dsn=dsn, schema=schema, pool=pool, writer=writer)

    @staticmethod
    async def _connect(dsn: str, schema: str, where: str) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(dsn, server_settings=_settings(schema), timeout=10)
        except pgerr.InvalidAuthorizationSpecificationError as exc:
            raise StoreError(f"store {where}: login refused: {exc}") from None
        except pgerr.InvalidCatalogNameError as exc:
            raise StoreError(f"store {where}: {exc}") from None
        except (OSError, TimeoutError, pgerr.PostgresError, pgerr.InterfaceError) as exc:
            raise StoreError(f"store {where}: cannot connect: {type(exc).__name__}: "
                             f"{exc}") from None
        except ValueError as exc:  # asyncpg could not parse the URL (a port not a number)
            # Not asyncpg's text: it quotes the URL's parts, a password among them.
            del exc
            raise ConfigError(f"store URL {where!r} is malformed: {_what_is_wrong(dsn)}"
                              ) from None

    async def attach(self, boot_id: str) -> None:
        """Take this boot's advisory lock on a connection of its own, for its whole life.

        Raises:
            StoreError: the store is read-only, or the lock cannot be taken.
        """
        if self._readonly:
            raise StoreError(f"store {self.url} is open read-only")
        self.boot_id = boot_id
        self._life = await self._connect(self._dsn, self.schema, self.url)
        await self._life.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE,
                                 boot_lock_key(boot_id))

    def housekeeping(self, hooks: StoreHooks) -> Sequence[tuple[str, Callable[[], Actor]]]:
        return [("liveness", lambda: LivenessKeeper(store=self, hooks=hooks))]

    # --- liveness (for the keeper) -----------------------------------------------------

    async def listen(self, callback: Callable[..., None]) -> None:
        """Call ``callback`` on every NOTIFY of the store's channel (on the life
        connection; again after `keep_alive` replaced it)."""
        self._listener = callback
        if self._life is not None and not self._life.is_closed():
            await self._life.add_listener(self.channel, callback)

    async def keep_alive(self, callback: Callable[..., None] | None = None) -> bool:
        """Make sure the life connection is up and holds this boot's lock; returns
        whether it had to be taken again (the server restarted, the network dropped)."""
        if self.boot_id is None:
            return False
        life = self._life
        try:
            if life is not None and not life.is_closed():
                await life.fetchval("SELECT 1", timeout=10)
                return False
        except TRANSIENT:
            pass
        if life is not None:
            life.terminate()
        self._life = None
        try:
            self._life = await self._connect(self._dsn, self.schema, self.url)
            # Try, not wait: the server may not have noticed yet that the old session is
            # gone (it holds the lock until it does); the next round tries again.
            if not await self._life.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE,
                    boot_lock_key(self.boot_id), timeout=10):
                self._life.terminate()
                self._life = None
                return False
            if self._listener is not None:
                await self._life.add_listener(self.channel, self._listener)
        except (StoreError, OSError, TimeoutError, pgerr.PostgresError,
                pgerr.InterfaceError) as exc:
            log.warning("store %s: cannot take this runtime's lock again yet: %s",
                        self.url, exc)
            return False
        log.warning("store %s: connection lost and taken again; this runtime's lock is "
                    "held again (leases taken back meanwhile are fenced)", self.url)
        return True

    async def someone_died(self, boot_id: str) -> bool:
        """Whether a lease or a running worker belongs to a boot whose lock nobody holds."""
        return bool(await self._value(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'leased' AND (lease_boot IS NULL"
            f" OR (lease_boot <> $1 AND {dead('jobs.lease_boot')}))) OR EXISTS (SELECT 1"
            " FROM workers WHERE boot_id <> $1 AND status NOT IN ('dead', 'stopped')"
            f" AND {dead('workers.boot_id')})", boot_id))

    # --- the write entry point ---------------------------------------------------------

    async def apply(self, batch: Sequence[SyncerMsg], *, now: float,
                    lease: LeaseOrder | None = None, recount: bool = False,
                    dry_run: bool = False) -> ApplyResult:
        """See `syncward.store.base.Store.apply`.

        Raises:
            StoreError: the store was opened read-only.
            StoreUnavailable: the transaction failed and was rolled back, or its outcome
                is unknown (the connection died during COMMIT): worth retrying.
            asyncpg.PostgresError: another database error (a value out of range): the
                same batch would fail the same way.
        """
        if self._readonly:
            raise StoreError(f"store {self.url} is open read-only")
        try:
            conn = await self._writer_connection()
            try:
                # Plain BEGIN/COMMIT, not asyncpg's Transaction, which keeps state on the
                # Python side: after a cancelled BEGIN it would turn the next BEGIN into a
                # SAVEPOINT, whose "commit" commits nothing.
                await conn.execute("BEGIN")
                tx = PostgresTx(conn, self.boot_id or "unattached")
                result = await self._applier.apply(tx, batch, now=now, lease=lease,
                                                   recount=recount)
                if tx.planned_changed and not dry_run:
                    await conn.execute("SELECT pg_notify($1, $2)", self.channel,
                                       self.boot_id or "")
                await conn.execute("ROLLBACK" if dry_run else "COMMIT")
            except BaseException:
                # Cancelled mid-statement, a broken connection, a refused value: the
                # transaction's state is unknown, and an await here may itself be
                # cancelled. Drop the connection (no await): the server rolls back
                # whatever it had open, and the next batch starts on a fresh one.
                self._drop_writer()
                raise
        except Exception as exc:
            kind = failure_kind(exc)
            if kind is None:
                raise  # a value the database refuses: the batch's own fault
            raise StoreUnavailable("commit", exc, kind=kind) from exc
        return result

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._writer is not None and self._writer.is_in_transaction():
            self._drop_writer()  # never start a batch inside someone else's transaction
        if self._writer is None or self._writer.is_closed():
            self._writer = await asyncpg.connect(self._dsn, server_settings=_settings(
                self.schema), timeout=10)
        if self._configured is not self._writer:
            await self._writer.execute(WRITER_SETUP)
            self._configured = self._writer
        return self._writer

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.terminate()

    async def publish_status(self, status: dict[str, Any] | None) -> None:
        """An autocommit upsert of this boot's status (not job data: no syncer needed)."""
        if self.boot_id is None:
            return
        try:
            if status is None:
                await self._pool.execute("DELETE FROM published WHERE boot_id = $1",
                                         self.boot_id, timeout=5)
            else:
                await self._pool.execute(
                    "INSERT INTO published (boot_id, status, at) VALUES ($1, $2,"
                    " extract(epoch from clock_timestamp())) ON CONFLICT (boot_id) DO UPDATE"
                    " SET status = excluded.status, at = excluded.at",
                    self.boot_id, clean(json.dumps(status, default=str)), timeout=5)
        except TRANSIENT as exc:
            raise OSError(f"publishing status to {self.url}: {exc}") from exc

    # --- reads -------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except TRANSIENT as exc:
            raise StoreUnavailable("read", exc) from exc

    async def _value(self, sql: str, *args: Any) -> Any:
        rows = await self._fetch(sql, *args)
        return rows[0][0] if rows else None

    async def counts(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in await self._fetch("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = int(n)
        return counts

    async def get_job(self, key: str) -> JobRow | None:
        rows = await self._fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE key = $1",
                                 bytes.fromhex(key))
        return job_row(rows[0]) if rows else None

    async def jobs_in_state(self, state: JobState, *, limit: int | None = None,
                            after: int | None = None) -> list[JobRow]:
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1 AND id > $2 ORDER BY id LIMIT $3",
            state.value, after if after is not None else -1, limit)
        return [job_row(r) for r in rows]

    async def get_op(self, op_key: str) -> str | None:
        value = await self._value("SELECT result FROM ops WHERE op_key = $1",
                                  bytes.fromhex(op_key))
        return None if value is None else str(value)

    async def ops_count(self) -> tuple[int, int]:
        (row,) = await self._fetch("SELECT count(*), count(DISTINCT op_key) FROM ops")
        return int(row[0]), int(row[1])

    async def expired_leases(self, now: float, *, limit: int) -> list[tuple[int, int]]:
        rows = await self._fetch(
            "SELECT id, fence FROM jobs WHERE state = 'leased' AND lease_expires_at <= $1"
            " ORDER BY lease_expires_at LIMIT $2", now, limit)
        return [(int(r[0]), int(r[1])) for r in rows]

    async def active_leases(self, *, limit: int = 100) -> list[LeaseRow]:
        rows = await self._fetch(
            "SELECT id, key, fence, lease_owner, lease_boot, lease_expires_at, stage FROM jobs"
            " WHERE state = 'leased' ORDER BY lease_expires_at, id LIMIT $1", limit)
        return [LeaseRow(job_id=r[0], key=bytes(r[1]).hex(), fence=r[2], owner=r[3],
                         boot_id=r[4], expires_at=r[5], stage=r[6]) for r in rows]

    async def leased_jobs(self, boot_id: str, *, default_lease_seconds: float) -> list[Job]:
        rows = await self._fetch(
            f"SELECT {LEASED_COLUMNS} FROM jobs"
            " WHERE state = 'leased' AND lease_boot = $1 ORDER BY id", boot_id)
        return [leased_job(r, default_lease_seconds) for r in rows]

    async def next_due(self, *, limited: bool = True) -> float | None:
        # One minimum per partial index of planned jobs (see the schema's version 2).
        sql = ("SELECT min(m) FROM (SELECT min(next_attempt_at) AS m FROM jobs"
               " WHERE state = 'planned' AND priority = 0 AND limit_key IS NULL"
               " UNION ALL SELECT min(next_attempt_at) FROM jobs"
               " WHERE state = 'planned' AND (priority <> 0 OR limit_key IS NOT NULL)"
               " AND limit_key IS NULL")
        if limited:
            sql += (" UNION ALL SELECT min(next_attempt_at) FROM jobs"
                    " WHERE state = 'planned' AND (priority <> 0 OR limit_key IS NOT NULL)"
                    " AND limit_key IS NOT NULL")
        value = await self._value(sql + ") s")
        return None if value is None else float(value)

    async def retrying_count(self, *, limit: int = 10_000) -> int:
        return int(await self._value(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'planned' AND attempts > 0"
            " LIMIT $1) t", limit))

    async def workers(self) -> list[WorkerRow]:
        rows = await self._fetch(
            "SELECT name, boot_id, pid, host, status, started_at, heartbeat_at FROM workers"
            " ORDER BY started_at, name")
        return [WorkerRow(*r) for r in rows]

    async def get_meta(self, key: str) -> str | None:
        value = await self._value("SELECT value FROM meta WHERE key = $1", key)
        return None if value is None else str(value)

    async def events(self, *, kind: str | None = None, limit: int = 50) -> list[EventRow]:
        if kind is None:
            rows = await self._fetch(
                "SELECT at, kind, detail FROM events ORDER BY id DESC LIMIT $1", limit)
        else:
            rows = await self._fetch("SELECT at, kind, detail FROM events WHERE kind = $1"
                                     " ORDER BY id DESC LIMIT $2", kind, limit)
        return [EventRow(at=r[0], kind=r[1], detail=json.loads(r[2])) for r in rows]

    async def rejection_count(self) -> int:
        return int(await self._value("SELECT count(*) FROM rejections"))

    async def latest_run(self) -> int | None:
        value = await self._value("SELECT max(id) FROM runs")
        return None if value is None else int(value)

    async def run_info(self, run_id: int) -> RunInfo | None:
        rows = await self._fetch(
            "SELECT id, source, options, status, started_at, finished_at FROM runs"
            " WHERE id = $1", run_id)
        if not rows:
            return None
        r = rows[0]
        return RunInfo(id=int(r[0]), source=r[1], options=json.loads(r[2]), status=r[3],
                       started_at=r[4], finished_at=r[5])

    async def run_rejects(self, run_id: int) -> list[RunReject]:
        rows = await self._fetch("SELECT line, reason, raw FROM run_rejects WHERE run_id = $1"
                                 " ORDER BY line", run_id)
        return [RunReject(line=int(r[0]), reason=r[1], raw=r[2]) for r in rows]

    async def run_states(self, run_id: int) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in await self._fetch(
                "SELECT j.state, count(*) FROM (SELECT DISTINCT key FROM run_entries"
                " WHERE run_id = $1) e JOIN jobs j ON j.key = e.key GROUP BY j.state", run_id):
            counts[JobState(state)] = int(n)
        return counts

    async def compare_run(self, run_id: int) -> ManifestComparison:
        (row,) = await self._fetch(
            "SELECT count(*), count(DISTINCT key) FROM run_entries WHERE run_id = $1", run_id)
        missing = await self._fetch(
            "SELECT e.line FROM run_entries e LEFT JOIN jobs j ON j.key = e.key"
            " WHERE e.run_id = $1 AND j.id IS NULL ORDER BY e.line", run_id)
        not_terminal = await self._value(
            "SELECT count(DISTINCT e.key) FROM run_entries e JOIN jobs j ON j.key = e.key"
            " WHERE e.run_id = $1 AND NOT (j.state = ANY($2::text[]))", run_id,
            [s.value for s in TERMINAL])
        return ManifestComparison(entries=int(row[0]), distinct=int(row[1]),
                                  missing=[{"line": int(r[0])} for r in missing],
                                  not_terminal=int(not_terminal))

    async def key_states(self, keys: Sequence[str]) -> dict[str, JobState]:
        rows = await self._fetch("SELECT key, state FROM jobs WHERE key = ANY($1::bytea[])",
                                 [bytes.fromhex(k) for k in keys])
        return {bytes(r[0]).hex(): JobState(r[1]) for r in rows}

    async def owners(self) -> list[OwnerInfo]:
        """Every worker not marked dead or stopped, alive while its boot's lock is held."""
        rows = await self._fetch(
            "SELECT boot_id, pid, host, started_at,"
            f" NOT ({dead('workers.boot_id')}) FROM workers"
            " WHERE status NOT IN ('dead', 'stopped') ORDER BY started_at")
        return [OwnerInfo(boot_id=r[0], pid=r[1], host=r[2],
                          since=None if r[3] is None else str(r[3]), alive=bool(r[4]))
                for r in rows]

    async def published_status(self, boot_id: str) -> dict[str, Any] | None:
        value = await self._value("SELECT status FROM published WHERE boot_id = $1", boot_id)
        return None if value is None else dict(json.loads(value))

    async def last_write_at(self) -> float | None:
        """The newest commit any live runtime has published."""
        times = []
        for (text,) in await self._fetch("SELECT status FROM published"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                at = json.loads(text).get("syncer", {}).get("last_commit_at")
                if at is not None:
                    times.append(float(at))
        return max(times, default=None)

    async def aclose(self) -> None:
        """Close every connection (dropping this boot's lock). Idempotent."""
        with contextlib.suppress(Exception):
            await self.publish_status(None)
        for conn in (self._life, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=5)
        self._life = self._writer = None
        with anyio.move_on_after(10) as waited, contextlib.suppress(Exception):
            await self._pool.close()  # waits for borrowed connections to come back
        if waited.cancelled_caught:
            self._pool.terminate()  # a partitioned server: do not hang on leaving


def _settings(schema: str) -> dict[str, str]:
    return {"search_path": schema, "application_name": "syncward"}


async def _version(conn: asyncpg.Connection, schema: str) -> int | None:
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_version")
    if exists is None:
        return None
    return int(await conn.fetchval("SELECT version FROM schema_version"))


async def _check_version(conn: asyncpg.Connection, schema: str, where: str) -> None:
    version = await _version(conn, schema)
    if version is None or version < 1:
        raise StoreError(f"store {where} has no syncward schema {schema!r} (nothing ran "
                         "on it yet)")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"{where} (schema {schema})", version, SCHEMA_VERSION)


async def _migrate(conn: asyncpg.Connection, schema: str, where: str) -> None:
    """Create or migrate the schema, one transaction under the migration lock."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE,
                               _MIGRATION_LOCK)
            # Not CREATE SCHEMA IF NOT EXISTS: it needs CREATE on the database even when
            # the schema exists, refusing a role whose schema an administrator made.
            if await conn.fetchval("SELECT to_regnamespace($1)", schema) is None:
                await conn.execute(f'CREATE SCHEMA "{schema}"')
            version = await _version(conn, schema)
            if version is None:
                await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
                await conn.execute("INSERT INTO schema_version VALUES (0)")
                version = 0
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(f"{where} (schema {schema})", version, SCHEMA_VERSION)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(MIGRATIONS[target - 1])
                await conn.execute("UPDATE schema_version SET version = $1", target)
    except pgerr.InsufficientPrivilegeError as exc:
        raise StoreError(f"store {where}: cannot create the syncward schema {schema!r}: "
                         f"{exc} (create it once as a user who may, or grant CREATE)"
                         ) from None
