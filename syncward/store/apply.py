"""What every message means, written once for every backend.

`Applier.apply` takes one batch of `SyncerMsg` and an open `WriteTx` (the backend's
bulk operations inside one transaction) and returns the `ApplyResult`: a result per
message, the committed deltas by state for the stats-keeper, the jobs leased, and a
recount when asked for. The backend opens, commits and rolls back the transaction; this
module decides:

* **fencing** — a message that changes a leased job carries the lease's fencing token;
  it is applied only while the job is still leased under that token, otherwise it is
  rejected on its own (a `Rejected` result and a row in the store's rejections) without
  disturbing the rest of the batch;
* **retry or fail** — a retryable outcome of a job whose attempts are spent fails it,
  naming why; a lease whose owner is gone counts as an attempt and is recorded as a crash;
* **dedupe** — job keys are inserted unless present, and a submit delivered again after
  its commit still counts the jobs it created as new (rows remember the creating token);
  the first ledger row for an op key wins, within a batch as across batches;
* **transitions** — every state change passes `check_transition`;
* **deltas** — every state change is counted here, so counts and rows cannot disagree.

Design note: the rows a batch touches are read once (`WriteTx.load`), every message is
checked against that in-memory view in order — which is updated as messages are
accepted, so per-job order is kept and a second final message for a job sees the first —
and the writes are queued and flushed as one bulk operation per kind. Flush order is
renewals, stages, final updates, releases: for any one job, non-final messages can only
precede its final one in a batch (after it the job is no longer leased under that
fence). The view is flushed before anything that reads the jobs table behind it
(requeue, cancel, leasing, reconciliation, a recount).

The lost-lease rule (`lost_outcome`) is the one rule a backend also runs itself: start-up
reconciliation may give back a hundred thousand leases, and one set-based UPDATE does
that in a third of the time that loading and writing the rows one by one takes. So the
rule is written here twice, side by side — in Python for a reaped lease and for the
memory store, and as the SQL fragments `LOST_STATE_SQL` and `lost_note_sql` that the SQL
backends put in their UPDATE — and the contract suite holds the two equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, assert_never

from syncward.errors import IllegalTransition
from syncward.jobs import TERMINAL, Job, JobState, check_transition
from syncward.limits import KeyBudget, split_limit_key
from syncward.messages import (
    ACCEPTED,
    CANCELLED,
    MAX_IMPORT_LISTED,
    ApplyResult,
    Cancel,
    CancelResult,
    Effect,
    EffectResult,
    FinishRun,
    Import,
    ImportConflict,
    ImportResult,
    LeaseOrder,
    NotRenewed,
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
    Result,
    RunRejects,
    SetMeta,
    Stage,
    StartRun,
    Submit,
    SubmitResult,
    SyncerMsg,
    Wake,
    WorkerStatus,
)
from syncward.store.base import WorkerState

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from syncward.limits import LimitRule
    from syncward.messages import ImportJob
    from syncward.store.port import (
        DueRow,
        FencedRow,
        FinalWrite,
        ImportRow,
        InsertJob,
        OpWrite,
        ReleaseWrite,
        RenewWrite,
        SkipWrite,
        StageWrite,
        WriteTx,
    )

__all__ = ["Applier"]

#: How soon a runtime that declares limits looks again for limited jobs that were not
#: due yet (their due times are not looked up one key at a time).
LIMIT_POLL = 1.0


_MIN_CHUNK = 16


@dataclass
class _KeyRows:
    """One limit key's due jobs read so far, in rank order, and how many it may take."""

    budget: KeyBudget
    room: int
    rows: list[tuple[float, int]]
    exhausted: bool  # a read found fewer than asked: no more are due


