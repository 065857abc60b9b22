"""The typed messages actors exchange, and the `Reply` a sender may wait on.

Everything the syncer applies is a `SyncerMsg`: the union below is its whole protocol.
Each message is idempotent to apply twice (INSERT OR IGNORE, updates fenced by the
lease's token), so redelivery after a crash is always safe.

Messages that change a leased job carry ``(job_id, fence)``: the fencing token the lease
was granted with. A message whose fence no longer matches the job (the lease was reaped
and granted again) is rejected individually and never touches the newer owner's work.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from syncward.jobs import Job, JobState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from syncward.limits import LimitRule

__all__ = [
    "Accepted",
    "ApplyResult",
    "Cancel",
    "CancelResult",
    "Effect",
    "EffectResult",
    "FinishRun",
    "Import",
    "ImportConflict",
    "ImportJob",
    "ImportResult",
    "LeaseOrder",
    "NewJob",
    "NotRenewed",
    "Outcome",
    "OutcomeKind",
    "Reconcile",
    "ReconcileReport",
    "RecordEvent",
    "Recount",
    "Rejected",
    "Release",
    "Renew",
    "Reply",
    "Requeue",
    "Result",
    "RegisterWorker",
    "RunRejects",
    "SetMeta",
    "Stage",
    "StartRun",
    "Submit",
    "SubmitResult",
    "SyncerMsg",
    "Wake",
    "WorkerStatus",
    "refuse",
    "settle",
]

T = TypeVar("T")

#: Submit tokens need to be unique, not secret: a generator seeded once from the OS's
#: randomness, rather than a system call per submit (12 µs here, on every single-job
#: submit of an embedding app).
_TOKENS = random.Random(os.urandom(32))


class Reply(Generic[T]):
    """A one-shot slot the syncer fills after commit; the sender awaits `wait`.

    Set at most once: a redelivered message whose reply was already set (it committed in
    an earlier incarnation that crashed before forgetting it) keeps the first value.
    An `asyncio.Event` (the runtime runs on asyncio or uvloop only): one per submit, stage
    and effect, where anyio's looked its backend up on every creation.
    """

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> T:
        """The committed result.

        Raises:
            BaseException: whatever the syncer failed this reply with (e.g. it was stopped).
        """
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Accepted:
    """The message was applied and committed."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The message was refused on its own (stale fence, illegal transition, unknown job)."""

    reason: str


@dataclass(frozen=True, slots=True)
class NotRenewed(Rejected):
    """A `Renew` some of whose leases were no longer held: which, as ``(job id, fence)``."""

    leases: tuple[tuple[int, int], ...] = ()


ACCEPTED = Accepted()


@dataclass(frozen=True, slots=True)
class SubmitResult:
    new: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class EffectResult:
    """The committed result of an effect: ours, or the one recorded first."""

    result: str  # JSON text
    recorded_before: bool


# --- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job of a `Submit`, already keyed and encoded (see `syncward.jobs`)."""

    key: str
    identity: str  # canonical JSON
    payload: str  # JSON
    max_attempts: int
    lease_seconds: float | None = None
    timeout: float | None = None
    line: int | None = None  # manifest line, when submitted as part of a run
    priority: int = 0
    limit_key: str | None = None  # see `syncward.limits`


@dataclass(frozen=True, slots=True)
class Submit:
    """Create jobs (INSERT OR IGNORE). ``on_commit`` acknowledges an upstream source.

    ``token`` names this message: the jobs it creates remember it, so if the message is
    delivered again after its commit, it still counts them as new, not as duplicates.
    """

    jobs: tuple[NewJob, ...]
    run_id: int | None = None
    reply: Reply[SubmitResult] | None = None
    on_commit: Callable[[SubmitResult], None] | None = None
    token: int = field(default_factory=lambda: _TOKENS.getrandbits(62))


