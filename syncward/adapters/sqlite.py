"""The embedded default store: one SQLite file in WAL mode.

Owns: the write connection (used only by `apply`, i.e. only by the syncer), a read
connection through aiosqlite, and, for a writable store, the OS-level owner lock.

Durability: ``synchronous=FULL`` by default. "Acknowledged after commit" must survive an
OS crash or a power cut, which WAL with NORMAL does not promise (the last transactions
may roll back); ``synchronous="normal"`` is an explicit opt-in fast mode.

One owner: a writable store holds ``flock(LOCK_EX)`` on ``<db>.lock`` for as long as it
is open, and writes its pid, host and start time there. The kernel drops the lock when
the process dies, however it dies, so a lock that can be taken proves that no earlier
owner is alive; its leases are stale at once. Read-only stores take no lock.
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

from syncward.adapters._sqlite_apply import BatchApplier
from syncward.adapters._sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from syncward.adapters.base import JobRow, LeaseRow, ManifestComparison, WorkerRow
from syncward.errors import ConfigError, SchemaTooNew, StoreError, StoreLocked, StoreUnavailable
from syncward.jobs import TERMINAL, Job, JobState

if TYPE_CHECKING:
    from collections.abc import Sequence

    from syncward.messages import ApplyResult, LeaseOrder, SyncerMsg

__all__ = ["SQLiteStore", "sqlite_path_from_url"]

_JOB_COLS = (
    "id, key, identity, payload, state, stage, attempts, max_attempts, next_attempt_at,"
    " lease_owner, lease_expires_at, fence, last_error, result, created_at, updated_at"
)


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


def _row_to_job(r: Sequence[Any]) -> JobRow:
    return JobRow(
        id=r[0], key=bytes(r[1]).hex(), identity=json.loads(r[2]), payload=json.loads(r[3]),
        state=JobState(r[4]), stage=r[5], attempts=r[6], max_attempts=r[7],
        next_attempt_at=r[8], lease_owner=r[9], lease_expires_at=r[10], fence=r[11],
        last_error=r[12], result=json.loads(r[13]) if r[13] is not None else None,
        created_at=r[14], updated_at=r[15],
    )


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
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(info))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.truncate(0)
            self._fh.close()  # closing drops the flock
            self._fh = None


class SQLiteStore:
    """`Store` over one SQLite file. Create with `SQLiteStore.open`, close with `aclose`."""

    def __init__(self, *, url: str, path: Path, reader: aiosqlite.Connection,
                 writer: sqlite3.Connection | None, lock: _OwnerLock | None) -> None:
        self.url = url
        self.path = path
        self._reader = reader
        self._writer = writer
        self._applier = BatchApplier(writer) if writer is not None else None
        self._lock = lock
        self._write_limiter = anyio.CapacityLimiter(1)
        self._checkpoint_limiter = anyio.CapacityLimiter(1)
        self._checkpointer: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, url: str, *, readonly: bool = False, synchronous: str = "full",
                   busy_timeout: float = 5.0, boot_id: str = "") -> SQLiteStore:
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
        lock.acquire({"pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "boot_id": boot_id})
        try:
            writer = await anyio.to_thread.run_sync(
                cls._open_writer, path, synchronous, busy_timeout)
        except BaseException:
            lock.release()
            raise
        reader = await aiosqlite.connect(str(path), isolation_level=None)
        await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        return cls(url=url, path=path, reader=reader, writer=writer, lock=lock)

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

    # --- the write entry point -------------------------------------------------------

    async def apply(self, batch: Sequence[SyncerMsg], *, now: float,
                    lease: LeaseOrder | None = None, recount: bool = False,
                    dry_run: bool = False) -> ApplyResult:
        """See `syncward.adapters.base.Store.apply`.

        Raises:
            StoreError: the store was opened read-only.
            StoreUnavailable: the transaction failed and was rolled back (busy, locked, I/O
                error, disk full: worth retrying).
            sqlite3.Error: another database error (a constraint, a value out of range):
                retrying the same batch would fail the same way.
        """
        if self._applier is None:
            raise StoreError(f"store {self.path} is open read-only")
        applier = self._applier
        try:
            return await anyio.to_thread.run_sync(
                applier.apply, batch, now, lease, recount, dry_run,
                limiter=self._write_limiter,
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable("commit", exc) from exc

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
            raise StoreUnavailable("checkpoint", exc) from exc

    def set_max_page_count(self, pages: int) -> None:
        """Limit (or raise the limit of) the file's size, for disk-full drills."""
        if self._writer is not None:
            self._writer.execute(f"PRAGMA max_page_count = {int(pages)}")

    # --- reads -----------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            cur = await self._reader.execute(sql, params)
            rows = await cur.fetchall()
            await cur.close()
            return list(rows)
        except sqlite3.Error as exc:
            raise StoreUnavailable("read", exc) from exc

    async def counts(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in await self._fetchall("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = n
        return counts

    async def get_job(self, key: str) -> JobRow | None:
        rows = await self._fetchall(f"SELECT {_JOB_COLS} FROM jobs WHERE key = ?",
                                    (bytes.fromhex(key),))
        return _row_to_job(rows[0]) if rows else None

    async def get_op(self, op_key: str) -> str | None:
        rows = await self._fetchall("SELECT result FROM ops WHERE op_key = ?",
                                    (bytes.fromhex(op_key),))
        return str(rows[0][0]) if rows else None

    async def ops_count(self) -> tuple[int, int]:
        """(rows in the operation ledger, distinct op keys) — equal by the UNIQUE constraint."""
        rows = await self._fetchall("SELECT count(*), count(DISTINCT op_key) FROM ops")
        return int(rows[0][0]), int(rows[0][1])

    async def jobs_in_state(self, state: JobState, *, limit: int | None = None) -> list[JobRow]:
        sql = f"SELECT {_JOB_COLS} FROM jobs WHERE state = ? ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_to_job(r) for r in await self._fetchall(sql, (state.value,))]

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
        """The jobs leased to ``boot_id``, as a downloader would receive them."""
        rows = await self._fetchall(
            "SELECT id, key, identity, payload, attempts, max_attempts, stage, fence,"
            " lease_seconds, timeout, lease_expires_at FROM jobs"
            " WHERE state = 'leased' AND lease_boot = ? ORDER BY id", (boot_id,))
        return [Job(id=r[0], key=bytes(r[1]).hex(), identity=json.loads(r[2]),
                    payload=json.loads(r[3]), attempt=r[4], max_attempts=r[5], stage=r[6],
                    fence=r[7], lease_seconds=r[8] if r[8] is not None else default_lease_seconds,
                    lease_expires_at=r[10], timeout=r[9]) for r in rows]

    async def next_due(self) -> float | None:
        rows = await self._fetchall(
            "SELECT min(next_attempt_at) FROM jobs WHERE state = 'planned'")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def workers(self) -> list[WorkerRow]:
        rows = await self._fetchall(
            "SELECT name, boot_id, pid, host, status, started_at, heartbeat_at FROM workers"
            " ORDER BY started_at")
        return [WorkerRow(*r) for r in rows]

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def events(self, *, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        sql = "SELECT at, kind, detail FROM events"
        params: tuple[Any, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            params = (kind,)
        rows = await self._fetchall(sql + f" ORDER BY id DESC LIMIT {int(limit)}", params)
        return [{"at": r[0], "kind": r[1], **json.loads(r[2])} for r in rows]

    async def rejection_count(self) -> int:
        rows = await self._fetchall("SELECT count(*) FROM rejections")
        return int(rows[0][0])

    async def latest_run(self) -> int | None:
        rows = await self._fetchall("SELECT max(id) FROM runs")
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def run_rejects(self, run_id: int) -> list[dict[str, Any]]:
        rows = await self._fetchall(
            "SELECT line, reason, raw FROM run_rejects WHERE run_id = ? ORDER BY line",
            (run_id,))
        return [{"line": r[0], "reason": r[1], "raw": r[2]} for r in rows]

    async def compare_run(self, run_id: int) -> ManifestComparison:
        """Compare a run's manifest entries with the jobs table."""
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

    async def keys_present(self, keys: Sequence[str]) -> set[str]:
        """Which of these job keys have a job (for comparing a manifest file)."""
        present: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._fetchall(f"SELECT key FROM jobs WHERE key IN ({marks})",
                                        [bytes.fromhex(k) for k in chunk])
            present.update(bytes(r[0]).hex() for r in rows)
        return present

    async def aclose(self) -> None:
        """Close both connections and release the owner lock. Idempotent."""
        with contextlib.suppress(Exception):
            await self._reader.close()
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(checkpointer.close,
                                               limiter=self._checkpoint_limiter)
        if self._writer is not None:
            writer, self._writer, self._applier = self._writer, None, None
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(_checkpoint_and_close, writer,
                                               limiter=self._write_limiter)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- reads for the command line (status, report, progress) -----------------------

    async def run_info(self, run_id: int) -> dict[str, Any] | None:
        """A run's record: id, source, options, status, started_at, finished_at."""
        rows = await self._fetchall(
            "SELECT id, source, options, status, started_at, finished_at FROM runs"
            " WHERE id = ?", (run_id,))
        if not rows:
            return None
        r = rows[0]
        return {"id": int(r[0]), "source": r[1], "options": json.loads(r[2]), "status": r[3],
                "started_at": r[4], "finished_at": r[5]}

    async def run_states(self, run_id: int) -> dict[JobState, int]:
        """A run's distinct manifest keys counted by their job's state (no job: not counted)."""
        counts = dict.fromkeys(JobState, 0)
        rows = await self._fetchall(
            "SELECT j.state, count(*) FROM (SELECT DISTINCT key FROM run_entries"
            " WHERE run_id = ?) e JOIN jobs j ON j.key = e.key GROUP BY j.state", (run_id,))
        for state, n in rows:
            counts[JobState(state)] = int(n)
        return counts

    async def key_states(self, keys: Sequence[str]) -> dict[str, JobState]:
        """The state of each of these job keys that has a job (absent keys are left out)."""
        states: dict[str, JobState] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._fetchall(f"SELECT key, state FROM jobs WHERE key IN ({marks})",
                                        [bytes.fromhex(k) for k in chunk])
            states.update((bytes(r[0]).hex(), JobState(r[1])) for r in rows)
        return states

    async def retrying_count(self, *, limit: int = 10_000) -> int:
        """Planned jobs that have failed an attempt (waiting to retry), counted up to ``limit``."""
        rows = await self._fetchall(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'planned' AND attempts > 0"
            " LIMIT ?)", (limit,))
        return int(rows[0][0])


def _checkpoint_and_close(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (they contain no literal semicolons)."""
    return [s.strip() for s in script.split(";") if s.strip()]
