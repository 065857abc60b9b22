"""Applying one batch of syncer messages to SQLite, synchronously, in one transaction.

Design note: this runs in a worker thread as a single call (`SQLiteStore.apply` hands it
the whole batch), not as one awaited statement per message: a thread hop costs tens of
microseconds and a batch holds up to a thousand messages. The transaction is opened with
``BEGIN IMMEDIATE`` (a busy timeout does not cover a read transaction upgrading to a
write); any error rolls back explicitly and propagates, so a batch is all or nothing.

Each message is checked on its own against the row it touches: a stale fence, an illegal
transition or an unknown job gives a `Rejected` result (and a row in ``rejections``)
without disturbing the rest of the batch. Every state change passes `check_transition`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, assert_never

from syncward.adapters._sqlite_fenced import FencedRows, Stale
from syncward.errors import IllegalTransition
from syncward.jobs import TERMINAL, Job, JobState, check_transition
from syncward.messages import (
    ACCEPTED,
    ApplyResult,
    Effect,
    EffectResult,
    FinishRun,
    LeaseOrder,
    Outcome,
    ReapExpired,
    Reconcile,
    ReconcileReport,
    RecordEvent,
    Recount,
    RegisterWorker,
    Rejected,
    Release,
    Renew,
    Requeue,
    RunRejects,
    SetMeta,
    Stage,
    StartRun,
    Submit,
    SubmitResult,
    SyncerMsg,
    WorkerStatus,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

__all__ = ["BatchApplier"]

_MAX_LOST_LISTED = 20
_KEY_CHUNK = 500
_FENCED = (Stage, Effect, Outcome, Release)


def _ids(batch: Sequence[SyncerMsg]) -> set[int]:
    """Every job id the batch's fenced messages touch (loaded in one go)."""
    ids: set[int] = set()
    for msg in batch:
        if isinstance(msg, _FENCED):
            ids.add(msg.job_id)
        elif isinstance(msg, Renew):
            ids.update(item[0] for item in msg.items)
        elif isinstance(msg, ReapExpired):
            ids.update(item[0] for item in msg.items)
    return ids