@dataclass(frozen=True, slots=True)
class ImportJob:
    """One job of an `Import`, keyed and encoded as a `NewJob` is, with the state (and
    result, error, attempts) it is to be created in. ``state`` is never LEASED."""

    key: str
    identity: str  # canonical JSON
    payload: str  # JSON
    state: JobState
    result: str | None  # JSON text
    error: str | None
    attempts: int
    max_attempts: int
    line: int | None = None  # where it was read (a file's line, a list's index + 1)
    limit_key: str | None = None  # see `syncward.limits` (set by a runtime that has limits)


@dataclass(frozen=True, slots=True)
class ImportConflict:
    """A key that exists in another state than the one imported (it was kept)."""

    key: str
    line: int | None
    existing: JobState
    imported: JobState


#: Conflicts (and rejected records) an `ImportResult` lists; its counts are exact.
MAX_IMPORT_LISTED = 100


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did (or, with ``dry_run``, would do).

    ``new`` counts the jobs created, by the state they were created in. A key that already
    existed is never changed: it is ``unchanged`` when it is in the imported state (or the
    import said planned: the job is there already), otherwise a conflict. ``rejected``
    counts records that could not become jobs (filled in by the reader, not the store).
    The lists hold the first `MAX_IMPORT_LISTED` of each.
    """

    new: Mapping[JobState, int] = field(default_factory=dict)
    unchanged: int = 0
    conflicts: int = 0
    conflicts_listed: tuple[ImportConflict, ...] = ()
    rejected: int = 0
    rejected_listed: tuple[tuple[int, str], ...] = ()  # (line, reason)
    dry_run: bool = False

    @property
    def total_new(self) -> int:
        return sum(self.new.values())

    def merged(self, other: ImportResult) -> ImportResult:
        """Both results' counts added, their lists joined (still bounded)."""
        new = dict(self.new)
        for state, n in other.new.items():
            new[state] = new.get(state, 0) + n
        return ImportResult(
            new=new, unchanged=self.unchanged + other.unchanged,
            conflicts=self.conflicts + other.conflicts,
            conflicts_listed=(self.conflicts_listed + other.conflicts_listed
                              )[:MAX_IMPORT_LISTED],
            rejected=self.rejected + other.rejected,
            rejected_listed=(self.rejected_listed + other.rejected_listed)[:MAX_IMPORT_LISTED],
            dry_run=self.dry_run or other.dry_run)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "new": {s.value: self.new.get(s, 0) for s in JobState if s is not JobState.LEASED},
            "unchanged": self.unchanged,
            "conflicts": self.conflicts,
            "conflicts_listed": [{"key": c.key, "line": c.line, "existing": c.existing.value,
                                  "imported": c.imported.value}
                                 for c in self.conflicts_listed],
            "rejected": self.rejected,
            "rejected_listed": [{"line": line, "reason": reason}
                                for line, reason in self.rejected_listed],
        }


@dataclass(frozen=True, slots=True)
class Import:
    """Create jobs in a given state (bringing in an existing pipeline's state).

    A key that exists is never changed (see `ImportResult`). With ``dry_run`` nothing is
    written and the result says what would be. ``token`` names this message as a
    `Submit`'s does: its rows remember it, so a redelivered Import counts them as new
    again, not as unchanged.
    """

    jobs: tuple[ImportJob, ...]
    dry_run: bool = False
    reply: Reply[ImportResult] | None = None
    token: int = field(default_factory=lambda: _TOKENS.getrandbits(62))


@dataclass(frozen=True, slots=True)
class Recount:
    """Ask for a consistent count by state, taken inside the next committed batch.

    The stats-keeper sends it at start (``reset``: its counts become the snapshot), on
    its recount period (a check: the store counts its rows, and any difference from what
    was kept is drift) and, on a store several runtimes write, every few seconds
    (``refresh``: the store's running totals, which include the other writers' commits).
    """

    reset: bool = False
    refresh: bool = False

    @property
    def check(self) -> bool:
        return not (self.reset or self.refresh)


@dataclass(frozen=True, slots=True)
class Wake:
    """Work may be due now (another runtime submitted it): lease at once, not at the next
    poll. Changes nothing in the store."""


