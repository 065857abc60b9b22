"""Fenced messages on leased jobs, checked in memory and written in bulk.

Design note: a batch of a thousand outcomes used to cost a SELECT and an UPDATE each. Now
the rows a batch touches are read once (`FencedRows.load`, one query per 500 ids), every
message is checked against that in-memory view in order — which is updated as messages
are accepted, so per-job order is kept and a second final message for a job sees the
first — and the writes are queued and flushed with `executemany`, one statement per
kind. Flush order is renewals, stages, then final updates (outcome, release, reap): for
any one job, non-final messages can only precede its final one in a batch (after it the
job is no longer leased under that fence), and renewals and stages touch disjoint
columns. The applier flushes before anything that reads the jobs table (leasing,
requeue, reconciliation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncward.jobs import JobState, check_transition
from syncward.messages import Outcome, OutcomeKind

if TYPE_CHECKING:
    import sqlite3

__all__ = ["FencedRows", "Row", "Stale"]

_OUTCOME_TARGET = {
    OutcomeKind.SUCCEEDED: JobState.SUCCEEDED,
    OutcomeKind.RETRY: JobState.PLANNED,
    OutcomeKind.FAILED: JobState.FAILED,
    OutcomeKind.SKIPPED: JobState.SKIPPED,
}
_LOAD_CHUNK = 500


class Stale(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class Row:
    """The columns of a job that fenced messages check and change."""

    id: int
    state: JobState
    fence: int
    attempts: int
    max_attempts: int
    stage: str | None
    lease_expires_at: float | None
    key: bytes
    ended_fence: int | None  # the last lease that ended, and what ended it: a redelivered
    ended_by: str | None  # outcome is recognised as already applied by these
    ended_here: bool = False  # ended by a message of this very batch


@dataclass
class FencedRows:
    """In-memory view of the rows one batch touches, plus the writes it has queued."""

    conn: sqlite3.Connection
    now: float
    rows: dict[int, Row] = field(default_factory=dict)
    renews: list[tuple[Any, ...]] = field(default_factory=list)
    stages: list[tuple[Any, ...]] = field(default_factory=list)
    finals: list[tuple[Any, ...]] = field(default_factory=list)
    releases: list[tuple[Any, ...]] = field(default_factory=list)
    rejections: list[tuple[Any, ...]] = field(default_factory=list)
    deltas: dict[JobState, int] = field(default_factory=dict)

    def load(self, ids: set[int]) -> None:
        todo = [i for i in ids if i not in self.rows]
        for start in range(0, len(todo), _LOAD_CHUNK):
            chunk = todo[start:start + _LOAD_CHUNK]
            marks = ",".join("?" * len(chunk))
            for r in self.conn.execute(
                "SELECT id, state, fence, attempts, max_attempts, stage, lease_expires_at, key,"
                f" ended_fence, ended_by FROM jobs WHERE id IN ({marks})", chunk,
            ):
                self.rows[r[0]] = Row(r[0], JobState(r[1]), r[2], r[3], r[4], r[5], r[6], r[7],
                                      r[8], r[9])

    def leased(self, job_id: int, fence: int) -> Row:
        """The row, if it is leased under ``fence``.

        Raises:
            Stale: unknown job, not leased, or leased under another fence.
        """
        row = self.rows.get(job_id)
        if row is None:
            raise Stale(f"unknown job id {job_id}")
        if row.fence != fence or row.state is not JobState.LEASED:
            raise Stale(f"stale fence {fence}: job is {row.state.value} with fence {row.fence}")
        return row

    def reject(self, job_id: int | None, message: str, reason: str) -> None:
        self.rejections.append((self.now, job_id, message, reason))

    def _end(self, row: Row, by: str) -> None:
        row.ended_fence, row.ended_by, row.ended_here = row.fence, by, True

    def _move(self, row: Row, target: JobState) -> None:
        check_transition(row.state, target)
        if row.state is not target:
            self.deltas[row.state] = self.deltas.get(row.state, 0) - 1
            self.deltas[target] = self.deltas.get(target, 0) + 1
            row.state = target

    # --- the messages ----------------------------------------------------------------

    def renew(self, row: Row, seconds: float) -> None:
        row.lease_expires_at = self.now + seconds
        self.renews.append((row.lease_expires_at, self.now, row.id, row.fence))

    def stage(self, row: Row, name: str) -> None:
        check_transition(row.state, JobState.LEASED)
        row.stage = name
        self.stages.append((name, self.now, row.id))

    def outcome(self, row: Row, msg: Outcome) -> None:
        kind, error = msg.kind, msg.error
        if kind is OutcomeKind.RETRY and row.attempts >= row.max_attempts:
            kind = OutcomeKind.FAILED
            error = f"attempts exhausted ({row.attempts}/{row.max_attempts}): {msg.error}"
        self._move(row, _OUTCOME_TARGET[kind])
        self._end(row, msg.kind.value)
        next_at = msg.retry_at if msg.retry_at is not None else self.now
        self.finals.append((row.state.value, msg.result, error, next_at, row.attempts,
                            row.fence, row.ended_by, self.now, row.id))

    def release(self, row: Row) -> None:
        self._move(row, JobState.PLANNED)
        row.attempts = max(row.attempts - 1, 0)
        self._end(row, "released")
        self.releases.append((row.attempts, self.now, row.fence, self.now, row.id))

    def lose(self, row: Row, why: str) -> str:
        """A lease whose owner is gone: planned again, or failed when attempts are spent.

        The lost lease counts as an attempt (counted when it was granted) and is recorded
        as a crash, distinct from a handler error.
        """
        note = f"lease lost at stage {row.stage or 'start'}, attempt {row.attempts} ({why})"
        target = JobState.FAILED if row.attempts >= row.max_attempts else JobState.PLANNED
        self._move(row, target)
        self._end(row, "lost")
        self.finals.append((row.state.value, None, note, self.now, row.attempts, row.fence,
                            row.ended_by, self.now, row.id))
        return note

    def already_applied(self, msg: Outcome) -> bool:
        """Whether this outcome is the one that already ended its lease (a redelivery).

        True only if the last lease of the job to end was ``msg.fence``, an outcome of the
        same kind ended it — even if the job has been leased again since — and it was not
        ended within this batch (a second outcome for one lease in one batch is stale).
        """
        row = self.rows.get(msg.job_id)
        return (row is not None and not row.ended_here and row.ended_fence == msg.fence
                and row.ended_by == msg.kind.value)

    # --- writing ---------------------------------------------------------------------

    def flush(self) -> None:
        conn = self.conn
        if self.renews:
            conn.executemany(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ?"
                " WHERE id = ? AND fence = ? AND state = 'leased'", self.renews)
            self.renews.clear()
        if self.stages:
            conn.executemany("UPDATE jobs SET stage = ?, updated_at = ? WHERE id = ?",
                             self.stages)
            self.stages.clear()
        if self.finals:
            conn.executemany(
                "UPDATE jobs SET state = ?, result = ?, last_error = ?,"
                " next_attempt_at = ?, attempts = ?, ended_fence = ?, ended_by = ?,"
                " lease_owner = NULL, lease_boot = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE id = ?", self.finals)
            self.finals.clear()
        if self.releases:
            conn.executemany(
                "UPDATE jobs SET state = 'planned', attempts = ?, next_attempt_at = ?,"
                " ended_fence = ?, ended_by = 'released', lease_owner = NULL,"
                " lease_boot = NULL, lease_expires_at = NULL, updated_at = ? WHERE id = ?",
                self.releases)
            self.releases.clear()
        if self.rejections:
            conn.executemany(
                "INSERT INTO rejections (at, job_id, message, reason) VALUES (?, ?, ?, ?)",
                self.rejections)
            self.rejections.clear()
