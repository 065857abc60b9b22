"""The embedded default store: one SQLite file in WAL mode.

Owns: the write connection (used only by `apply`, i.e. only by the syncer), a read
connection through aiosqlite, and, for a writable store, the OS-level owner lock.

Durability: ``synchronous=FULL`` by default. "Acknowledged after commit" must survive an
OS crash or a power cut, which WAL with NORMAL does not promise (the last transactions
may roll back); ``synchronous="normal"`` is an explicit opt-in fast mode.

One owner: a writable store holds ``flock(LOCK_EX)`` on ``<db>.lock`` for as long as it
is open, and writes its pid, host, start time and boot id there. The kernel drops the
lock when the process dies, however it dies, so a lock that can be taken proves that no
earlier owner is alive: the store is `Liveness.EXCLUSIVE` and every lease of another
boot is stale at once. Read-only stores take no lock.

Status for other processes: the running runtime publishes its in-memory status to the
sidecar ``<db>.status.json`` (written atomically); `status` reads it when the lock's
owner is alive and the boot ids match.

Housekeeping: the `Checkpointer` actor copies the WAL back into the database off the
commit path (the writer has automatic checkpoints turned off).

A bounded WAL. A PASSIVE checkpoint copies what it can without waiting for anyone, but
the WAL file only starts again from its beginning when a checkpoint has caught up with
every frame and no reader still needs the log; under a steady stream of commits a
PASSIVE one never quite catches up, and the file grew without bound (1.3 GB for a 136 MB
database after 300,000 jobs). So after a commit that leaves the WAL larger than
``wal_limit`` bytes, the writer itself runs a RESTART checkpoint on its own connection:
it copies what the PASSIVE ones left, waits (at most 0.2 s) for readers still on older
snapshots, and makes the next commit write the log from its beginning again; with
``journal_size_limit`` at the same size the file is cut back to it then. The writer, not
the checkpointer, because such a checkpoint must first take the write lock, and a syncer
committing back to back won that race for seconds while the WAL grew to 80 MB. RESTART,
not TRUNCATE: emptying the file costs a truncation and its sync on the writer's path,
which doubled the p99 of single-job submits (7 against 11-15 ms at 3,000/s here). So
the WAL stays within the limit plus what is committed while one checkpoint runs; the
syncer pays one short checkpoint per ``wal_limit`` bytes written; ``synchronous=FULL``
is kept. A reader holding one snapshot for longer than 0.2 s only defers the restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import aiosqlite
import anyio
import anyio.to_thread

from syncward.errors import (
    ConfigError,
    SchemaTooNew,
    StoreError,
    StoreFailure,
    StoreLocked,
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
from syncward.store.port import run_to_completion
from syncward.store.rows import JOB_COLUMNS, LEASED_COLUMNS, job_row, leased_job
from syncward.store.sqlite.checkpointer import Checkpointer
from syncward.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from syncward.store.sqlite.tx import STEERED, SQLiteTx

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from syncward.messages import ApplyResult, LeaseOrder, SyncerMsg
    from syncward.store.base import StoreHooks
    from syncward.supervisor import Actor

__all__ = ["SQLiteStore", "sqlite_path_from_url", "status_path"]

def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or a bare path.

    Raises:
        ConfigError: another scheme, or no path.
    """
    if "://" not in url:
        path = url
    elif url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    else:
        raise ConfigError(f"unsupported store URL {url!r}: expected sqlite:///path/to/file.db")
    if not path:
        raise ConfigError(f"store URL {url!r} names no file")
    return Path(path)


#: SQLite's primary result codes (the low byte of ``sqlite_errorcode``) that mean the
#: store's environment failed rather than a passing contention.
_ENVIRONMENT = {
    13: StoreFailure.DISK_FULL,  # SQLITE_FULL
    8: StoreFailure.READ_ONLY,  # SQLITE_READONLY
    3: StoreFailure.PERMISSION,  # SQLITE_PERM
    23: StoreFailure.PERMISSION,  # SQLITE_AUTH
    10: StoreFailure.IO,  # SQLITE_IOERR
    14: StoreFailure.IO,  # SQLITE_CANTOPEN
    11: StoreFailure.IO,  # SQLITE_CORRUPT
    26: StoreFailure.IO,  # SQLITE_NOTADB
}


