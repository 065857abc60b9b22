"""The write port over one sqlite3 connection: plain SQL, no rules.

Every method runs synchronously on the calling thread and never suspends (see
`syncward.store.port`): `SQLiteStore.apply` runs the applier in one worker thread,
inside ``BEGIN IMMEDIATE`` … ``COMMIT``.

SQLite is an exclusive store (one runtime holds its OS lock), so every boot but the
caller's is dead, and a lookup followed by an insert cannot race another writer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from syncward.jobs import JobState
from syncward.store.apply import LOST_STATE_SQL, MAX_LOST_LISTED, lost_note_sql
from syncward.store.port import DueRow, FencedRow, LostLeases

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Collection, Iterable, Sequence

    from syncward.messages import LeaseOrder
    from syncward.store.port import (
        FinalWrite,
        ImportRow,
        InsertJob,
        OpWrite,
        ReleaseWrite,
        RenewWrite,
        RequeueWrite,
        SkipWrite,
        StageWrite,
    )

__all__ = ["SQLiteTx"]


def _owner(order: LeaseOrder) -> tuple[str, str, float]:
    return order.owner, order.boot_id, order.default_lease_seconds

_CHUNK = 500
_STATE = {s.value: s for s in JobState}


def _due_order(row: DueRow) -> tuple[float, int]:
    return row.rank


#: The planned jobs with a priority or a limit key: the predicate of their index, written
#: out in every query that reads it (SQLite uses a partial index only then).
STEERED = "state = 'planned' AND (priority != 0 OR limit_key IS NOT NULL)"
#: Due planned jobs in rank order from each part of the two disjoint partial indexes (see
#: the schema's version 3); ``?1`` is now, ``?2`` how many. The limited ones come in here
#: only where no limits are declared (they are then leased like any other).
_DUE = (
    "SELECT id, r FROM (SELECT id, next_attempt_at AS r FROM jobs"
    " WHERE state = 'planned' AND priority = 0 AND limit_key IS NULL"
    " AND next_attempt_at <= ?1 ORDER BY next_attempt_at, id LIMIT ?2)"
    " UNION ALL SELECT id, r FROM (SELECT id, next_attempt_at - priority AS r FROM jobs"
    f" WHERE {STEERED} AND limit_key IS NULL"
    " AND next_attempt_at <= ?1 ORDER BY next_attempt_at - priority, id LIMIT ?2)")
_DUE_LIMITED = (
    " UNION ALL SELECT id, r FROM (SELECT id, next_attempt_at - priority AS r FROM jobs"
    f" WHERE {STEERED} AND limit_key IS NOT NULL"
    " AND next_attempt_at <= ?1 ORDER BY next_attempt_at - priority, id LIMIT ?2)")
_DUE_PLAIN = ("SELECT id FROM jobs WHERE state = 'planned' AND priority = 0"
              " AND limit_key IS NULL AND next_attempt_at <= ?1"
              " ORDER BY next_attempt_at, id LIMIT ?2")
_LEASE = (
    "UPDATE jobs SET state = 'leased', lease_owner = ?3, lease_boot = ?4,"
    " lease_expires_at = ?1 + coalesce(lease_seconds, ?5), fence = fence + 1,"
    " attempts = attempts + 1, updated_at = ?1 WHERE id IN ({ids})"
    " RETURNING id, key, identity, payload, attempts, max_attempts, stage, fence,"
    " lease_seconds, timeout, next_attempt_at, priority")
_LEASE_IDS = _LEASE.format(ids="SELECT value FROM json_each(?2)")
_INSERT = ("INSERT OR IGNORE INTO jobs (key, identity, payload, state, max_attempts,"
           " next_attempt_at, lease_seconds, timeout, created_by, created_at, updated_at)"
           " VALUES (?1, ?2, ?3, 'planned', ?4, ?5, ?6, ?7, ?8, ?9, ?9)")
_INSERT_STEERED = ("INSERT OR IGNORE INTO jobs (key, identity, payload, state, max_attempts,"
                   " next_attempt_at, lease_seconds, timeout, created_by, created_at,"
                   " updated_at, priority, limit_key)"
                   " VALUES (?1, ?2, ?3, 'planned', ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)")


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


class SQLiteTx:
    """`WriteTx` over the writer connection, inside a transaction the store opened."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._plain: bool | None = None  # see `plain`

    # --- the 'steered' mark --------------------------------------------------------------

    def plain(self) -> bool:
        """No job of this store has ever had a priority or a limit key (the meta row
        'steered' is absent): every planned job is in the plain due index, and leasing
        reads that one alone. The mark is written in the transaction that inserts the
        first such job, so it is never missing while one exists; it is never removed."""
        if self._plain is None:
            self._plain = self.conn.execute(
                "SELECT 1 FROM meta WHERE key = 'steered'").fetchone() is None
        return self._plain

    def _steered(self) -> None:
        if self.plain():
            self.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('steered', '1')")
            self._plain = False  # until a rollback: see `rolled_back`

    def rolled_back(self) -> None:
        """The transaction was rolled back: a mark it wrote is gone, so read it again
        (kept False, a later steered insert would not write it, and a reopened store
        would lease from the plain index alone)."""
        self._plain = None

    # --- jobs ----------------------------------------------------------------------------

    async def load(self, ids: Collection[int]) -> list[FencedRow]:
        rows: list[FencedRow] = []
        state = _STATE
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            rows.extend(
                FencedRow(r[0], state[r[1]], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
                for r in self.conn.execute(
                    "SELECT id, state, fence, attempts, max_attempts, stage, lease_expires_at,"
                    f" key, ended_fence, ended_by FROM jobs WHERE id IN ({marks})",
                    chunk))
        return rows

    async def creators(self, keys: Sequence[bytes]) -> dict[bytes, int | None]:
        found: dict[bytes, int | None] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(
                f"SELECT key, created_by FROM jobs WHERE key IN ({marks})", chunk).fetchall())
        return found

    async def insert_jobs(self, rows: Sequence[InsertJob]) -> set[bytes]:
        # One writer and keys looked up in this transaction: every row here is new. Rows
        # with neither a priority nor a limit key leave those columns to their defaults
        # (binding them costs a few per cent of an insert).
        if any(r[9] or r[10] is not None for r in rows):
            self._steered()
            self.conn.executemany(_INSERT_STEERED, rows)
        else:
            self.conn.executemany(_INSERT, [r[:9] for r in rows])
        return {r[0] for r in rows}

    async def existing(self, keys: Sequence[bytes]) -> dict[bytes, tuple[JobState, int | None]]:
        found: dict[bytes, tuple[JobState, int | None]] = {}
        state = _STATE
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            for key, st, token in self.conn.execute(
                    f"SELECT key, state, created_by FROM jobs WHERE key IN ({marks})", chunk):
                found[bytes(key)] = (state[st], token)
        return found

    async def insert_imported(self, rows: Sequence[ImportRow]) -> set[bytes]:
        # Columns named: the ones not named (added by later migrations too) take their
        # defaults. One writer and keys looked up in this transaction: every row is new.
        self.conn.executemany(
            "INSERT OR IGNORE INTO jobs (key, identity, payload, state, result, last_error,"
            " attempts, max_attempts, next_attempt_at, created_by, created_at, updated_at,"
            " limit_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
            rows)
        if any(r[11] is not None for r in rows):
            self._steered()
        return {r[0] for r in rows}

    async def insert_run_entries(self, entries: Sequence[tuple[int, int, bytes]]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO run_entries (run_id, line, key) VALUES (?, ?, ?)", entries)

    async def renew(self, writes: Sequence[RenewWrite]) -> None:
        self.conn.executemany(
            "UPDATE jobs SET lease_expires_at = ?, updated_at = ?"
            " WHERE id = ? AND fence = ? AND state = 'leased'", writes)

    async def set_stages(self, writes: Sequence[StageWrite]) -> None:
        self.conn.executemany(
            "UPDATE jobs SET stage = ?, updated_at = ? WHERE id = ? AND fence = ?", writes)

    async def finish(self, writes: Sequence[FinalWrite]) -> None:
        self.conn.executemany(
            "UPDATE jobs SET state = ?, result = ?, last_error = ?, next_attempt_at = ?,"
            " attempts = ?, ended_fence = ?, ended_by = ?, lease_owner = NULL,"
            " lease_boot = NULL, lease_expires_at = NULL, updated_at = ? WHERE id = ?", writes)

    async def release(self, writes: Sequence[ReleaseWrite]) -> None:
        self.conn.executemany(
            "UPDATE jobs SET state = 'planned', attempts = ?, next_attempt_at = ?,"
            " ended_fence = ?, ended_by = 'released', lease_owner = NULL,"
            " lease_boot = NULL, lease_expires_at = NULL, updated_at = ? WHERE id = ?", writes)

    async def lease_due(self, order: LeaseOrder, now: float) -> list[DueRow]:
        if self.plain():
            ids = _DUE_PLAIN
        else:
            ids = f"SELECT id FROM ({_DUE}{_DUE_LIMITED}) ORDER BY r, id LIMIT ?2"
        return self._lease(_LEASE.format(ids=ids), (now, order.n, *_owner(order)))

    def _lease(self, sql: str, params: Sequence[Any]) -> list[DueRow]:
        rows = [DueRow(*r) for r in self.conn.execute(sql, params)]
        rows.sort(key=_due_order)  # RETURNING keeps no order
        return rows

    async def limit_usage(self, keys: Sequence[str]
                          ) -> dict[str, tuple[int, float | None, float | None]]:
        usage: dict[str, tuple[int, float | None, float | None]] = {}
        for chunk in _chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            for key, tat, held in self.conn.execute(
                    f"SELECT key, tat, held_until FROM limit_state WHERE key IN ({marks})",
                    chunk):
                usage[key] = (0, tat, held)
            for key, n in self.conn.execute(
                    "SELECT limit_key, count(*) FROM jobs WHERE state = 'leased'"
                    f" AND limit_key IS NOT NULL AND limit_key IN ({marks}) GROUP BY limit_key",
                    chunk):
                _, tat, held = usage.get(key, (0, None, None))
                usage[key] = (n, tat, held)
        return usage

    async def planned_limit_keys(self) -> list[str]:
        # A loose index scan: one seek per distinct key, not a walk over every planned job.
        keys: list[str] = []
        after = ""
        while True:
            (key,) = self.conn.execute(
                f"SELECT min(limit_key) FROM jobs WHERE {STEERED} AND limit_key > ?",
                (after,)).fetchone()
            if key is None:
                return keys
            keys.append(key)
            after = key

    async def due_ids(self, now: float, key: str | None, n: int, *,
                      after: tuple[float, int] | None = None) -> list[tuple[float, int]]:
        if key is None:
            assert after is None
            return [(r, i) for i, r in self.conn.execute(
                f"SELECT id, r FROM ({_DUE}) ORDER BY r, id LIMIT ?2", (now, n))]
        # The page's bound as a range on the index's rank column (then the id among ties),
        # so it seeks instead of reading the key's earlier pages again.
        page = "" if after is None else (" AND next_attempt_at - priority >= ?4 AND"
                                         " (next_attempt_at - priority > ?4 OR id > ?5)")
        return [(r, i) for i, r in self.conn.execute(
            f"SELECT id, next_attempt_at - priority FROM jobs WHERE {STEERED}"
            f" AND limit_key = ?3 AND next_attempt_at <= ?1{page}"
            " ORDER BY next_attempt_at - priority, id LIMIT ?2",
            (now, n, key, *(after or ())))]

    async def lease_ids(self, order: LeaseOrder, now: float,
                        ids: Sequence[int]) -> list[DueRow]:
        # The ids as one JSON parameter: one statement text, prepared once and cached,
        # however many ids (a list of literals would be parsed again every time).
        return self._lease(_LEASE_IDS, (now, json.dumps(list(ids)), *_owner(order)))

    async def save_limits(self, rows: Sequence[tuple[str, float | None, float | None]]
                          ) -> None:
        self.conn.executemany(
            "INSERT INTO limit_state (key, tat, held_until) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET tat = excluded.tat,"
            " held_until = excluded.held_until", rows)

    async def hold_limits(self, rows: Sequence[tuple[int, float]]) -> None:
        self.conn.executemany(
            "INSERT INTO limit_state (key, held_until) SELECT limit_key, ?2 FROM jobs"
            " WHERE id = ?1 AND limit_key IS NOT NULL ON CONFLICT (key) DO UPDATE SET"
            " held_until = max(coalesce(held_until, excluded.held_until),"
            " excluded.held_until)", rows)

    async def requeue_candidates(self, state: JobState, keys: Sequence[bytes] | None,
                                 decided_at: float) -> list[int]:
        if keys is None:
            return [r[0] for r in self.conn.execute(
                "SELECT id FROM jobs WHERE state = ? AND updated_at <= ? ORDER BY id",
                (state.value, decided_at))]
        ids: list[int] = []
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            ids.extend(r[0] for r in self.conn.execute(
                f"SELECT id FROM jobs WHERE key IN ({marks}) AND state = ? AND updated_at <= ?",
                (*chunk, state.value, decided_at)))
        return sorted(ids)

    async def requeue(self, writes: Sequence[RequeueWrite]) -> None:
        self.conn.executemany(
            "UPDATE jobs SET state = 'planned', attempts = 0, next_attempt_at = ?,"
            " result = NULL, updated_at = ? WHERE id = ?", writes)

    async def cancel_candidates(self, states: Collection[JobState],
                                keys: Sequence[bytes] | None,
                                created_before: float) -> list[FencedRow]:
        ids: list[int] = []
        if keys is None:
            marks = ",".join("?" * len(states))
            ids = [r[0] for r in self.conn.execute(
                f"SELECT id FROM jobs WHERE state IN ({marks}) AND created_at <= ?",
                (*(s.value for s in states), created_before))]
        else:
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                ids.extend(r[0] for r in self.conn.execute(
                    f"SELECT id FROM jobs WHERE key IN ({marks})", chunk))
        return sorted(await self.load(ids), key=lambda row: row.id)

    async def skip_planned(self, writes: Sequence[SkipWrite]) -> None:
        self.conn.executemany(
            "UPDATE jobs SET state = 'skipped', last_error = ?1, ended_by = ?1, updated_at = ?2"
            " WHERE id = ?3 AND state = 'planned'", writes)

    async def count_by_state(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in self.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[_STATE[state]] = n
        return counts

    async def count_checked(self) -> tuple[dict[JobState, int], dict[JobState, int]]:
        counts = await self.count_by_state()  # the totals are the rows: one scan
        return counts, dict(counts)

    async def record_deltas(self, deltas: dict[JobState, int]) -> None:
        return None  # counts are taken from the rows: nothing to keep

    async def record_ops(self, writes: Sequence[OpWrite]) -> dict[bytes, tuple[str, bool]]:
        found: dict[bytes, tuple[str, bool]] = {}
        for chunk in _chunks([w[0] for w in writes]):
            marks = ",".join("?" * len(chunk))
            for key, result in self.conn.execute(
                    f"SELECT op_key, result FROM ops WHERE op_key IN ({marks})", chunk):
                found[bytes(key)] = (result, False)
        new = [w for w in writes if w[0] not in found]
        self.conn.executemany(
            "INSERT INTO ops (op_key, job_id, kind, result, committed_at) VALUES (?, ?, ?, ?, ?)",
            new)
        for w in new:
            found[w[0]] = (w[3], True)
        return found

    async def reject(self, rows: Sequence[tuple[float, int | None, str, str]]) -> None:
        self.conn.executemany(
            "INSERT INTO rejections (at, job_id, message, reason) VALUES (?, ?, ?, ?)", rows)

    # --- liveness: one owner, so every other boot is dead ------------------------------

    async def lose_leases(self, boot_id: str, now: float, why: str, *,
                          dry_run: bool) -> LostLeases:
        where = "state = 'leased' AND (lease_boot IS NULL OR lease_boot != ?)"
        note = lost_note_sql(why)
        listed = [(bytes(key), text) for key, text in self.conn.execute(
            f"SELECT key, {note} FROM jobs WHERE {where} ORDER BY id LIMIT ?",
            (boot_id, MAX_LOST_LISTED))]
        if dry_run:
            (total, failed), = self.conn.execute(
                "SELECT count(*), coalesce(sum(attempts >= max_attempts), 0) FROM jobs"
                f" WHERE {where}", (boot_id,))
            return LostLeases(requeued=total - failed, failed=failed, listed=listed)
        (failed,), = self.conn.execute(
            f"SELECT count(*) FROM jobs WHERE {where} AND attempts >= max_attempts", (boot_id,))
        total = self.conn.execute(
            f"UPDATE jobs SET state = {LOST_STATE_SQL}, last_error = {note},"
            " ended_fence = fence, ended_by = 'lost', lease_owner = NULL, lease_boot = NULL,"
            f" lease_expires_at = NULL, next_attempt_at = ?, updated_at = ? WHERE {where}",
            (now, now, boot_id)).rowcount
        return LostLeases(requeued=total - failed, failed=failed, listed=listed)

    async def dead_workers(self, boot_id: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT name FROM workers WHERE boot_id != ? AND status NOT IN ('dead', 'stopped')"
            " ORDER BY started_at", (boot_id,))]

    async def interrupt_runs(self, boot_id: str, now: float, *, dry_run: bool) -> int:
        where = "status = 'running' AND (boot_id IS NULL OR boot_id != ?)"
        if dry_run:
            (n,) = self.conn.execute(f"SELECT count(*) FROM runs WHERE {where}",
                                     (boot_id,)).fetchone()
            return int(n)
        return self.conn.execute(
            f"UPDATE runs SET status = 'interrupted', finished_at = ? WHERE {where}",
            (now, boot_id)).rowcount

    # --- workers, runs, events, metadata -------------------------------------------------

    async def worker_by_boot(self, boot_id: str) -> str | None:
        row = self.conn.execute("SELECT name FROM workers WHERE boot_id = ?",
                                (boot_id,)).fetchone()
        return None if row is None else str(row[0])

    async def next_worker_number(self) -> int:
        self.conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'worker_seq'")
        (seq,) = self.conn.execute("SELECT value FROM meta WHERE key = 'worker_seq'").fetchone()
        return int(seq)

    async def insert_worker(self, name: str, boot_id: str, pid: int, host: str,
                            now: float) -> None:
        self.conn.execute(
            "INSERT INTO workers (name, boot_id, pid, host, status, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, 'running', ?, ?)", (name, boot_id, pid, host, now, now))

    async def set_worker_status(self, names: Sequence[str], status: str, now: float) -> None:
        self.conn.executemany("UPDATE workers SET status = ?, heartbeat_at = ? WHERE name = ?",
                              [(status, now, name) for name in names])

    async def insert_event(self, at: float, kind: str, detail: str) -> None:
        self.conn.execute("INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)",
                          (at, kind, detail))

    async def start_run(self, token: str, source: str, options: str, boot_id: str,
                        now: float) -> int:
        self.conn.execute(
            "INSERT OR IGNORE INTO runs (token, source, options, status, started_at, boot_id)"
            " VALUES (?, ?, ?, 'running', ?, ?)", (token, source, options, now, boot_id or None))
        (run_id,) = self.conn.execute("SELECT id FROM runs WHERE token = ?",
                                      (token,)).fetchone()
        return int(run_id)

    async def insert_run_rejects(self, rows: Sequence[tuple[int, int, str, str]]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO run_rejects (run_id, line, reason, raw) VALUES (?, ?, ?, ?)",
            rows)

    async def finish_run(self, run_id: int, status: str, now: float) -> None:
        self.conn.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                          (status, now, run_id))

    async def set_meta(self, key: str, value: str, *, only_if_absent: bool) -> str:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
            + ("NOTHING" if only_if_absent else "UPDATE SET value = excluded.value"),
            (key, value))
        (stored,) = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(stored)
