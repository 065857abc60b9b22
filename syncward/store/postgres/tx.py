"""The write port over one asyncpg connection, inside a transaction the store opened.

Plain SQL, no rules (those are in `syncward.store.apply`). Several processes write the
same tables, so where SQLite can rely on being the only writer this cannot:

* rows a batch checks in memory are locked for the transaction (``FOR UPDATE``, in id
  order, so two writers lock in the same order), and every write repeats the fence in
  its ``WHERE``;
* due jobs are claimed with ``FOR UPDATE SKIP LOCKED``: two processes never lease the same
  row, and neither waits for the other;
* inserts say which rows they inserted (``ON CONFLICT DO NOTHING RETURNING``) instead of
  trusting a lookup another writer may have raced;
* the lost-lease rule runs only on leases whose boot holds no advisory lock: its process
  is gone (see `syncward.store.postgres.store`).

Bulk writes are one statement over ``unnest`` arrays. An ``UPDATE … FROM unnest`` applies
one source row per target row, so writes are made unique per job first (the last one
wins, as in a sequence of statements). Text columns cannot hold NUL in PostgreSQL; free
text (errors, stages, reasons) has NUL replaced by U+FFFD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from syncward.jobs import JobState
from syncward.store.apply import LOST_STATE_SQL, MAX_LOST_LISTED, lost_note_sql
from syncward.store.port import DueRow, FencedRow, LostLeases

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    import asyncpg

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

__all__ = ["LIVE_BOOTS", "LOCK_NAMESPACE", "PostgresTx", "clean", "dead"]

#: The first key of every advisory lock syncward takes (the second is the boot's).
LOCK_NAMESPACE = 0x53796E63  # "Sync"
_STATE = {s.value: s for s in JobState}
_FENCED_COLS = ("id, state, fence, attempts, max_attempts, stage, lease_expires_at, key,"
                " ended_fence, ended_by")
#: The transaction lock that serialises limited leasing (its own namespace: the second
#: key of LOCK_NAMESPACE locks is a boot's).
_LIMITS_NAMESPACE = LOCK_NAMESPACE + 1
#: The predicate of the index of planned jobs with a priority or a limit key.
_STEERED = "state = 'planned' AND (priority <> 0 OR limit_key IS NOT NULL)"
_DUE_ROW = ("id, key, identity, payload, attempts, max_attempts, stage, fence,"
            " lease_seconds, timeout, next_attempt_at, priority")
#: Due planned jobs from each of the three disjoint partial indexes (see the schema's
#: version 2), claimed with SKIP LOCKED; $1 is now, $2 how many.
_DUE = """a AS (SELECT id, next_attempt_at AS r FROM jobs
      WHERE state = 'planned' AND priority = 0 AND limit_key IS NULL AND next_attempt_at <= $1
      ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED),
  b AS (SELECT id, next_attempt_at - priority AS r FROM jobs
      WHERE state = 'planned' AND (priority <> 0 OR limit_key IS NOT NULL) AND limit_key IS NULL
        AND next_attempt_at <= $1
      ORDER BY next_attempt_at - priority, id LIMIT $2 FOR UPDATE SKIP LOCKED)"""
_DUE_LIMITED = """, c AS (SELECT id, next_attempt_at - priority AS r FROM jobs
      WHERE state = 'planned' AND (priority <> 0 OR limit_key IS NOT NULL)
        AND limit_key IS NOT NULL AND next_attempt_at <= $1
      ORDER BY next_attempt_at - priority, id LIMIT $2 FOR UPDATE SKIP LOCKED)"""
_LEASE_SET = ("UPDATE jobs SET state = 'leased', lease_owner = $3, lease_boot = $4,"
              " lease_expires_at = $1 + coalesce(lease_seconds, $5), fence = fence + 1,"
              " attempts = attempts + 1, updated_at = $1")

#: The boots whose advisory lock is held: their processes are alive. (One hashed
#: subquery per statement, however many leases it is compared with.)
LIVE_BOOTS = f"""(SELECT w.boot_id FROM workers w JOIN pg_locks l
      ON l.locktype = 'advisory' AND l.classid::bigint = {LOCK_NAMESPACE}
     AND l.objid::bigint = (w.lock_key::bigint & 4294967295) AND l.objsubid = 2
     AND l.granted
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""


def dead(boot: str) -> str:
    """SQL: the boot in column ``boot`` holds no lock (its process is gone)."""
    return f"{boot} NOT IN {LIVE_BOOTS}"


@overload
def clean(text: str) -> str: ...
@overload
def clean(text: None) -> None: ...
def clean(text: str | None) -> str | None:
    """Free text PostgreSQL can store (NUL is not allowed in ``text``)."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd")


def _last_per_job(writes: Sequence[Any], id_at: int) -> list[Any]:
    return list({w[id_at]: w for w in writes}.values())


def _cols(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(n)]


class PostgresTx:
    """`WriteTx` over one connection in an open transaction."""

    def __init__(self, conn: asyncpg.Connection, writer: str) -> None:
        self.conn = conn
        self.writer = writer  # this runtime's row of the running totals
        self.planned_changed = False  # for the NOTIFY that wakes idle runtimes

    def _fenced(self, rows: Sequence[Any]) -> list[FencedRow]:
        state = _STATE
        return [FencedRow(r[0], state[r[1]], r[2], r[3], r[4], r[5], r[6], bytes(r[7]), r[8],
                          r[9]) for r in rows]

    # --- jobs ----------------------------------------------------------------------------

    async def load(self, ids: Collection[int]) -> list[FencedRow]:
        rows = await self.conn.fetch(
            f"SELECT {_FENCED_COLS} FROM jobs WHERE id = ANY($1::bigint[])"
            " ORDER BY id FOR UPDATE", sorted(ids))
        return self._fenced(rows)

    async def creators(self, keys: Sequence[bytes]) -> dict[bytes, int | None]:
        rows = await self.conn.fetch(
            "SELECT key, created_by FROM jobs WHERE key = ANY($1::bytea[])", list(keys))
        return {bytes(r[0]): r[1] for r in rows}

    async def insert_jobs(self, rows: Sequence[InsertJob]) -> set[bytes]:
        c = _cols(rows, 11)
        inserted = await self.conn.fetch(
            "INSERT INTO jobs (key, identity, payload, state, max_attempts, next_attempt_at,"
            " lease_seconds, timeout, created_by, created_at, updated_at, priority, limit_key)"
            " SELECT k, i, p, 'planned', m, n, l, t, c, a, a, pr, lk FROM unnest($1::bytea[],"
            " $2::text[], $3::text[], $4::int[], $5::float8[], $6::float8[], $7::float8[],"
            " $8::bigint[], $9::float8[], $10::int[], $11::text[])"
            " AS u(k, i, p, m, n, l, t, c, a, pr, lk)"
            " ON CONFLICT (key) DO NOTHING RETURNING key", *c)
        if inserted:
            self.planned_changed = True
        return {bytes(r[0]) for r in inserted}

    async def existing(self, keys: Sequence[bytes]) -> dict[bytes, tuple[JobState, int | None]]:
        rows = await self.conn.fetch(
            "SELECT key, state, created_by FROM jobs WHERE key = ANY($1::bytea[])", list(keys))
        return {bytes(r[0]): (_STATE[r[1]], r[2]) for r in rows}

    async def insert_imported(self, rows: Sequence[ImportRow]) -> set[bytes]:
        # Columns named: the ones not named take their defaults. Another writer may
        # insert a key first: ON CONFLICT skips it, and RETURNING says which went in.
        w = [(k, i, p, s, r, clean(e), *rest) for k, i, p, s, r, e, *rest in rows]
        inserted = await self.conn.fetch(
            "INSERT INTO jobs (key, identity, payload, state, result, last_error, attempts,"
            " max_attempts, next_attempt_at, created_by, created_at, updated_at, limit_key)"
            " SELECT k, i, p, s, r, e, a, m, n, c, t, t, lk FROM unnest($1::bytea[],"
            " $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],"
            " $8::int[], $9::float8[], $10::bigint[], $11::float8[], $12::text[])"
            " AS u(k, i, p, s, r, e, a, m, n, c, t, lk)"
            " ON CONFLICT (key) DO NOTHING RETURNING key, state", *_cols(w, 12))
        if any(r[1] == "planned" for r in inserted):
            self.planned_changed = True
        return {bytes(r[0]) for r in inserted}

    async def insert_run_entries(self, entries: Sequence[tuple[int, int, bytes]]) -> None:
        await self.conn.execute(
            "INSERT INTO run_entries (run_id, line, key) SELECT * FROM"
            " unnest($1::bigint[], $2::bigint[], $3::bytea[]) ON CONFLICT DO NOTHING",
            *_cols(entries, 3))

    async def renew(self, writes: Sequence[RenewWrite]) -> None:
        w = _last_per_job(writes, 2)
        await self.conn.execute(
            "UPDATE jobs j SET lease_expires_at = u.e, updated_at = u.n FROM unnest("
            "$1::float8[], $2::float8[], $3::bigint[], $4::bigint[]) AS u(e, n, id, f)"
            " WHERE j.id = u.id AND j.fence = u.f AND j.state = 'leased'", *_cols(w, 4))

    async def set_stages(self, writes: Sequence[StageWrite]) -> None:
        w = [(clean(s), n, i, f) for s, n, i, f in _last_per_job(writes, 2)]
        await self.conn.execute(
            "UPDATE jobs j SET stage = u.s, updated_at = u.n FROM unnest("
            "$1::text[], $2::float8[], $3::bigint[], $4::bigint[]) AS u(s, n, id, f)"
            " WHERE j.id = u.id AND j.fence = u.f", *_cols(w, 4))

    async def finish(self, writes: Sequence[FinalWrite]) -> None:
        w = [(s, r, clean(e), *rest) for s, r, e, *rest in _last_per_job(writes, 8)]
        if any(x[0] == "planned" for x in w):
            self.planned_changed = True
        await self.conn.execute(
            "UPDATE jobs j SET state = u.s, result = u.r, last_error = u.e,"
            " next_attempt_at = u.na, attempts = u.a, ended_fence = u.ef, ended_by = u.eb,"
            " lease_owner = NULL, lease_boot = NULL, lease_expires_at = NULL, updated_at = u.n"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::int[],"
            " $6::bigint[], $7::text[], $8::float8[], $9::bigint[])"
            " AS u(s, r, e, na, a, ef, eb, n, id) WHERE j.id = u.id AND j.fence = u.ef",
            *_cols(w, 9))

    async def release(self, writes: Sequence[ReleaseWrite]) -> None:
        self.planned_changed = True
        await self.conn.execute(
            "UPDATE jobs j SET state = 'planned', attempts = u.a, next_attempt_at = u.na,"
            " ended_fence = u.ef, ended_by = 'released', lease_owner = NULL,"
            " lease_boot = NULL, lease_expires_at = NULL, updated_at = u.n FROM unnest("
            "$1::int[], $2::float8[], $3::bigint[], $4::float8[], $5::bigint[])"
            " AS u(a, na, ef, n, id) WHERE j.id = u.id AND j.fence = u.ef",
            *_cols(_last_per_job(writes, 4), 5))

    async def lease_due(self, order: LeaseOrder, now: float) -> list[DueRow]:
        return await self._lease(
            f"WITH {_DUE}{_DUE_LIMITED}, pick AS (SELECT id FROM (SELECT * FROM a UNION ALL"
            " SELECT * FROM b UNION ALL SELECT * FROM c) s ORDER BY r, id LIMIT $2)"
            f" {_LEASE_SET} WHERE id IN (SELECT id FROM pick) RETURNING {_DUE_ROW}",
            now, order.n, order.owner, order.boot_id, order.default_lease_seconds)

    async def _lease(self, sql: str, *args: Any) -> list[DueRow]:
        rows = await self.conn.fetch(sql, *args)
        due = [DueRow(r[0], bytes(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                      r[11]) for r in rows]
        due.sort(key=lambda row: row.rank)  # RETURNING keeps no order
        return due

    async def limit_usage(self, keys: Sequence[str]
                          ) -> dict[str, tuple[int, float | None, float | None]]:
        await self.conn.execute("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
                                _LIMITS_NAMESPACE)
        wanted = list(keys)
        usage: dict[str, tuple[int, float | None, float | None]] = {
            r[0]: (0, r[1], r[2]) for r in await self.conn.fetch(
                "SELECT key, tat, held_until FROM limit_state WHERE key = ANY($1::text[])",
                wanted)}
        for key, n in await self.conn.fetch(
                "SELECT limit_key, count(*) FROM jobs WHERE state = 'leased'"
                " AND limit_key IS NOT NULL AND limit_key = ANY($1::text[])"
                " GROUP BY limit_key", wanted):
            _, tat, held = usage.get(key, (0, None, None))
            usage[key] = (n, tat, held)
        return usage

    async def planned_limit_keys(self) -> list[str]:
        # A loose index scan: one seek per distinct key.
        rows = await self.conn.fetch(
            "WITH RECURSIVE k(key) AS ("
            f" SELECT min(limit_key) FROM jobs WHERE {_STEERED} AND limit_key IS NOT NULL"
            " UNION ALL SELECT (SELECT min(limit_key) FROM jobs"
            f" WHERE {_STEERED} AND limit_key > k.key) FROM k WHERE k.key IS NOT NULL)"
            " SELECT key FROM k WHERE key IS NOT NULL")
        return [r[0] for r in rows]

    async def due_ids(self, now: float, key: str | None, n: int, *,
                      after: tuple[float, int] | None = None) -> list[tuple[float, int]]:
        if key is None:
            assert after is None
            rows = await self.conn.fetch(
                f"WITH {_DUE} SELECT r, id FROM (SELECT * FROM a UNION ALL SELECT * FROM b) s"
                " ORDER BY r, id LIMIT $2", now, n)
        else:
            page = "" if after is None else " AND (next_attempt_at - priority, id) > ($4, $5)"
            rows = await self.conn.fetch(
                f"SELECT next_attempt_at - priority AS r, id FROM jobs WHERE {_STEERED}"
                f" AND limit_key = $3 AND next_attempt_at <= $1{page}"
                " ORDER BY next_attempt_at - priority, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                now, n, key, *(after or ()))
        return [(r[0], r[1]) for r in rows]

    async def lease_ids(self, order: LeaseOrder, now: float,
                        ids: Sequence[int]) -> list[DueRow]:
        return await self._lease(
            f"{_LEASE_SET} WHERE id = ANY($2::bigint[]) AND state = 'planned'"
            f" RETURNING {_DUE_ROW}",
            now, list(ids), order.owner, order.boot_id, order.default_lease_seconds)

    async def save_limits(self, rows: Sequence[tuple[str, float | None, float | None]]
                          ) -> None:
        await self.conn.execute(
            "INSERT INTO limit_state (key, tat, held_until) SELECT * FROM unnest($1::text[],"
            " $2::float8[], $3::float8[]) ON CONFLICT (key) DO UPDATE SET tat = excluded.tat,"
            " held_until = greatest(limit_state.held_until, excluded.held_until)",
            *_cols(rows, 3))

    async def hold_limits(self, rows: Sequence[tuple[int, float]]) -> None:
        # Under the limits lock, as limited leasing is: a writer holding it has read the
        # key's state and will write it back (save_limits); a hold written meanwhile
        # would be overwritten, and its row lock would deadlock with that writer.
        await self.conn.execute("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
                                _LIMITS_NAMESPACE)
        await self.conn.execute(
            "INSERT INTO limit_state AS s (key, held_until) SELECT j.limit_key, max(u.until)"
            " FROM unnest($1::bigint[], $2::float8[]) AS u(id, until) JOIN jobs j"
            " ON j.id = u.id WHERE j.limit_key IS NOT NULL GROUP BY j.limit_key"
            " ON CONFLICT (key) DO UPDATE SET held_until ="
            " greatest(s.held_until, excluded.held_until)", *_cols(rows, 2))

    async def requeue_candidates(self, state: JobState, keys: Sequence[bytes] | None,
                                 decided_at: float) -> list[int]:
        if keys is None:
            rows = await self.conn.fetch(
                "SELECT id FROM jobs WHERE state = $1 AND updated_at <= $2 ORDER BY id"
                " FOR UPDATE", state.value, decided_at)
        else:
            rows = await self.conn.fetch(
                "SELECT id FROM jobs WHERE key = ANY($1::bytea[]) AND state = $2"
                " AND updated_at <= $3 ORDER BY id FOR UPDATE", list(keys), state.value,
                decided_at)
        return [r[0] for r in rows]

    async def requeue(self, writes: Sequence[RequeueWrite]) -> None:
        self.planned_changed = True
        await self.conn.execute(
            "UPDATE jobs j SET state = 'planned', attempts = 0, next_attempt_at = u.na,"
            " result = NULL, updated_at = u.n FROM unnest($1::float8[], $2::float8[],"
            " $3::bigint[]) AS u(na, n, id) WHERE j.id = u.id", *_cols(writes, 3))

    async def cancel_candidates(self, states: Collection[JobState],
                                keys: Sequence[bytes] | None,
                                created_before: float) -> list[FencedRow]:
        # The ids first, then `load` locks the rows in id order and reads them as they
        # are once locked (another writer may have changed one in between).
        if keys is None:
            ids = await self.conn.fetch(
                "SELECT id FROM jobs WHERE state = ANY($1::text[]) AND created_at <= $2",
                [s.value for s in states], created_before)
        else:
            ids = await self.conn.fetch("SELECT id FROM jobs WHERE key = ANY($1::bytea[])",
                                        list(keys))
        return await self.load([r[0] for r in ids])

    async def skip_planned(self, writes: Sequence[SkipWrite]) -> None:
        await self.conn.execute(
            "UPDATE jobs j SET state = 'skipped', last_error = u.e, ended_by = u.e,"
            " updated_at = u.n FROM"
            " unnest($1::text[], $2::float8[], $3::bigint[]) AS u(e, n, id)"
            " WHERE j.id = u.id AND j.state = 'planned'",
            *_cols([(clean(e), n, i) for e, n, i in writes], 3))

    async def count_by_state(self) -> dict[JobState, int]:
        """The running totals: every writer's committed deltas (and this batch's)."""
        return await self._counted("SELECT state, sum(n) FROM counts GROUP BY state")

    async def count_checked(self) -> tuple[dict[JobState, int], dict[JobState, int]]:
        # One statement, so one snapshot: under READ COMMITTED two statements would see
        # another writer's commit between them, and report it as drift.
        totals = dict.fromkeys(JobState, 0)
        rows = dict.fromkeys(JobState, 0)
        for which, state, n in await self.conn.fetch(
                "SELECT 't', state, sum(n) FROM counts GROUP BY state UNION ALL"
                " SELECT 'r', state, count(*) FROM jobs GROUP BY state"):
            (totals if which == "t" else rows)[_STATE[state]] = int(n)
        return totals, rows

    async def _counted(self, sql: str) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in await self.conn.fetch(sql):
            counts[_STATE[state]] = int(n)
        return counts

    async def record_deltas(self, deltas: dict[JobState, int]) -> None:
        await self.conn.execute(
            "INSERT INTO counts (writer, state, n) SELECT $1, s, d FROM unnest($2::text[],"
            " $3::bigint[]) AS u(s, d) ON CONFLICT (writer, state)"
            " DO UPDATE SET n = counts.n + excluded.n",
            self.writer, [s.value for s in deltas], list(deltas.values()))

    async def record_ops(self, writes: Sequence[OpWrite]) -> dict[bytes, tuple[str, bool]]:
        c = _cols(writes, 5)
        inserted = {bytes(r[0]) for r in await self.conn.fetch(
            "INSERT INTO ops (op_key, job_id, kind, result, committed_at) SELECT * FROM"
            " unnest($1::bytea[], $2::bigint[], $3::text[], $4::text[], $5::float8[])"
            " ON CONFLICT (op_key) DO NOTHING RETURNING op_key", *c)}
        found = {w[0]: (w[3], True) for w in writes if w[0] in inserted}
        others = [w[0] for w in writes if w[0] not in inserted]
        if others:
            for key, result in await self.conn.fetch(
                    "SELECT op_key, result FROM ops WHERE op_key = ANY($1::bytea[])", others):
                found[bytes(key)] = (result, False)
        return found

    async def reject(self, rows: Sequence[tuple[float, int | None, str, str]]) -> None:
        await self.conn.execute(
            "INSERT INTO rejections (at, job_id, message, reason) SELECT * FROM"
            " unnest($1::float8[], $2::bigint[], $3::text[], $4::text[])",
            *_cols([(a, j, m, clean(r)) for a, j, m, r in rows], 4))

    # --- liveness: a boot is alive while its advisory lock is held ---------------------

    async def lose_leases(self, boot_id: str, now: float, why: str, *,
                          dry_run: bool) -> LostLeases:
        where = (f"state = 'leased' AND (lease_boot IS NULL OR (lease_boot <> $1 AND"
                 f" {dead('jobs.lease_boot')}))")
        note = lost_note_sql(why)
        rows = await self.conn.fetch(
            f"SELECT id, key, {note} FROM jobs WHERE {where} ORDER BY id"
            + ("" if dry_run else " FOR UPDATE"), boot_id)
        listed = [(bytes(r[1]), r[2]) for r in rows[:MAX_LOST_LISTED]]
        if dry_run or not rows:
            failed = 0
            if rows:
                failed = await self.conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1::bigint[])"
                    " AND attempts >= max_attempts", [r[0] for r in rows])
            return LostLeases(requeued=len(rows) - failed, failed=failed, listed=listed)
        total, failed = await self.conn.fetchrow(
            f"WITH changed AS (UPDATE jobs SET state = {LOST_STATE_SQL}, last_error = {note},"
            " ended_fence = fence, ended_by = 'lost', lease_owner = NULL, lease_boot = NULL,"
            " lease_expires_at = NULL, next_attempt_at = $2, updated_at = $2"
            " WHERE id = ANY($1::bigint[]) AND state = 'leased' RETURNING state)"
            " SELECT count(*), count(*) FILTER (WHERE state = 'failed') FROM changed",
            [r[0] for r in rows], now)
        if total > failed:
            self.planned_changed = True
        return LostLeases(requeued=total - failed, failed=failed, listed=listed)

    async def dead_workers(self, boot_id: str) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT name FROM workers WHERE boot_id <> $1 AND status NOT IN ('dead', 'stopped')"
            f" AND {dead('workers.boot_id')} ORDER BY started_at", boot_id)
        return [r[0] for r in rows]

    async def interrupt_runs(self, boot_id: str, now: float, *, dry_run: bool) -> int:
        where = (f"status = 'running' AND (boot_id IS NULL OR (boot_id <> $1 AND"
                 f" {dead('runs.boot_id')}))")
        if dry_run:
            return int(await self.conn.fetchval(f"SELECT count(*) FROM runs WHERE {where}",
                                                boot_id))
        rows = await self.conn.fetch(
            f"UPDATE runs SET status = 'interrupted', finished_at = $2 WHERE {where}"
            " RETURNING id", boot_id, now)
        return len(rows)

    # --- workers, runs, events, metadata -------------------------------------------------

    async def worker_by_boot(self, boot_id: str) -> str | None:
        name = await self.conn.fetchval("SELECT name FROM workers WHERE boot_id = $1", boot_id)
        return None if name is None else str(name)

    async def next_worker_number(self) -> int:
        # A counter row, not a sequence: a rolled-back registration gives its number back
        # (sequences are not transactional), and registrations are rare enough that the
        # row lock costs nothing.
        return int(await self.conn.fetchval(
            "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'worker_seq'"
            " RETURNING value"))

    async def insert_worker(self, name: str, boot_id: str, pid: int, host: str,
                            now: float) -> None:
        from syncward.store.postgres.store import boot_lock_key

        await self.conn.execute(
            "INSERT INTO workers (name, boot_id, pid, host, status, started_at, heartbeat_at,"
            " lock_key) VALUES ($1, $2, $3, $4, 'running', $5, $5, $6)",
            name, boot_id, pid, host, now, boot_lock_key(boot_id))

    async def set_worker_status(self, names: Sequence[str], status: str, now: float) -> None:
        await self.conn.execute(
            "UPDATE workers SET status = $2, heartbeat_at = $3 WHERE name = ANY($1::text[])",
            list(names), status, now)
        if status in ("dead", "stopped"):
            # Their running totals join the base row: the totals stay the same sum, and
            # the rows every refresh adds up stay one per live writer (plus the base).
            await self.conn.execute(
                "WITH gone AS (DELETE FROM counts c USING workers w WHERE w.name ="
                " ANY($1::text[]) AND c.writer = w.boot_id RETURNING c.state, c.n)"
                " INSERT INTO counts (writer, state, n) SELECT '', state, sum(n) FROM gone"
                " GROUP BY state ON CONFLICT (writer, state) DO UPDATE"
                " SET n = counts.n + excluded.n", list(names))

    async def insert_event(self, at: float, kind: str, detail: str) -> None:
        await self.conn.execute("INSERT INTO events (at, kind, detail) VALUES ($1, $2, $3)",
                                at, kind, clean(detail))

    async def start_run(self, token: str, source: str, options: str, boot_id: str,
                        now: float) -> int:
        await self.conn.execute(
            "INSERT INTO runs (token, source, options, status, started_at, boot_id)"
            " VALUES ($1, $2, $3, 'running', $4, $5) ON CONFLICT (token) DO NOTHING",
            token, clean(source), clean(options), now, boot_id or None)
        return int(await self.conn.fetchval("SELECT id FROM runs WHERE token = $1", token))

    async def insert_run_rejects(self, rows: Sequence[tuple[int, int, str, str]]) -> None:
        await self.conn.execute(
            "INSERT INTO run_rejects (run_id, line, reason, raw) SELECT * FROM unnest("
            "$1::bigint[], $2::bigint[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
            *_cols([(r, n, clean(why), clean(raw)) for r, n, why, raw in rows], 4))

    async def finish_run(self, run_id: int, status: str, now: float) -> None:
        await self.conn.execute("UPDATE runs SET status = $2, finished_at = $3 WHERE id = $1",
                                run_id, status, now)

    async def set_meta(self, key: str, value: str, *, only_if_absent: bool) -> str:
        conflict = "NOTHING" if only_if_absent else "UPDATE SET value = excluded.value"
        await self.conn.execute(
            f"INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO {conflict}",
            key, clean(value))
        return str(await self.conn.fetchval("SELECT value FROM meta WHERE key = $1", key))