def failure_kind(exc: sqlite3.Error) -> StoreFailure:
    """What kind of failure an SQLite error is (busy and locked are passing)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return StoreFailure.TRANSIENT
    return _ENVIRONMENT.get(code & 0xFF, StoreFailure.TRANSIENT)


def status_path(db_path: Path) -> Path:
    """The sidecar file a running runtime publishes its status to."""
    return Path(str(db_path) + ".status.json")





class _OwnerLock:
    """``flock`` on a sidecar file; released by close or by the process's death."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                owner = json.loads(fh.read() or "{}")
            except ValueError:
                owner = {}
            fh.close()
            raise StoreLocked(str(self.path.with_suffix("")), owner) from None
        self._fh = fh
        self.write(info)

    def write(self, info: dict[str, Any]) -> None:
        assert self._fh is not None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(info))
        self._fh.flush()

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.truncate(0)
            self._fh.close()  # closing drops the flock
            self._fh = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_owner(path: Path) -> OwnerInfo | None:
    """The owner recorded in ``<db>.lock`` (emptied when a runtime closes), and if it lives."""
    try:
        text = Path(str(path) + ".lock").read_text()
        owner: dict[str, Any] = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return None
    if not owner:
        return None
    alive: bool | None = None
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int):
        alive = _pid_alive(pid)
    return OwnerInfo(boot_id=owner.get("boot_id") or None,
                     pid=pid if isinstance(pid, int) else None, host=owner.get("host"),
                     since=owner.get("since"), alive=alive)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class SQLiteStore:
    """`Store` over one SQLite file. Create with `SQLiteStore.open`, close with `aclose`."""

    liveness = Liveness.EXCLUSIVE

    def __init__(self, *, url: str, path: Path, reader: aiosqlite.Connection,
                 writer: sqlite3.Connection | None, lock: _OwnerLock | None) -> None:
        self.url = url
        self.path = path
        self._reader = reader
        self._writer = writer
        self._tx = SQLiteTx(writer) if writer is not None else None
        self._applier = Applier()
        self._lock = lock
        self._lock_info: dict[str, Any] = {}
        self._write_limiter = anyio.CapacityLimiter(1)
        self._checkpoint_limiter = anyio.CapacityLimiter(1)
        self._checkpointer: sqlite3.Connection | None = None
        self._published = False
        self.wal_limit = 16 * 1024 * 1024
        self.checkpoint_every = 0.5
        self._busy_timeout = 5.0
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) when opened

    @classmethod
    async def open(cls, url: str, *, readonly: bool = False, synchronous: str = "full",
                   busy_timeout: float = 5.0, wal_limit: int = 16 * 1024 * 1024,
                   checkpoint_every: float = 0.5) -> SQLiteStore:
        """Open (creating and migrating when writable) the store at ``url``.

        Raises:
            ConfigError: a bad URL, or ``synchronous`` not "full"/"normal".
            StoreLocked: another runtime holds this store.
            SchemaTooNew: the file was written by a newer syncward.
            StoreError: a read-only open of a file that does not exist or is not a store.
        """
        path = sqlite_path_from_url(url)
        if synchronous not in ("full", "normal"):
            raise ConfigError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if readonly:
            return await cls._open_readonly(url, path)
        lock = _OwnerLock(Path(str(path) + ".lock"))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        lock.acquire(info)
        try:
            writer = await anyio.to_thread.run_sync(
                cls._open_writer, path, synchronous, busy_timeout)
        except BaseException:
            lock.release()
            raise
        reader = await aiosqlite.connect(str(path), isolation_level=None)
        await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        store = cls(url=url, path=path, reader=reader, writer=writer, lock=lock)
        st = os.stat(path)
        store._identity = (st.st_dev, st.st_ino)
        store._lock_info = info
        store.wal_limit = wal_limit
        writer.execute(f"PRAGMA journal_size_limit = {int(wal_limit)}")
        store.checkpoint_every = checkpoint_every
        store._busy_timeout = busy_timeout
        return store

    @classmethod
    async def _open_readonly(cls, url: str, path: Path) -> SQLiteStore:
        if not await anyio.Path(path).exists():
            raise StoreError(f"store {path} does not exist")
        reader = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True,
                                         isolation_level=None)
        try:
            cur = await reader.execute("PRAGMA user_version")
            (version,) = await cur.fetchone() or (0,)
        except sqlite3.DatabaseError as exc:
            await reader.close()  # an unclosed aiosqlite thread keeps the process alive
            raise StoreError(f"store {path} cannot be read: {exc}") from exc
        if version > SCHEMA_VERSION:
            await reader.close()
            raise SchemaTooNew(str(path), version, SCHEMA_VERSION)
        if version < 1:
            await reader.close()
            raise StoreError(f"{path} is not a syncward store (no schema)")
        await reader.execute("PRAGMA busy_timeout = 5000")
        return cls(url=url, path=path, reader=reader, writer=None, lock=None)

    @staticmethod
    def _open_writer(path: Path, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout)
        try:
            # The version first: a file we refuse must not be switched to WAL.
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(str(path), version, SCHEMA_VERSION)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            # The runtime's checkpointer copies the WAL back off the commit path; a store
            # used without a runtime (CLI commands) checkpoints when it closes.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA cache_size = -32768")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"store {path} cannot be opened: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _statements(MIGRATIONS[target - 1]):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return conn

    async def attach(self, boot_id: str) -> None:
        """Record ``boot_id`` in the owner lock, so status can tell this boot's leases."""
        if self._lock is None:
            raise StoreError(f"store {self.path} is open read-only")
        self._lock_info = {**self._lock_info, "boot_id": boot_id}
        self._lock.write(self._lock_info)

    def housekeeping(self, hooks: StoreHooks) -> Sequence[tuple[str, Callable[[], Actor]]]:
        return [("checkpointer", lambda: Checkpointer(store=self, every=self.checkpoint_every))]

    # --- the write entry point -------------------------------------------------------

    async def apply(self, batch: Sequence[SyncerMsg], *, now: float,
                    lease: LeaseOrder | None = None, recount: bool = False,
                    dry_run: bool = False) -> ApplyResult:
        """See `syncward.store.base.Store.apply`.

        Raises:
            StoreError: the store was opened read-only.
            StoreUnavailable: the transaction failed and was rolled back (busy, locked, I/O
                error, disk full: worth retrying).
            sqlite3.Error: another database error (a constraint, a value out of range):
                retrying the same batch would fail the same way.
        """
        if self._tx is None:
            raise StoreError(f"store {self.path} is open read-only")
        try:
            return await anyio.to_thread.run_sync(
                self._apply_in_thread, self._tx, batch, now, lease, recount, dry_run,
                limiter=self._write_limiter,
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable("commit", exc, kind=failure_kind(exc)) from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:
                raise  # IntegrityError, DataError, ...: the batch's own fault
            raise StoreUnavailable("commit", exc, kind=StoreFailure.IO) from exc  # corrupt

    def _apply_in_thread(self, tx: SQLiteTx, batch: Sequence[SyncerMsg], now: float,
                         lease: LeaseOrder | None, recount: bool, dry_run: bool
                         ) -> ApplyResult:
        conn = tx.conn
        self._check_identity()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = run_to_completion(
                self._applier.apply(tx, batch, now=now, lease=lease, recount=recount))
            conn.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            tx.rolled_back()
            raise
        if dry_run:
            tx.rolled_back()
        if self.wal_size() > self.wal_limit:
            self._truncate_wal(conn)
        return result

    def _check_identity(self) -> None:
        """The file at the store's path is still the one that was opened.

        SQLite goes on writing to a file that was deleted (or renamed over) under it, and
        those commits are invisible to everybody else; every batch checks first (a stat).

        Raises:
            StoreUnavailable: of kind `StoreFailure.GONE`.
        """
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except FileNotFoundError:
            same = False
        if not same:
            raise StoreUnavailable("commit", FileNotFoundError(
                f"{self.path} is no longer the file this runtime opened"),
                kind=StoreFailure.GONE)

    def _truncate_wal(self, conn: sqlite3.Connection) -> None:
        """Start the WAL again after a commit (see the module docstring); never fails it."""
        try:
            conn.execute("PRAGMA busy_timeout = 200")
            try:
                conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except sqlite3.Error:
            pass  # a reader, a full disk: the next commit tries again

    async def checkpoint(self) -> None:
        """A PASSIVE WAL checkpoint on a connection of its own (never blocks the writer).

        Raises:
            StoreUnavailable: the checkpoint failed.
        """
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(str(self.path), isolation_level=None,
                                                 check_same_thread=False)
        try:
            await anyio.to_thread.run_sync(self._checkpointer.execute,
                                           "PRAGMA wal_checkpoint(PASSIVE)",
                                           limiter=self._checkpoint_limiter)
        except sqlite3.Error as exc:
            raise StoreUnavailable("checkpoint", exc, kind=failure_kind(exc)) from exc

    def wal_size(self) -> int:
        """The WAL file's size in bytes (0 when there is none)."""
        try:
            return Path(str(self.path) + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def set_max_page_count(self, pages: int) -> None:
        """Limit (or raise the limit of) the file's size, for disk-full drills."""
        if self._writer is not None:
            self._writer.execute(f"PRAGMA max_page_count = {int(pages)}")

    async def publish_status(self, status: dict[str, Any] | None) -> None:
        path = status_path(self.path)
        if status is None:
            if self._published:
                await anyio.to_thread.run_sync(_remove, path)
                self._published = False
            return
        await anyio.to_thread.run_sync(_write_json, path, status)
        self._published = True

    # --- reads -----------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # One call in the reader's thread: execute, fetch and close there. Awaiting the
        # three steps separately, a caller cancelled between them (an actor restarted)
        # left a statement open, and an open statement pins the connection's snapshot:
        # every later read on it saw the database as it was then.
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreUnavailable("read", exc, kind=failure_kind(exc)) from exc

    async def counts(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in await self._fetchall("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = n
        return counts

    async def get_job(self, key: str) -> JobRow | None:
        rows = await self._fetchall(f"SELECT {JOB_COLUMNS} FROM jobs WHERE key = ?",
                                    (bytes.fromhex(key),))
        return job_row(rows[0]) if rows else None

    async def get_op(self, op_key: str) -> str | None:
        rows = await self._fetchall("SELECT result FROM ops WHERE op_key = ?",
                                    (bytes.fromhex(op_key),))
        return str(rows[0][0]) if rows else None

    async def ops_count(self) -> tuple[int, int]:
        rows = await self._fetchall("SELECT count(*), count(DISTINCT op_key) FROM ops")
        return int(rows[0][0]), int(rows[0][1])

    async def jobs_in_state(self, state: JobState, *, limit: int | None = None,
                            after: int | None = None) -> list[JobRow]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? AND id > ? ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = await self._fetchall(sql, (state.value, after if after is not None else -1))
        return [job_row(r) for r in rows]

    async def expired_leases(self, now: float, *, limit: int) -> list[tuple[int, int]]:
        rows = await self._fetchall(
            "SELECT id, fence FROM jobs WHERE state = 'leased' AND lease_expires_at <= ?"
            " ORDER BY lease_expires_at LIMIT ?", (now, limit))
        return [(int(r[0]), int(r[1])) for r in rows]

    async def active_leases(self, *, limit: int = 100) -> list[LeaseRow]:
        rows = await self._fetchall(
            "SELECT id, key, fence, lease_owner, lease_boot, lease_expires_at, stage FROM jobs"
            " WHERE state = 'leased' ORDER BY lease_expires_at LIMIT ?", (limit,))
        return [LeaseRow(job_id=r[0], key=bytes(r[1]).hex(), fence=r[2], owner=r[3],
                         boot_id=r[4], expires_at=r[5], stage=r[6]) for r in rows]

    async def leased_jobs(self, boot_id: str, *, default_lease_seconds: float) -> list[Job]:
        rows = await self._fetchall(
            f"SELECT {LEASED_COLUMNS} FROM jobs"
            " WHERE state = 'leased' AND lease_boot = ? ORDER BY id", (boot_id,))
        return [leased_job(r, default_lease_seconds) for r in rows]

    async def next_due(self, *, limited: bool = True) -> float | None:
        # One minimum per partial index of planned jobs (a plain min over all planned
        # jobs would find no index to use and scan them).
        sql = ("SELECT min(m) FROM (SELECT min(next_attempt_at) AS m FROM jobs"
               " WHERE state = 'planned' AND priority = 0 AND limit_key IS NULL"
               " UNION ALL SELECT min(next_attempt_at) FROM jobs"
               f" WHERE {STEERED} AND limit_key IS NULL")
        if limited:
            sql += (" UNION ALL SELECT min(next_attempt_at) FROM jobs"
                    f" WHERE {STEERED} AND limit_key IS NOT NULL")
        rows = await self._fetchall(sql + ")")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def retrying_count(self, *, limit: int = 10_000) -> int:
        rows = await self._fetchall(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'planned' AND attempts > 0"
            " LIMIT ?)", (limit,))
        return int(rows[0][0])

    async def workers(self) -> list[WorkerRow]:
        rows = await self._fetchall(
            "SELECT name, boot_id, pid, host, status, started_at, heartbeat_at FROM workers"
            " ORDER BY started_at")
        return [WorkerRow(*r) for r in rows]

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def events(self, *, kind: str | None = None, limit: int = 50) -> list[EventRow]:
        sql = "SELECT at, kind, detail FROM events"
        params: tuple[Any, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            params = (kind,)
        rows = await self._fetchall(sql + f" ORDER BY id DESC LIMIT {int(limit)}", params)
        return [EventRow(at=r[0], kind=r[1], detail=json.loads(r[2])) for r in rows]

    async def rejection_count(self) -> int:
        rows = await self._fetchall("SELECT count(*) FROM rejections")
        return int(rows[0][0])

    async def latest_run(self) -> int | None:
        rows = await self._fetchall("SELECT max(id) FROM runs")
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def run_info(self, run_id: int) -> RunInfo | None:
        rows = await self._fetchall(
            "SELECT id, source, options, status, started_at, finished_at FROM runs"
            " WHERE id = ?", (run_id,))
        if not rows:
            return None
        r = rows[0]
        return RunInfo(id=int(r[0]), source=r[1], options=json.loads(r[2]), status=r[3],
                       started_at=r[4], finished_at=r[5])

    async def run_rejects(self, run_id: int) -> list[RunReject]:
        rows = await self._fetchall(
            "SELECT line, reason, raw FROM run_rejects WHERE run_id = ? ORDER BY line",
            (run_id,))
        return [RunReject(line=r[0], reason=r[1], raw=r[2]) for r in rows]

    async def run_states(self, run_id: int) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        rows = await self._fetchall(
            "SELECT j.state, count(*) FROM (SELECT DISTINCT key FROM run_entries"
            " WHERE run_id = ?) e JOIN jobs j ON j.key = e.key GROUP BY j.state", (run_id,))
        for state, n in rows:
            counts[JobState(state)] = int(n)
        return counts

    async def compare_run(self, run_id: int) -> ManifestComparison:
        (entries, distinct), = await self._fetchall(
            "SELECT count(*), count(DISTINCT key) FROM run_entries WHERE run_id = ?", (run_id,))
        missing = await self._fetchall(
            "SELECT e.line FROM run_entries e LEFT JOIN jobs j ON j.key = e.key"
            " WHERE e.run_id = ? AND j.id IS NULL ORDER BY e.line", (run_id,))
        terminal = ",".join(f"'{s.value}'" for s in TERMINAL)
        (not_terminal,), = await self._fetchall(
            "SELECT count(DISTINCT e.key) FROM run_entries e JOIN jobs j ON j.key = e.key"
            f" WHERE e.run_id = ? AND j.state NOT IN ({terminal})", (run_id,))
        return ManifestComparison(
            entries=int(entries), distinct=int(distinct),
            missing=[{"line": int(r[0])} for r in missing], not_terminal=int(not_terminal))

    async def key_states(self, keys: Sequence[str]) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._fetchall(f"SELECT key, state FROM jobs WHERE key IN ({marks})",
                                        [bytes.fromhex(k) for k in chunk])
            states.update((bytes(r[0]).hex(), JobState(r[1])) for r in rows)
        return states

    async def owners(self) -> list[OwnerInfo]:
        owner = await anyio.to_thread.run_sync(_lock_owner, self.path)
        return [] if owner is None else [owner]

    async def published_status(self, boot_id: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            try:
                data: dict[str, Any] = json.loads(status_path(self.path).read_text())
            except (OSError, ValueError):
                return None
            return data if data.get("boot_id") == boot_id else None
        return await anyio.to_thread.run_sync(read)

    async def last_write_at(self) -> float | None:
        """The modification time of the database or its WAL (every commit writes one)."""
        def newest() -> float | None:
            times = []
            for candidate in (self.path, Path(str(self.path) + "-wal")):
                with contextlib.suppress(OSError):
                    times.append(candidate.stat().st_mtime)
            return max(times) if times else None
        return await anyio.to_thread.run_sync(newest)

    async def aclose(self) -> None:
        """Close both connections and release the owner lock. Idempotent."""
        with contextlib.suppress(Exception):
            await self.publish_status(None)
        with contextlib.suppress(Exception):
            await self._reader.close()
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(checkpointer.close,
                                               limiter=self._checkpoint_limiter)
        if self._writer is not None:
            writer, self._writer, self._tx = self._writer, None, None
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(_checkpoint_and_close, writer,
                                               limiter=self._write_limiter)
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _checkpoint_and_close(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (they contain no literal semicolons)."""
    return [s.strip() for s in script.split(";") if s.strip()]