@dataclass(frozen=True, slots=True)
class Renew:
    """Extend leases: each item is ``(job_id, fence, lease_seconds)``. Batched.

    The reply, when asked for, is `Accepted`, or `NotRenewed` naming the leases the store
    no longer held (their owner stops working on them: `syncward.actors.attempts`).
    """

    items: tuple[tuple[int, int, float], ...]
    reply: Reply[Accepted | Rejected] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Stage:
    """Commit a milestone of a leased job; a retried job resumes knowing it."""

    job_id: int
    fence: int
    stage: str
    reply: Reply[Accepted | Rejected] | None = None


@dataclass(frozen=True, slots=True)
class Effect:
    """Record an effect's result in the operation ledger (first writer wins).

    With ``stage``, the job reaches that stage in the same commit as the record: one
    commit where a `Stage` after the `Effect` would take two.
    """

    job_id: int
    fence: int
    op_key: str
    kind: str
    result: str  # JSON text
    reply: Reply[EffectResult | Rejected] | None = None
    stage: str | None = None


class OutcomeKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # planned again at retry_at, or failed when attempts are exhausted
    FAILED = "failed"  # permanent
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended. Returns one slot of downloader capacity as well."""

    job_id: int
    fence: int
    kind: OutcomeKind
    result: str | None = None  # JSON text, on success
    error: str | None = None
    retry_at: float | None = None
    reply: Reply[Accepted | Rejected] | None = None
    hold_key: bool = False  # RETRY: hold back the job's whole limit key until retry_at


@dataclass(frozen=True, slots=True)
class Release:
    """Give a lease back unfinished (shutdown): planned again, the attempt not counted."""

    job_id: int
    fence: int


@dataclass(frozen=True, slots=True)
class ReapExpired:
    """Send expired leases back, fenced, so a renewal that raced the reaper wins."""

    items: tuple[tuple[int, int], ...]  # (job_id, fence)


@dataclass(frozen=True, slots=True)
class Requeue:
    """Send terminal jobs back to planned with attempts reset (the dead-letter path).

    Only jobs that have not changed since ``decided_at`` (when the requeue was decided)
    are requeued, so a redelivered Requeue cannot requeue a job that failed after it.
    """

    state: JobState = JobState.FAILED
    keys: tuple[str, ...] | None = None  # None: every job in ``state``
    decided_at: float = field(default_factory=time.time)
    reply: Reply[int] | None = None


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a `Cancel` did: planned and leased jobs skipped, and the given keys it left.

    ``leases`` are the ``(job id, fence)`` of the leases it ended: their owners cancel
    the handlers (see `syncward.actors.attempts`). ``already_cancelled``: given keys
    whose job a cancel had already skipped (an earlier one, or this very message
    delivered again after its commit); ``finished``: given keys whose job had otherwise
    already ended (left alone); ``other_state``: given keys whose job is active but not in
    the state asked for; ``not_found``: given keys with no job.
    """

    planned: int = 0
    leased: int = 0
    leases: tuple[tuple[int, int], ...] = ()
    finished: tuple[str, ...] = ()
    other_state: tuple[str, ...] = ()
    not_found: tuple[str, ...] = ()
    already_cancelled: tuple[str, ...] = ()

    @property
    def cancelled(self) -> int:
        return self.planned + self.leased

    def as_dict(self) -> dict[str, Any]:
        return {"cancelled": self.cancelled, "planned": self.planned, "leased": self.leased,
                "running": [{"job_id": i, "fence": f} for i, f in self.leases],
                "already_cancelled": list(self.already_cancelled),
                "finished": list(self.finished), "other_state": list(self.other_state),
                "not_found": list(self.not_found)}