def _merge(free: list[tuple[float, int]], streams: list[_KeyRows], n: int
           ) -> tuple[list[int], list[int], tuple[float, int] | None]:
    """Up to ``n`` job ids by rank from the free jobs and the keys' rows, each key no more
    than its room; with how many each key gave, and the ``(rank, id)`` of the n-th (None
    when fewer than ``n`` were there)."""
    candidates = [(rank, job_id, -1) for rank, job_id in free]
    for k, s in enumerate(streams):
        candidates.extend((rank, job_id, k) for rank, job_id in s.rows)
    candidates.sort()
    chosen: list[int] = []
    counts = [0] * len(streams)
    for rank, job_id, k in candidates:
        if k >= 0:
            if counts[k] >= streams[k].room:
                continue
            counts[k] += 1
        chosen.append(job_id)
        if len(chosen) == n:
            return chosen, counts, (rank, job_id)
    return chosen, counts, None

MAX_LOST_LISTED = 20
GONE = "its process is gone"

#: `lost_outcome`'s state, as SQL over the jobs table's columns.
LOST_STATE_SQL = "CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'planned' END"


def lost_note_sql(why: str) -> str:
    """`lost_outcome`'s note, as SQL over the jobs table's columns (``why`` is a literal)."""
    literal = "'" + why.replace("'", "''") + "'"
    return ("'lease lost at stage ' || coalesce(stage, 'start') || ', attempt ' || attempts"
            f" || ' (' || {literal} || ')'")


def lost_outcome(attempts: int, max_attempts: int, stage: str | None,
                 why: str) -> tuple[JobState, str]:
    """Where a lease whose owner is gone sends its job, and the error it records.

    Planned again, or failed when its attempts are spent: the lost lease counts as an
    attempt (counted when it was granted) and is recorded as a crash, distinct from a
    handler error.
    """
    note = f"lease lost at stage {stage or 'start'}, attempt {attempts} ({why})"
    return (JobState.FAILED if attempts >= max_attempts else JobState.PLANNED), note
_OUTCOME_TARGET = {
    OutcomeKind.SUCCEEDED: JobState.SUCCEEDED,
    OutcomeKind.RETRY: JobState.PLANNED,
    OutcomeKind.FAILED: JobState.FAILED,
    OutcomeKind.SKIPPED: JobState.SKIPPED,
}
_FENCED = (Stage, Effect, Outcome, Release)