class BatchApplier:
    """Owns the write connection; `apply` is the one write entry point (thread-side)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._deltas: dict[JobState, int] = {}
        self._now = 0.0
        self._rows = FencedRows(conn, 0.0)
        self._batch_ids: set[int] = set()

    # --- the entry point -------------------------------------------------------------

    def apply(
        self,
        batch: Sequence[SyncerMsg],
        now: float,
        lease: LeaseOrder | None,
        recount: bool,
        dry_run: bool,
    ) -> ApplyResult:
        self._deltas = {}
        self._now = now
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._rows = FencedRows(conn, now)
            self._batch_ids = _ids(batch)
            self._rows.load(self._batch_ids)
            results = self._all(batch)
            self._flush()
            leased = self._lease(lease) if lease is not None and lease.n > 0 else []
            counts = self._count() if recount else None
            if dry_run:
                conn.execute("ROLLBACK")
            else:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        deltas = {s: d for s, d in self._deltas.items() if d}
        return ApplyResult(results=results, deltas=deltas, leased=leased, counts=counts)

    def _all(self, batch: Sequence[SyncerMsg]) -> list[object]:
        """Results in message order; runs of consecutive submits are inserted together."""
        results: list[object] = []
        i = 0
        while i < len(batch):
            if isinstance(batch[i], Submit):
                j = i
                while j < len(batch) and isinstance(batch[j], Submit):
                    j += 1
                results.extend(self._submits(batch[i:j]))  # type: ignore[arg-type]
                i = j
            else:
                results.append(self._one(batch[i]))
                i += 1
        return results

    # --- helpers ---------------------------------------------------------------------

    def _flush(self) -> None:
        rows = self._rows
        rows.flush()
        for state, d in rows.deltas.items():
            self._deltas[state] = self._deltas.get(state, 0) + d
        rows.deltas.clear()

    def _reload(self) -> None:
        """Re-read the batch's rows after a set-based statement changed them behind the view."""
        self._rows.rows.clear()
        self._rows.load(self._batch_ids)

    def _move(self, old: JobState, new: JobState, n: int = 1) -> None:
        if old is not new and n:
            self._deltas[old] = self._deltas.get(old, 0) - n
            self._deltas[new] = self._deltas.get(new, 0) + n

    def _reject(self, job_id: int | None, msg: SyncerMsg, reason: str) -> Rejected:
        self._rows.reject(job_id, type(msg).__name__, reason)
        return Rejected(reason)

    def _count(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in self.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = n
        return counts

    # --- dispatch --------------------------------------------------------------------

    def _one(self, msg: SyncerMsg) -> object:
        match msg:
            case Submit():
                return self._submits([msg])[0]
            case Recount():
                return ACCEPTED
            case Renew():
                return self._renew(msg)
            case Stage() | Effect() | Outcome() | Release():
                return self._fenced(msg)
            case ReapExpired():
                return self._reap(msg)
            case Requeue():
                self._flush()
                try:
                    return self._requeue(msg)
                except IllegalTransition as exc:
                    return self._reject(None, msg, str(exc))
                finally:
                    self._reload()
            case Reconcile():
                self._flush()
                try:
                    return self._reconcile_dry_run(msg) if msg.dry_run else self._reconcile(msg)
                finally:
                    self._reload()
            case _:
                return self._bookkeeping(msg)

    def _bookkeeping(self, msg: SyncerMsg) -> object:
        """Workers, events and runs: messages that touch no job."""
        match msg:
            case RegisterWorker():
                return self._register(msg)
            case WorkerStatus():
                self.conn.execute(
                    "UPDATE workers SET status = ?, heartbeat_at = ? WHERE name = ?",
                    (msg.status, self._now, msg.name),
                )
                return ACCEPTED
            case RecordEvent():
                self.conn.execute(
                    "INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)",
                    (msg.at, msg.kind, json.dumps(dict(msg.detail), default=str)),
                )
                return ACCEPTED
            case StartRun():
                self.conn.execute(
                    "INSERT OR IGNORE INTO runs (token, source, options, status, started_at)"
                    " VALUES (?, ?, ?, 'running', ?)",
                    (msg.token, msg.source, json.dumps(dict(msg.options), default=str),
                     self._now),
                )
                (run_id,) = self.conn.execute(
                    "SELECT id FROM runs WHERE token = ?", (msg.token,)).fetchone()
                return run_id
            case RunRejects():
                self.conn.executemany(
                    "INSERT OR IGNORE INTO run_rejects (run_id, line, reason, raw)"
                    " VALUES (?, ?, ?, ?)",
                    [(msg.run_id, line, reason, raw) for line, reason, raw in msg.items],
                )
                return ACCEPTED
            case FinishRun():
                self.conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                    (msg.status, self._now, msg.run_id),
                )
                return ACCEPTED
            case SetMeta():
                self.conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
                    + ("NOTHING" if msg.only_if_absent else "UPDATE SET value = excluded.value"),
                    (msg.key, msg.value),
                )
                (value,) = self.conn.execute(
                    "SELECT value FROM meta WHERE key = ?", (msg.key,)).fetchone()
                return str(value)
            case _:
                raise AssertionError(f"unhandled message {type(msg).__name__}")

    # --- jobs ------------------------------------------------------------------------

    def _submits(self, msgs: Sequence[Submit]) -> list[SubmitResult]:
        """Insert the jobs of consecutive submits at once; count new and duplicate per message.

        The keys already present are looked up first (one query per 500 keys), so each
        message learns its own counts although the rows go in with one executemany. A job
        row remembers the token of the submit that created it, so a submit delivered
        again (its commit went through, its reply did not) counts its own jobs as new.
        """
        conn = self.conn
        now = self._now
        keys = [bytes.fromhex(j.key) for m in msgs for j in m.jobs]
        creator: dict[bytes, int | None] = {}
        for start in range(0, len(keys), _KEY_CHUNK):
            chunk = keys[start:start + _KEY_CHUNK]
            marks = ",".join("?" * len(chunk))
            creator.update(conn.execute(
                f"SELECT key, created_by FROM jobs WHERE key IN ({marks})", chunk).fetchall())
        results: list[SubmitResult] = []
        rows: list[tuple[Any, ...]] = []
        entries: list[tuple[Any, ...]] = []
        k = 0
        for msg in msgs:
            new = 0
            counted: set[bytes] = set()
            for job in msg.jobs:
                key = keys[k]
                k += 1
                if key not in creator:
                    creator[key] = msg.token
                    counted.add(key)
                    new += 1
                    rows.append((key, job.identity, job.payload, job.max_attempts, now,
                                 job.lease_seconds, job.timeout, msg.token, now, now))
                elif creator[key] == msg.token and key not in counted:
                    counted.add(key)  # created by this very message, delivered before
                    new += 1
                if msg.run_id is not None and job.line is not None:
                    entries.append((msg.run_id, job.line, key))
            results.append(SubmitResult(new=new, duplicates=len(msg.jobs) - new))
        conn.executemany(
            "INSERT OR IGNORE INTO jobs (key, identity, payload, state, max_attempts,"
            " next_attempt_at, lease_seconds, timeout, created_by, created_at, updated_at)"
            " VALUES (?, ?, ?, 'planned', ?, ?, ?, ?, ?, ?, ?)", rows)
        if entries:
            conn.executemany(
                "INSERT OR IGNORE INTO run_entries (run_id, line, key) VALUES (?, ?, ?)",
                entries)
        if rows:
            self._deltas[JobState.PLANNED] = self._deltas.get(JobState.PLANNED, 0) + len(rows)
        return results

    def _renew(self, msg: Renew) -> object:
        stale = 0
        for job_id, fence, seconds in msg.items:
            try:
                self._rows.renew(self._rows.leased(job_id, fence), seconds)
            except Stale as exc:
                stale += 1
                self._reject(job_id, msg, f"{exc.reason}: lease not renewed")
        return ACCEPTED if not stale else Rejected(f"{stale} lease(s) were no longer held")

    def _fenced(self, msg: Stage | Effect | Outcome | Release) -> object:
        rows = self._rows
        try:
            row = rows.leased(msg.job_id, msg.fence)
            match msg:
                case Stage():
                    rows.stage(row, msg.stage)
                case Effect():
                    return self._effect(msg)
                case Outcome():
                    rows.outcome(row, msg)
                case Release():
                    rows.release(row)
                case _:
                    assert_never(msg)
            return ACCEPTED
        except Stale as stale:
            if isinstance(msg, Outcome) and rows.already_applied(msg):
                return ACCEPTED  # the same outcome, delivered again: already committed
            return self._reject(msg.job_id, msg, stale.reason)
        except IllegalTransition as exc:
            return self._reject(msg.job_id, msg, str(exc))

    def _effect(self, msg: Effect) -> EffectResult:
        key = bytes.fromhex(msg.op_key)
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO ops (op_key, job_id, kind, result, committed_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, msg.job_id, msg.kind, msg.result, self._now),
        )
        if cur.rowcount == 1:
            return EffectResult(result=msg.result, recorded_before=False)
        (first,) = self.conn.execute("SELECT result FROM ops WHERE op_key = ?", (key,)).fetchone()
        return EffectResult(result=first, recorded_before=True)

    def _lease(self, order: LeaseOrder) -> list[Job]:
        conn = self.conn
        now = self._now
        rows = conn.execute(
            "SELECT id, key, identity, payload, attempts, max_attempts, stage, fence,"
            " lease_seconds, timeout FROM jobs"
            " WHERE state = 'planned' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, id LIMIT ?",
            (now, order.n),
        ).fetchall()
        if not rows:
            return []
        check_transition(JobState.PLANNED, JobState.LEASED)
        jobs: list[Job] = []
        params = []
        loads = json.loads
        default_seconds = order.default_lease_seconds
        for (job_id, key, ident, payload, attempts, max_att, stage, fence, lease_s,
             timeout) in rows:
            seconds = lease_s if lease_s is not None else default_seconds
            params.append((order.owner, order.boot_id, now + seconds, now, job_id))
            jobs.append(Job(
                id=job_id, key=key.hex(), identity=loads(ident),
                payload={} if payload == "{}" else loads(payload), attempt=attempts + 1,
                max_attempts=max_att, stage=stage, fence=fence + 1, lease_seconds=seconds,
                lease_expires_at=now + seconds, timeout=timeout,
            ))
        conn.executemany(
            "UPDATE jobs SET state = 'leased', lease_owner = ?, lease_boot = ?,"
            " lease_expires_at = ?, fence = fence + 1, attempts = attempts + 1, updated_at = ?"
            " WHERE id = ?",
            params,
        )
        self._move(JobState.PLANNED, JobState.LEASED, len(jobs))
        return jobs

    def _reap(self, msg: ReapExpired) -> object:
        reaped = 0
        rows = self._rows
        for job_id, fence in msg.items:
            try:
                row = rows.leased(job_id, fence)
            except Stale as stale:
                self._reject(job_id, msg, stale.reason)
                continue
            if row.lease_expires_at is None or row.lease_expires_at > self._now:
                self._reject(job_id, msg, "lease was renewed before it was reaped")
                continue
            rows.lose(row, "lease expired")
            reaped += 1
        return reaped

    def _requeue(self, msg: Requeue) -> int:
        if msg.state not in TERMINAL:
            raise IllegalTransition(msg.state, JobState.PLANNED, job="(requeue: not terminal)")
        check_transition(msg.state, JobState.PLANNED)  # before any row changes
        if msg.keys is None:
            ids = [r[0] for r in self.conn.execute(
                "SELECT id FROM jobs WHERE state = ? AND updated_at <= ?",
                (msg.state.value, msg.decided_at))]
        else:
            ids = []
            for key in msg.keys:
                row = self.conn.execute(
                    "SELECT id FROM jobs WHERE key = ? AND state = ? AND updated_at <= ?",
                    (bytes.fromhex(key), msg.state.value, msg.decided_at),
                ).fetchone()
                if row is not None:
                    ids.append(row[0])
        self.conn.executemany(
            "UPDATE jobs SET state = 'planned', attempts = 0, next_attempt_at = ?,"
            " result = NULL, updated_at = ? WHERE id = ?",
            [(self._now, self._now, job_id) for job_id in ids],
        )
        self._move(msg.state, JobState.PLANNED, len(ids))
        return len(ids)

    # --- workers and reconciliation --------------------------------------------------

    def _register(self, msg: RegisterWorker) -> str:
        row = self.conn.execute(
            "SELECT name FROM workers WHERE boot_id = ?", (msg.boot_id,)).fetchone()
        if row is not None:
            return str(row[0])
        self.conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'worker_seq'"
        )
        (seq,) = self.conn.execute("SELECT value FROM meta WHERE key = 'worker_seq'").fetchone()
        name = f"worker-{seq}"
        self.conn.execute(
            "INSERT INTO workers (name, boot_id, pid, host, status, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, 'running', ?, ?)",
            (name, msg.boot_id, msg.pid, msg.host, self._now, self._now),
        )
        return name

    def _reconcile_dry_run(self, msg: Reconcile) -> ReconcileReport:
        """The report a reconciliation would give, changing nothing (a savepoint undone)."""
        deltas = dict(self._deltas)
        self.conn.execute("SAVEPOINT reconcile_dry_run")
        try:
            return self._reconcile(msg)
        finally:
            self.conn.execute("ROLLBACK TO reconcile_dry_run")
            self.conn.execute("RELEASE reconcile_dry_run")
            self._deltas = deltas

    def _reconcile(self, msg: Reconcile) -> ReconcileReport:
        """Leases of other boots go back at once, in two set-based statements.

        Their owners are provably gone (this process holds the store's lock), so each
        lost lease counts as an attempt and is recorded as a crash: planned again, or
        failed when its attempts are spent.
        """
        conn = self.conn
        where = "state = 'leased' AND (lease_boot IS NULL OR lease_boot != ?)"
        lost = [
            f"job {bytes(key).hex()[:16]}: lease lost at stage {stage or 'start'}, "
            f"attempt {attempts} (its process is gone)"
            for key, stage, attempts in conn.execute(
                f"SELECT key, stage, attempts FROM jobs WHERE {where} LIMIT ?",
                (msg.boot_id, _MAX_LOST_LISTED))
        ]
        (failed,) = conn.execute(
            f"SELECT count(*) FROM jobs WHERE {where} AND attempts >= max_attempts",
            (msg.boot_id,)).fetchone()
        check_transition(JobState.LEASED, JobState.FAILED)
        check_transition(JobState.LEASED, JobState.PLANNED)
        requeued = conn.execute(
            "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'failed'"
            " ELSE 'planned' END,"
            " last_error = 'lease lost at stage ' || coalesce(stage, 'start') || ', attempt '"
            " || attempts || ' (its process is gone)',"
            " ended_fence = fence, ended_by = 'lost',"
            " lease_owner = NULL, lease_boot = NULL, lease_expires_at = NULL,"
            f" next_attempt_at = ?, updated_at = ? WHERE {where}",
            (self._now, self._now, msg.boot_id)).rowcount - failed
        self._move(JobState.LEASED, JobState.PLANNED, requeued)
        self._move(JobState.LEASED, JobState.FAILED, failed)
        dead = [r[0] for r in conn.execute(
            "SELECT name FROM workers WHERE boot_id != ? AND status NOT IN ('dead', 'stopped')",
            (msg.boot_id,),
        )]
        conn.executemany(
            "UPDATE workers SET status = 'dead' WHERE name = ?", [(n,) for n in dead]
        )
        # Runs still "running" belonged to an earlier boot (this one has started none yet).
        interrupted = conn.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = ? WHERE status = 'running'",
            (self._now,)).rowcount
        report = ReconcileReport(
            boot_id=msg.boot_id, at=self._now, dry_run=msg.dry_run,
            leases_requeued=requeued, leases_failed=failed,
            workers_marked_dead=tuple(dead), lost=tuple(lost), runs_interrupted=interrupted,
        )
        if not msg.dry_run:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('last_reconcile', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(report.as_dict()),),
            )
        return report
