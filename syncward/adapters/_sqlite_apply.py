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

from syncward.errors import IllegalTransition
from syncward.jobs import Job, JobState, check_transition
from syncward.messages import (
    ACCEPTED,
    ApplyResult,
    Effect,
    EffectResult,
    FinishRun,
    LeaseOrder,
    Outcome,
    OutcomeKind,
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

_LEASED = JobState.LEASED.value
_MAX_LOST_LISTED = 20


class _Stale(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class BatchApplier:
    """Owns the write connection; `apply` is the one write entry point (thread-side)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._deltas: dict[JobState, int] = {}
        self._now = 0.0

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
            results = [self._one(msg) for msg in batch]
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

    # --- helpers ---------------------------------------------------------------------

    def _move(self, old: JobState, new: JobState) -> None:
        if old is not new:
            self._deltas[old] = self._deltas.get(old, 0) - 1
            self._deltas[new] = self._deltas.get(new, 0) + 1

    def _reject(self, job_id: int | None, msg: SyncerMsg, reason: str) -> Rejected:
        self.conn.execute(
            "INSERT INTO rejections (at, job_id, message, reason) VALUES (?, ?, ?, ?)",
            (self._now, job_id, type(msg).__name__, reason),
        )
        return Rejected(reason)

    def _fenced(self, job_id: int, fence: int) -> tuple[Any, ...]:
        """The leased row ``(state, attempts, max_attempts, stage, lease_expires_at)``.

        Raises _Stale when the job is unknown, not leased or leased under another fence.
        """
        row = self.conn.execute(
            "SELECT state, fence, attempts, max_attempts, stage, lease_expires_at, key"
            " FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise _Stale(f"unknown job id {job_id}")
        if row[1] != fence or row[0] != _LEASED:
            raise _Stale(f"stale fence {fence}: job is {row[0]} with fence {row[1]}")
        return tuple(row)

    def _count(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, n in self.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = n
        return counts

    # --- dispatch --------------------------------------------------------------------

    def _one(self, msg: SyncerMsg) -> object:
        match msg:
            case Submit():
                return self._submit(msg)
            case Recount():
                return ACCEPTED
            case Renew():
                return self._renew(msg)
            case Stage() | Effect() | Outcome() | Release():
                try:
                    row = self._fenced(msg.job_id, msg.fence)
                    return self._leased_msg(msg, row)
                except _Stale as stale:
                    return self._reject(msg.job_id, msg, stale.reason)
                except IllegalTransition as exc:
                    return self._reject(msg.job_id, msg, str(exc))
            case ReapExpired():
                return self._reap(msg)
            case Requeue():
                try:
                    return self._requeue(msg)
                except IllegalTransition as exc:
                    return self._reject(None, msg, str(exc))
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
            case Reconcile():
                return self._reconcile_dry_run(msg) if msg.dry_run else self._reconcile(msg)
            case _:
                assert_never(msg)

    # --- jobs ------------------------------------------------------------------------

    def _submit(self, msg: Submit) -> SubmitResult:
        conn = self.conn
        now = self._now
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO jobs (key, identity, payload, state, max_attempts,"
            " next_attempt_at, lease_seconds, timeout, created_at, updated_at)"
            " VALUES (?, ?, ?, 'planned', ?, ?, ?, ?, ?, ?)",
            [
                (bytes.fromhex(j.key), j.identity, j.payload, j.max_attempts, now,
                 j.lease_seconds, j.timeout, now, now)
                for j in msg.jobs
            ],
        )
        new = conn.total_changes - before
        if new:
            self._deltas[JobState.PLANNED] = self._deltas.get(JobState.PLANNED, 0) + new
        if msg.run_id is not None:
            conn.executemany(
                "INSERT OR IGNORE INTO run_entries (run_id, line, key) VALUES (?, ?, ?)",
                [(msg.run_id, j.line, bytes.fromhex(j.key)) for j in msg.jobs
                 if j.line is not None],
            )
        return SubmitResult(new=new, duplicates=len(msg.jobs) - new)

    def _renew(self, msg: Renew) -> object:
        stale = 0
        for job_id, fence, seconds in msg.items:
            cur = self.conn.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ?"
                " WHERE id = ? AND fence = ? AND state = 'leased'",
                (self._now + seconds, self._now, job_id, fence),
            )
            if cur.rowcount == 0:
                stale += 1
                self._reject(job_id, msg, f"stale fence {fence}: lease not renewed")
        return ACCEPTED if not stale else Rejected(f"{stale} lease(s) were no longer held")

    def _leased_msg(self, msg: Stage | Effect | Outcome | Release, row: tuple[Any, ...]) -> object:
        conn = self.conn
        now = self._now
        match msg:
            case Stage():
                check_transition(JobState.LEASED, JobState.LEASED)
                conn.execute(
                    "UPDATE jobs SET stage = ?, updated_at = ? WHERE id = ?",
                    (msg.stage, now, msg.job_id),
                )
                return ACCEPTED
            case Effect():
                return self._effect(msg)
            case Release():
                check_transition(JobState.LEASED, JobState.PLANNED)
                conn.execute(
                    "UPDATE jobs SET state = 'planned', attempts = max(attempts - 1, 0),"
                    " lease_owner = NULL, lease_boot = NULL, lease_expires_at = NULL,"
                    " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, msg.job_id),
                )
                self._move(JobState.LEASED, JobState.PLANNED)
                return ACCEPTED
            case Outcome():
                return self._outcome(msg, attempts=row[2], max_attempts=row[3])
            case _:
                assert_never(msg)

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

    def _outcome(self, msg: Outcome, *, attempts: int, max_attempts: int) -> object:
        kind = msg.kind
        error = msg.error
        if kind is OutcomeKind.RETRY and attempts >= max_attempts:
            kind = OutcomeKind.FAILED
            error = f"attempts exhausted ({attempts}/{max_attempts}): {msg.error}"
        target = {
            OutcomeKind.SUCCEEDED: JobState.SUCCEEDED,
            OutcomeKind.RETRY: JobState.PLANNED,
            OutcomeKind.FAILED: JobState.FAILED,
            OutcomeKind.SKIPPED: JobState.SKIPPED,
        }[kind]
        check_transition(JobState.LEASED, target)
        next_at = msg.retry_at if msg.retry_at is not None else self._now
        self.conn.execute(
            "UPDATE jobs SET state = ?, result = ?, last_error = ?, next_attempt_at = ?,"
            " lease_owner = NULL, lease_boot = NULL, lease_expires_at = NULL, updated_at = ?"
            " WHERE id = ?",
            (target.value, msg.result, error, next_at, self._now, msg.job_id),
        )
        self._move(JobState.LEASED, target)
        return ACCEPTED

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
        jobs: list[Job] = []
        params = []
        for (job_id, key, ident, payload, attempts, max_att, stage, fence, lease_s,
             timeout) in rows:
            check_transition(JobState.PLANNED, JobState.LEASED)
            seconds = lease_s if lease_s is not None else order.default_lease_seconds
            params.append((order.owner, order.boot_id, now + seconds, now, job_id))
            jobs.append(Job(
                id=job_id, key=key.hex(), identity=json.loads(ident),
                payload=json.loads(payload), attempt=attempts + 1, max_attempts=max_att,
                stage=stage, fence=fence + 1, lease_seconds=seconds,
                lease_expires_at=now + seconds, timeout=timeout,
            ))
        conn.executemany(
            "UPDATE jobs SET state = 'leased', lease_owner = ?, lease_boot = ?,"
            " lease_expires_at = ?, fence = fence + 1, attempts = attempts + 1,"
            " updated_at = ? WHERE id = ?",
            params,
        )
        if jobs:
            self._deltas[JobState.PLANNED] = self._deltas.get(JobState.PLANNED, 0) - len(jobs)
            self._deltas[JobState.LEASED] = self._deltas.get(JobState.LEASED, 0) + len(jobs)
        return jobs

    def _lose_lease(self, job_id: int, row: tuple[Any, ...], why: str) -> tuple[JobState, str]:
        """A lease whose owner is gone: back to planned, or failed when attempts are spent.

        The lost lease counts as an attempt (it was counted when it was granted), and is
        recorded as a crash, distinct from a handler error.
        """
        _state, _fence, attempts, max_attempts, stage, _exp, _key = row
        note = f"lease lost at stage {stage or 'start'}, attempt {attempts} ({why})"
        target = JobState.FAILED if attempts >= max_attempts else JobState.PLANNED
        check_transition(JobState.LEASED, target)
        self.conn.execute(
            "UPDATE jobs SET state = ?, last_error = ?, lease_owner = NULL, lease_boot = NULL,"
            " lease_expires_at = NULL, next_attempt_at = ?, updated_at = ? WHERE id = ?",
            (target.value, note, self._now, self._now, job_id),
        )
        self._move(JobState.LEASED, target)
        return target, note

    def _reap(self, msg: ReapExpired) -> object:
        reaped = 0
        for job_id, fence in msg.items:
            try:
                row = self._fenced(job_id, fence)
            except _Stale as stale:
                self._reject(job_id, msg, stale.reason)
                continue
            if row[5] is None or row[5] > self._now:
                self._reject(job_id, msg, "lease was renewed before it was reaped")
                continue
            self._lose_lease(job_id, row, "lease expired")
            reaped += 1
        return reaped

    def _requeue(self, msg: Requeue) -> int:
        check_transition(msg.state, JobState.PLANNED)  # before any row changes
        if msg.keys is None:
            ids = [r[0] for r in self.conn.execute(
                "SELECT id FROM jobs WHERE state = ?", (msg.state.value,))]
        else:
            ids = []
            for key in msg.keys:
                row = self.conn.execute(
                    "SELECT id FROM jobs WHERE key = ? AND state = ?",
                    (bytes.fromhex(key), msg.state.value),
                ).fetchone()
                if row is not None:
                    ids.append(row[0])
        for job_id in ids:
            self.conn.execute(
                "UPDATE jobs SET state = 'planned', attempts = 0, next_attempt_at = ?,"
                " result = NULL, updated_at = ? WHERE id = ?",
                (self._now, self._now, job_id),
            )
            self._move(msg.state, JobState.PLANNED)
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
        conn = self.conn
        stale = conn.execute(
            "SELECT id, fence FROM jobs WHERE state = 'leased'"
            " AND (lease_boot IS NULL OR lease_boot != ?)",
            (msg.boot_id,),
        ).fetchall()
        requeued = failed = 0
        lost: list[str] = []
        for job_id, fence in stale:
            row = self._fenced(job_id, fence)
            target, note = self._lose_lease(job_id, row, "its process is gone")
            requeued += target is JobState.PLANNED
            failed += target is JobState.FAILED
            if len(lost) < _MAX_LOST_LISTED:
                lost.append(f"job {bytes(row[6]).hex()[:16]}: {note}")
        dead = [r[0] for r in conn.execute(
            "SELECT name FROM workers WHERE boot_id != ? AND status NOT IN ('dead', 'stopped')",
            (msg.boot_id,),
        )]
        conn.executemany(
            "UPDATE workers SET status = 'dead' WHERE name = ?", [(n,) for n in dead]
        )
        report = ReconcileReport(
            boot_id=msg.boot_id, at=self._now, dry_run=msg.dry_run,
            leases_requeued=requeued, leases_failed=failed,
            workers_marked_dead=tuple(dead), lost=tuple(lost),
        )
        if not msg.dry_run:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('last_reconcile', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(report.as_dict()),),
            )
        return report