class Stale(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Applier:
    """The one write entry point's rules. Holds no state between batches."""

    async def apply(self, tx: WriteTx, batch: Sequence[SyncerMsg], *, now: float,
                    lease: LeaseOrder | None = None, recount: bool = False) -> ApplyResult:
        """Apply ``batch`` through ``tx`` (the caller commits or rolls back)."""
        b = _Batch(tx, now)
        await b.load(_touched_ids(batch))
        await b.all(batch)
        await b.flush()
        leased = await b.lease(lease) if lease is not None and lease.n > 0 else []
        deltas = {s: d for s, d in b.deltas.items() if d}
        if deltas:
            await tx.record_deltas(deltas)
        recounts = [m for m in batch if isinstance(m, Recount)]
        counts = checked = None
        if any(r.check for r in recounts):
            counts, checked = await tx.count_checked()
        elif recount or recounts:
            counts = await tx.count_by_state()
        results: list[Result] = []
        for r in b.results:
            assert r is not None, "an effect's result was never resolved"
            results.append(r)
        return ApplyResult(results=results, deltas=deltas, leased=leased, counts=counts,
                           checked=checked, wake_at=b.wake_at)


def _touched_ids(batch: Sequence[SyncerMsg]) -> set[int]:
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


@dataclass
class _ImportTally:
    """The counts of one `Import` as its jobs are classified."""

    new: dict[JobState, int] = field(default_factory=dict)
    unchanged: int = 0
    conflicts: int = 0
    listed: list[ImportConflict] = field(default_factory=list)

    def add_new(self, state: JobState) -> None:
        self.new[state] = self.new.get(state, 0) + 1

    def compare(self, key: bytes, job: ImportJob, existing: JobState) -> None:
        if job.state is JobState.PLANNED or job.state is existing:
            self.unchanged += 1
            return
        self.conflicts += 1
        if len(self.listed) < MAX_IMPORT_LISTED:
            self.listed.append(ImportConflict(key.hex(), job.line, existing, job.state))

    def result(self, *, dry_run: bool) -> ImportResult:
        return ImportResult(new=self.new, unchanged=self.unchanged, conflicts=self.conflicts,
                            conflicts_listed=tuple(self.listed), dry_run=dry_run)


@dataclass
class _Batch:
    """One batch in progress: the view of its rows, its queued writes, its results."""

    tx: WriteTx
    now: float
    rows: dict[int, FencedRow] = field(default_factory=dict)
    results: list[Result | None] = field(default_factory=list)
    deltas: dict[JobState, int] = field(default_factory=dict)
    renews: list[RenewWrite] = field(default_factory=list)
    stages: list[StageWrite] = field(default_factory=list)
    finals: list[FinalWrite] = field(default_factory=list)
    releases: list[ReleaseWrite] = field(default_factory=list)
    rejections: list[tuple[float, int | None, str, str]] = field(default_factory=list)
    effects: list[tuple[int, Effect]] = field(default_factory=list)  # (result index, msg)
    holds: list[tuple[int, float]] = field(default_factory=list)  # (job id, until)
    wake_at: float | None = None  # a limited lease: when a held-back key may start

    # --- the view ----------------------------------------------------------------------

    async def load(self, ids: set[int]) -> None:
        todo = [i for i in ids if i not in self.rows]
        if todo:
            for row in await self.tx.load(todo):
                self.rows[row.id] = row

    def leased(self, job_id: int, fence: int) -> FencedRow:
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

    def reject(self, job_id: int | None, msg: SyncerMsg, reason: str) -> Rejected:
        self.rejections.append((self.now, job_id, type(msg).__name__, reason))
        return Rejected(reason)

    def move(self, old: JobState, new: JobState, n: int = 1) -> None:
        if old is not new and n:
            self.deltas[old] = self.deltas.get(old, 0) - n
            self.deltas[new] = self.deltas.get(new, 0) + n

    def _move_row(self, row: FencedRow, target: JobState) -> None:
        check_transition(row.state, target)
        self.move(row.state, target)
        row.state = target

    def _end(self, row: FencedRow, by: str) -> None:
        row.ended_fence, row.ended_by, row.ended_here = row.fence, by, True

    async def flush(self) -> None:
        tx = self.tx
        if self.renews:
            await tx.renew(self.renews)
            self.renews = []
        if self.stages:
            await tx.set_stages(self.stages)
            self.stages = []
        if self.finals:
            await tx.finish(self.finals)
            self.finals = []
        if self.releases:
            await tx.release(self.releases)
            self.releases = []
        if self.effects:
            await self._record_effects()
        if self.rejections:
            await tx.reject(self.rejections)
            self.rejections = []
        if self.holds:
            await tx.hold_limits(self.holds)
            self.holds = []

    # --- dispatch ----------------------------------------------------------------------

    async def all(self, batch: Sequence[SyncerMsg]) -> None:
        """Results in message order; runs of consecutive submits are inserted together."""
        i = 0
        while i < len(batch):
            msg = batch[i]
            if isinstance(msg, Submit):
                j = i + 1
                while j < len(batch) and isinstance(batch[j], Submit):
                    j += 1
                self.results.extend(await self.submits(batch[i:j]))  # type: ignore[arg-type]
                i = j
                continue
            self.results.append(await self.one(msg))
            i += 1

    async def one(self, msg: SyncerMsg) -> Result | None:
        match msg:
            case Submit():
                return (await self.submits([msg]))[0]
            case Recount() | Wake():
                return ACCEPTED
            case Renew():
                return self.renew(msg)
            case Stage() | Effect() | Outcome() | Release():
                return self.fenced(msg)
            case ReapExpired():
                return self.reap(msg)
            case Requeue():
                return await self.requeue(msg)
            case Cancel():
                return await self.cancel(msg)
            case Reconcile():
                return await self.reconcile(msg)
            case RegisterWorker():
                return await self.register(msg)
            case WorkerStatus():
                await self.tx.set_worker_status([msg.name], msg.status, self.now)
                return ACCEPTED
            case RecordEvent():
                await self.tx.insert_event(msg.at, msg.kind,
                                           json.dumps(dict(msg.detail), default=str))
                return ACCEPTED
            case StartRun():
                return await self.tx.start_run(
                    msg.token, msg.source, json.dumps(dict(msg.options), default=str),
                    msg.boot_id, self.now)
            case RunRejects():
                await self.tx.insert_run_rejects(
                    [(msg.run_id, line, reason, raw) for line, reason, raw in msg.items])
                return ACCEPTED
            case FinishRun():
                await self.tx.finish_run(msg.run_id, msg.status, self.now)
                return ACCEPTED
            case SetMeta():
                return await self.tx.set_meta(msg.key, msg.value,
                                              only_if_absent=msg.only_if_absent)
            case Import():
                return await self.imports(msg)
            case _:
                assert_never(msg)

    # --- jobs --------------------------------------------------------------------------

    async def submits(self, msgs: Sequence[Submit]) -> list[SubmitResult]:
        """Insert the jobs of consecutive submits at once; count new and duplicate per message.

        The keys already present are looked up first, so each message learns its own
        counts although the rows go in with one bulk insert. A job row remembers the token
        of the submit that created it, so a submit delivered again (its commit went
        through, its reply did not) counts its own jobs as new. A key another writer
        inserted between the lookup and the insert (a shared store) counts as a duplicate.
        """
        now = self.now
        keys = [bytes.fromhex(j.key) for m in msgs for j in m.jobs]
        creator: dict[bytes, int | None] = await self.tx.creators(keys) if keys else {}
        rows: list[InsertJob] = []
        entries: list[tuple[int, int, bytes]] = []
        mine: list[tuple[int, bytes]] = []  # (message index, key) inserted by this batch
        counts: list[int] = []
        k = 0
        for index, msg in enumerate(msgs):
            new = 0
            counted: set[bytes] = set()
            for job in msg.jobs:
                key = keys[k]
                k += 1
                if key not in creator:
                    creator[key] = msg.token
                    counted.add(key)
                    mine.append((index, key))
                    rows.append((key, job.identity, job.payload, job.max_attempts, now,
                                 job.lease_seconds, job.timeout, msg.token, now,
                                 job.priority, job.limit_key))
                elif creator[key] == msg.token and key not in counted:
                    counted.add(key)  # created by this very message, delivered before
                    new += 1
                if msg.run_id is not None and job.line is not None:
                    entries.append((msg.run_id, job.line, key))
            counts.append(new)
        if rows:
            inserted = await self.tx.insert_jobs(rows)
            for index, key in mine:
                if key in inserted:
                    counts[index] += 1
            self.deltas[JobState.PLANNED] = self.deltas.get(JobState.PLANNED, 0) + len(inserted)
        if entries:
            await self.tx.insert_run_entries(entries)
        return [SubmitResult(new=new, duplicates=len(msg.jobs) - new)
                for new, msg in zip(counts, msgs, strict=True)]

    async def imports(self, msg: Import) -> ImportResult:
        """Create jobs in their imported states; never change a key that exists.

        An existing key is unchanged when it is in the imported state, or the import says
        planned (the job is there already); otherwise it is a conflict, kept as it is. A
        key twice in one message is compared with its first occurrence. Rows remember the
        message's token, so a redelivered Import counts its own rows as new again. A key
        another writer inserted between the lookup and the insert (a shared store) is
        looked up again and compared. A dry run only reads.
        """
        await self.flush()  # queued final writes change states the lookup must see
        keys = [bytes.fromhex(j.key) for j in msg.jobs]
        found = await self.tx.existing(keys) if keys else {}
        tally = _ImportTally()
        seen: dict[bytes, JobState] = {}  # keys this message creates (or created before)
        pending: list[tuple[bytes, ImportJob]] = []
        rows: list[ImportRow] = []
        now = self.now
        for key, job in zip(keys, msg.jobs, strict=True):
            if key in seen:
                tally.compare(key, job, seen[key])
                continue
            hit = found.get(key)
            if hit is None:
                seen[key] = job.state
                pending.append((key, job))
                rows.append((key, job.identity, job.payload, job.state.value, job.result,
                             job.error, job.attempts, job.max_attempts, now, msg.token, now,
                             job.limit_key))
            elif hit[1] == msg.token:  # created by this very message, delivered before
                seen[key] = job.state
                tally.add_new(job.state)
            else:
                tally.compare(key, job, hit[0])
        if msg.dry_run or not rows:
            for _, job in pending:
                tally.add_new(job.state)
            return tally.result(dry_run=msg.dry_run)
        inserted = await self.tx.insert_imported(rows)
        raced = [key for key, _ in pending if key not in inserted]
        again = await self.tx.existing(raced) if raced else {}
        for key, job in pending:
            if key in inserted:
                tally.add_new(job.state)
                self.deltas[job.state] = self.deltas.get(job.state, 0) + 1
            else:
                hit = again.get(key)
                tally.compare(key, job, hit[0] if hit is not None else job.state)
        return tally.result(dry_run=False)

    def renew(self, msg: Renew) -> Result:
        stale: list[tuple[int, int]] = []
        for job_id, fence, seconds in msg.items:
            try:
                row = self.leased(job_id, fence)
            except Stale as exc:
                stale.append((job_id, fence))
                self.reject(job_id, msg, f"{exc.reason}: lease not renewed")
                continue
            row.lease_expires_at = self.now + seconds
            self.renews.append((row.lease_expires_at, self.now, row.id, row.fence))
        if not stale:
            return ACCEPTED
        return NotRenewed(f"{len(stale)} lease(s) were no longer held", leases=tuple(stale))

    def fenced(self, msg: Stage | Effect | Outcome | Release) -> Result | None:
        try:
            row = self.leased(msg.job_id, msg.fence)
            match msg:
                case Stage():
                    self.reach(row, msg.stage)
                case Effect():
                    if msg.stage is not None:
                        self.reach(row, msg.stage)
                    self.effects.append((len(self.results), msg))
                    return None  # resolved when the ledger rows are written
                case Outcome():
                    self.outcome(row, msg)
                case Release():
                    self.release(row)
                case _:
                    assert_never(msg)
            return ACCEPTED
        except Stale as stale:
            if isinstance(msg, Outcome) and self.already_applied(msg):
                return ACCEPTED  # the same outcome, delivered again: already committed
            return self.reject(msg.job_id, msg, stale.reason)
        except IllegalTransition as exc:
            return self.reject(msg.job_id, msg, str(exc))

    def reach(self, row: FencedRow, stage: str) -> None:
        check_transition(row.state, JobState.LEASED)
        row.stage = stage
        self.stages.append((stage, self.now, row.id, row.fence))

    def outcome(self, row: FencedRow, msg: Outcome) -> None:
        kind, error = msg.kind, msg.error
        if kind is OutcomeKind.RETRY and row.attempts >= row.max_attempts:
            kind = OutcomeKind.FAILED
            error = f"attempts exhausted ({row.attempts}/{row.max_attempts}): {msg.error}"
        self._move_row(row, _OUTCOME_TARGET[kind])
        self._end(row, msg.kind.value)
        next_at = msg.retry_at if msg.retry_at is not None else self.now
        if msg.hold_key and msg.retry_at is not None:  # its limit key, if it has one
            self.holds.append((row.id, msg.retry_at))
        self.finals.append((row.state.value, msg.result, error, next_at, row.attempts,
                            row.fence, msg.kind.value, self.now, row.id))

    def release(self, row: FencedRow) -> None:
        """Given back unfinished (shutdown): planned again, the attempt not counted."""
        self._move_row(row, JobState.PLANNED)
        row.attempts = max(row.attempts - 1, 0)
        self._end(row, "released")
        self.releases.append((row.attempts, self.now, row.fence, self.now, row.id))

    def lose(self, row: FencedRow, why: str) -> None:
        """A leased row whose owner is gone (see `lost_outcome`)."""
        target, note = lost_outcome(row.attempts, row.max_attempts, row.stage, why)
        self._move_row(row, target)
        self._end(row, "lost")
        self.finals.append((row.state.value, None, note, self.now, row.attempts, row.fence,
                            "lost", self.now, row.id))

    def already_applied(self, msg: Outcome) -> bool:
        """Whether this outcome is the one that already ended its lease (a redelivery).

        True only if the last lease of the job to end was ``msg.fence``, an outcome of the
        same kind ended it — even if the job has been leased again since — and it was not
        ended within this batch (a second outcome for one lease in one batch is stale).
        """
        row = self.rows.get(msg.job_id)
        return (row is not None and not row.ended_here and row.ended_fence == msg.fence
                and row.ended_by == msg.kind.value)

    async def _record_effects(self) -> None:
        """Write the queued ledger rows (first writer of an op key wins) and answer them."""
        pending, self.effects = self.effects, []
        first: dict[bytes, int] = {}  # op key -> result index of its first writer here
        writes: list[OpWrite] = []
        for index, msg in pending:
            key = bytes.fromhex(msg.op_key)
            if key not in first:
                first[key] = index
                writes.append((key, msg.job_id, msg.kind, msg.result, self.now))
        stored = await self.tx.record_ops(writes)
        for index, msg in pending:
            key = bytes.fromhex(msg.op_key)
            result, inserted = stored[key]
            ours = inserted and first[key] == index
            self.results[index] = EffectResult(result=result, recorded_before=not ours)

    def reap(self, msg: ReapExpired) -> Result:
        reaped = 0
        for job_id, fence in msg.items:
            try:
                row = self.leased(job_id, fence)
            except Stale as stale:
                self.reject(job_id, msg, stale.reason)
                continue
            if row.lease_expires_at is None or row.lease_expires_at > self.now:
                self.reject(job_id, msg, "lease was renewed before it was reaped")
                continue
            self.lose(row, "lease expired")
            reaped += 1
        return reaped

    async def requeue(self, msg: Requeue) -> Result:
        """Terminal jobs back to planned with attempts reset (the dead-letter path)."""
        if msg.state not in TERMINAL:
            return self.reject(None, msg, str(IllegalTransition(
                msg.state, JobState.PLANNED, job="(requeue: not terminal)")))
        try:
            check_transition(msg.state, JobState.PLANNED)  # before any row changes
        except IllegalTransition as exc:
            return self.reject(None, msg, str(exc))
        await self.flush()
        keys = None if msg.keys is None else [bytes.fromhex(k) for k in msg.keys]
        ids = await self.tx.requeue_candidates(msg.state, keys, msg.decided_at)
        if ids:
            await self.tx.requeue([(self.now, self.now, job_id) for job_id in ids])
            viewed = {job_id for job_id in ids if self.rows.pop(job_id, None) is not None}
            await self.load(viewed)  # the view must not keep the terminal state
        self.move(msg.state, JobState.PLANNED, len(ids))
        return len(ids)

    async def cancel(self, msg: Cancel) -> Result:
        """Planned and leased jobs to skipped; a leased one's lease ends ("cancelled").

        Its owner's later messages under that fence are then stale (fencing), so an
        effect it committed before stays, and nothing after commits. The rows are read
        behind the view, so the view is flushed first and the rows it holds are the ones
        changed (a later message of the batch sees the job skipped).
        """
        await self.flush()
        wanted = None if msg.keys is None else list(dict.fromkeys(msg.keys))
        states = ((msg.state,) if msg.state is not None
                  else (JobState.PLANNED, JobState.LEASED))
        found = await self.tx.cancel_candidates(
            states, None if wanted is None else [bytes.fromhex(k) for k in wanted],
            msg.decided_at)
        skips: list[SkipWrite] = []
        finals: list[FinalWrite] = []
        planned = 0
        leases: list[tuple[int, int]] = []
        finished: list[str] = []
        already: list[str] = []
        other: list[str] = []
        seen: set[str] = set()
        for fresh in found:
            row = self.rows.setdefault(fresh.id, fresh)  # the view's row, if it has one
            seen.add(row.key.hex())
            if wanted is None and row.state not in states:
                continue  # another writer changed it since its id was read: not asked for
            if row.state is JobState.SKIPPED and row.ended_by == CANCELLED:
                already.append(row.key.hex())
            elif row.state in TERMINAL:
                finished.append(row.key.hex())
            elif row.state not in states:
                other.append(row.key.hex())
            elif row.state is JobState.PLANNED:
                self._move_row(row, JobState.SKIPPED)
                row.ended_by = CANCELLED
                skips.append((CANCELLED, self.now, row.id))
                planned += 1
            else:
                self._move_row(row, JobState.SKIPPED)
                self._end(row, CANCELLED)
                row.lease_expires_at = None
                finals.append((row.state.value, None, CANCELLED, self.now, row.attempts,
                               row.fence, CANCELLED, self.now, row.id))
                leases.append((row.id, row.fence))
        if skips:
            await self.tx.skip_planned(skips)
        if finals:
            await self.tx.finish(finals)
        return CancelResult(
            planned=planned, leased=len(leases), leases=tuple(leases),
            finished=tuple(finished), other_state=tuple(other),
            already_cancelled=tuple(already),
            not_found=tuple(k for k in wanted or () if k not in seen))

    async def lease(self, order: LeaseOrder) -> list[Job]:
        """Lease up to ``order.n`` due jobs: fence and attempts go up by one."""
        await self.flush()
        check_transition(JobState.PLANNED, JobState.LEASED)
        if order.limits is None:
            rows = await self.tx.lease_due(order, self.now)
        else:
            rows = await self.lease_limited(order, order.limits)
        now = self.now
        loads = json.loads
        default_seconds = order.default_lease_seconds
        jobs: list[Job] = []
        for r in rows:
            seconds = r.lease_seconds if r.lease_seconds is not None else default_seconds
            jobs.append(Job(
                id=r.id, key=r.key.hex(), identity=loads(r.identity),
                payload={} if r.payload == "{}" else loads(r.payload), attempt=r.attempts,
                max_attempts=r.max_attempts, stage=r.stage, fence=r.fence,
                lease_seconds=seconds, lease_expires_at=now + seconds, timeout=r.timeout,
            ))
        self.move(JobState.PLANNED, JobState.LEASED, len(jobs))
        return jobs

    async def lease_limited(self, order: LeaseOrder,
                            rules: Mapping[str, LimitRule]) -> list[DueRow]:
        """Lease in rank order, skipping jobs whose limit key has no room (`syncward.limits`).

        Each limit key's room (concurrency, rate, hold) is counted once; the jobs without
        a limit key and each key's best due jobs (a chunk of them) are merged by rank, a
        key's taken while it has room. A key whose chunk ran out while it had room, before
        the merge was done, reads its next chunk and the merge is made again. ``wake_at``
        says when a key held back by its rate or a hold may start again (a key at its
        concurrency starts again when one of its leases ends: the syncer looks again then).
        """
        tx, now, n = self.tx, self.now, order.n
        free = await tx.due_ids(now, None, n)
        keys = await tx.planned_limit_keys()
        usage = await tx.limit_usage(keys) if keys else {}
        budgets: list[KeyBudget] = []
        streams: list[_KeyRows] = []
        waiting = False
        # A fair share and a quarter more: jobs spread over the keys mostly need no second
        # read; a key that has more of the best ones reads on (see the loop below).
        share = n // max(1, len(keys))
        chunk = max(_MIN_CHUNK, share + share // 4 + 1)
        for key in keys:
            leased, tat, held = usage.get(key, (0, None, None))
            budget = KeyBudget(key, rules.get(split_limit_key(key)), leased, tat, held)
            budgets.append(budget)
            room = budget.room(now, n)
            if room <= 0:  # held or rate-bound: it says when; at its concurrency: a lease
                # of this runtime that ends wakes the syncer, another's does not: look again
                waiting = waiting or budget.blocked_until(now) is None
                continue
            want = min(room, chunk)
            rows = await tx.due_ids(now, key, want)
            streams.append(_KeyRows(budget, room, rows, len(rows) < want))
        while True:
            chosen, counts, last = _merge(free, streams, n)
            short = [k for k, s in enumerate(streams)
                     if not s.exhausted and counts[k] == len(s.rows) < s.room
                     and (last is None or s.rows[-1] <= last)]
            if not short:
                break
            for k in short:  # it may have more jobs ranked before the merge's last
                s = streams[k]
                want = min(chunk, s.room - len(s.rows))
                page = await tx.due_ids(now, s.budget.key, want, after=s.rows[-1])
                s.exhausted = len(page) < want
                s.rows.extend(page)
        for k, s in enumerate(streams):
            s.budget.take_many(now, counts[k])
            waiting = waiting or s.exhausted  # some may not be due yet: look again soon
        wake = [at for b in budgets if (at := b.blocked_until(now)) is not None]
        if waiting:
            wake.append(now + LIMIT_POLL)
        self.wake_at = min(wake, default=None)
        changed = [(b.key, b.tat, b.held_until) for b in budgets if b.changed]
        if changed:
            await tx.save_limits(changed)
        return await tx.lease_ids(order, now, chosen) if chosen else []

    # --- workers and reconciliation ----------------------------------------------------

    async def register(self, msg: RegisterWorker) -> Result:
        """One worker per boot, named from the store's atomic counter, never a listing."""
        name = await self.tx.worker_by_boot(msg.boot_id)
        if name is not None:
            return name
        name = f"worker-{await self.tx.next_worker_number()}"
        await self.tx.insert_worker(name, msg.boot_id, msg.pid, msg.host, self.now)
        return name

    async def reconcile(self, msg: Reconcile) -> Result:
        """Leases whose owners the store proves gone go back (`lost_outcome`), set-based.

        Workers of dead boots are marked dead and their runs interrupted. A dry run
        reports the same without changing anything.
        """
        tx = self.tx
        await self.flush()
        lost = await tx.lose_leases(msg.boot_id, self.now, GONE, dry_run=msg.dry_run)
        dead = await tx.dead_workers(msg.boot_id)
        if not msg.dry_run:
            check_transition(JobState.LEASED, JobState.PLANNED)
            check_transition(JobState.LEASED, JobState.FAILED)
            self.move(JobState.LEASED, JobState.PLANNED, lost.requeued)
            self.move(JobState.LEASED, JobState.FAILED, lost.failed)
            await tx.set_worker_status(dead, WorkerState.DEAD.value, self.now)
            if lost.requeued or lost.failed:  # rows of this batch's view changed behind it
                viewed = {i for i in self.rows if self.rows[i].state is JobState.LEASED}
                for job_id in viewed:
                    del self.rows[job_id]
                await self.load(viewed)
        interrupted = await tx.interrupt_runs(msg.boot_id, self.now, dry_run=msg.dry_run)
        report = ReconcileReport(
            boot_id=msg.boot_id, at=self.now, dry_run=msg.dry_run,
            leases_requeued=lost.requeued, leases_failed=lost.failed,
            workers_marked_dead=tuple(dead), runs_interrupted=interrupted,
            lost=tuple(f"job {key.hex()[:16]}: {note}" for key, note in lost.listed),
        )
        if not msg.dry_run:
            await tx.set_meta("last_reconcile", json.dumps(report.as_dict()),
                              only_if_absent=False)
        return report