#: What a cancelled job's ``last_error`` says, and what ended its lease.
CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel jobs: a planned one becomes skipped; a leased one becomes skipped and its
    lease ends (``ended_by`` "cancelled"), so its owner's later stages, effects, outcome
    and renewals are rejected as stale. Terminal jobs are left alone; effects committed
    before stay committed.

    ``keys`` names the jobs (None: every job in ``state``); ``state`` is planned or
    leased (None: both). Without keys, only jobs created at or before ``decided_at`` are
    cancelled, so a redelivered Cancel cannot cancel a job submitted after it.

    Raises:
        ValueError: ``state`` is not planned, leased or None.
    """

    keys: tuple[str, ...] | None = None
    state: JobState | None = None
    reply: Reply[CancelResult] | None = None
    decided_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in (JobState.PLANNED, JobState.LEASED):
            raise ValueError(f"cancel: state must be planned or leased, got {self.state}")


@dataclass(frozen=True, slots=True)
class RegisterWorker:
    """Name this boot's worker from the store's atomic counter, never from a listing.

    One worker per boot: applied again (redelivery), it returns the same name.
    """

    boot_id: str
    pid: int
    host: str
    reply: Reply[str]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    name: str
    status: str  # "running" | "stopped" | "dead"


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """An entry in the store's event log (restarts, source gaps, escalations)."""

    kind: str
    detail: Mapping[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class SetMeta:
    """Write one key of the store's metadata; the reply is the value stored after commit.

    With ``only_if_absent`` a value already there is kept (and is the reply), so applying
    it twice, or after another writer, gives the first value.
    """

    key: str
    value: str
    only_if_absent: bool = False
    reply: Reply[str] | None = None


@dataclass(frozen=True, slots=True)
class StartRun:
    """Record a run; ``token`` (unique) makes a redelivered StartRun return the same id."""

    token: str
    source: str
    options: Mapping[str, Any]
    reply: Reply[int]
    boot_id: str = ""  # the runtime that runs it: its death interrupts the run


@dataclass(frozen=True, slots=True)
class RunRejects:
    """Manifest lines that could not become jobs, with why."""

    run_id: int
    items: tuple[tuple[int, str, str], ...]  # (line, reason, raw text)
    reply: Reply[Accepted | Rejected] | None = None


@dataclass(frozen=True, slots=True)
class FinishRun:
    run_id: int
    status: str
    reply: Reply[Accepted | Rejected] | None = None


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    boot_id: str
    at: float
    dry_run: bool
    leases_requeued: int = 0
    leases_failed: int = 0
    workers_marked_dead: tuple[str, ...] = ()
    runs_interrupted: int = 0
    lost: tuple[str, ...] = ()  # "job <key>: lease lost at stage X, attempt n" (first few)
    adapters: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One readable line: the counts (the lost jobs themselves are in ``lost``)."""
        verb = "would be" if self.dry_run else "were"
        parts = [f"{self.leases_requeued} lease(s) of dead processes {verb} requeued",
                 f"{self.leases_failed} failed (attempts spent)"]
        if self.workers_marked_dead:
            parts.append(f"{len(self.workers_marked_dead)} worker(s) marked dead "
                         f"({', '.join(self.workers_marked_dead[:5])}"
                         f"{', ...' if len(self.workers_marked_dead) > 5 else ''})")
        if self.runs_interrupted:
            parts.append(f"{self.runs_interrupted} run(s) marked interrupted")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "boot_id": self.boot_id,
            "at": self.at,
            "dry_run": self.dry_run,
            "leases_requeued": self.leases_requeued,
            "leases_failed": self.leases_failed,
            "workers_marked_dead": list(self.workers_marked_dead),
            "runs_interrupted": self.runs_interrupted,
            "lost": list(self.lost),
            "adapters": dict(self.adapters),
        }


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Reconciliation: the leases, workers and runs of every boot the store proves dead
    (every other boot, on an exclusive store; a boot whose lock is free, on a shared one)
    go back at once. Sent at start-up, periodically, and by the liveness keeper."""

    boot_id: str
    dry_run: bool = False
    reply: Reply[ReconcileReport] | None = None


SyncerMsg: TypeAlias = (
    Submit
    | Recount
    | Renew
    | Stage
    | Effect
    | Outcome
    | Release
    | ReapExpired
    | Requeue
    | RegisterWorker
    | WorkerStatus
    | RecordEvent
    | StartRun
    | RunRejects
    | FinishRun
    | Reconcile
    | SetMeta
    | Wake
    | Import
    | Cancel
)


@dataclass(frozen=True, slots=True)
class LeaseOrder:
    """Lease up to ``n`` due jobs to ``owner`` within this batch."""

    n: int
    owner: str
    boot_id: str
    default_lease_seconds: float
    limits: Mapping[str, LimitRule] | None = None  # by limit name; None: no limits declared


#: What applying one message gives (see `settle` for which message gets which).
Result: TypeAlias = (
    Accepted | Rejected | SubmitResult | EffectResult | ReconcileReport | int | str
    | ImportResult
    | CancelResult
)


@dataclass(slots=True)
class ApplyResult:
    """What one committed batch did: a result per message, in order, and the deltas."""

    results: list[Result]
    deltas: dict[JobState, int]
    leased: list[Job]
    counts: dict[JobState, int] | None = None  # the store's totals, when a Recount asked
    checked: dict[JobState, int] | None = None  # its rows counted, when a check asked
    wake_at: float | None = None  # a limited lease: when a held-back key may start again


def settle(msg: SyncerMsg, result: Result) -> None:
    """Complete ``msg``'s wait, if it has one, with its committed ``result``.

    Raises:
        TypeError: ``result`` is not what this kind of message is answered with (a bug in
            the applier, never the sender's fault).
    """
    match msg:
        case Submit(reply=Reply() as reply):
            reply.set(_expect(result, SubmitResult, msg))
        case Stage(reply=Reply() as reply) | Outcome(reply=Reply() as reply) | RunRejects(
                reply=Reply() as reply) | FinishRun(reply=Reply() as reply):
            reply.set(_expect(result, Accepted | Rejected, msg))
        case Effect(reply=Reply() as effect_reply):
            effect_reply.set(_expect(result, EffectResult | Rejected, msg))
        case Requeue(reply=Reply() as count) | StartRun(reply=Reply() as count):
            count.set(_expect(result, int, msg))
        case RegisterWorker(reply=Reply() as text) | SetMeta(reply=Reply() as text):
            text.set(_expect(result, str, msg))
        case Reconcile(reply=Reply() as report):
            report.set(_expect(result, ReconcileReport, msg))
        case Import(reply=Reply() as imported):
            imported.set(_expect(result, ImportResult, msg))
        case Cancel(reply=Reply() as cancelled):
            cancelled.set(_expect(result, CancelResult, msg))
        case Renew(reply=Reply() as renewed):
            renewed.set(_expect(result, Accepted | Rejected, msg))
        case _:
            pass  # no reply asked for


def refuse(msg: SyncerMsg, error: Exception) -> None:
    """Answer ``msg``'s wait for a message the store cannot apply at all.

    A message whose answer may be `Rejected` gets one naming the error; any other wait
    fails with ``error`` itself.
    """
    rejected = Rejected(f"cannot be applied: {type(error).__name__}: {error}")
    match msg:
        case Stage(reply=Reply() as reply) | Outcome(reply=Reply() as reply) | RunRejects(
                reply=Reply() as reply) | FinishRun(reply=Reply() as reply):
            reply.set(rejected)
        case Effect(reply=Reply() as effect_reply):
            effect_reply.set(rejected)
        case Submit(reply=Reply() as other) | Requeue(reply=Reply() as other) | StartRun(
                reply=Reply() as other) | RegisterWorker(reply=Reply() as other) | SetMeta(
                reply=Reply() as other) | Reconcile(reply=Reply() as other):
            other.fail(error)
        case Import(reply=Reply() as imported):
            imported.fail(error)
        case Cancel(reply=Reply() as cancelled):
            cancelled.fail(error)
        case Renew(reply=Reply() as renewed):
            renewed.set(rejected)
        case _:
            pass


def _expect(result: Result, kind: Any, msg: SyncerMsg) -> Any:
    if not isinstance(result, kind) or (kind is int and isinstance(result, bool)):
        raise TypeError(f"{type(msg).__name__} answered with {type(result).__name__}")
    return result
