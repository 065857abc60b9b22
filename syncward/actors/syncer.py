"""The syncer: the only writer of the store. Group commit, then acknowledge.

Owns: nothing that outlives it. Its mailbox, the downloaders' work mailbox, the stats
mailbox, its `SyncerHealth` and the `LeaseControl` all belong to the runtime, so a
restarted syncer loses nothing: messages it had taken but not committed are in flight
in its mailbox and are delivered again, first.

Receives: `SyncerMsg` (submits, stages, effects, outcomes, renewals, reaps, ...).
Sends, only after the batch's transaction has committed, in this order:
  1. a `StatsUpdate` with the committed deltas to the stats-keeper (before anyone is told,
     so "submit returned" implies "the stats-keeper will see it");
  2. the jobs leased in this batch to the work mailbox;
  3. the leases a `Cancel` ended, to ``on_ended`` (the runtime cancels its own handlers
     running under them, before any sender hears of the commit);
  4. replies to senders that wait, and the upstream acknowledgements (``on_commit``);
  5. the ack of the batch in its own mailbox.
A crash anywhere in that list redelivers the batch, which is safe: every message is
idempotent to apply again, and replies keep their first value.

Leasing is a write, so it happens here, inside the same transactions: each batch leases
as many due jobs as the work mailbox has free room (its capacity is the downloaders'
concurrency plus a small prefetch; a slot frees when a downloader finishes a job).

A failed commit is rolled back by the store; the batch is retried with exponential
back-off, the failure is visible in `SyncerHealth`, and after ``escalate_after`` seconds of
continuous failure the syncer raises `CommitFailing` to its supervisor.

Instrumentation: an optional `CommitObserver` (the web app's metrics) is told of every
committed batch, once per batch, after the replies. Absent (the default), the syncer pays
one attribute test per batch and reads no extra clock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from syncward.errors import (
    MailboxClosed,
    MailboxFull,
    StoreFailing,
    StoreFailure,
    StoreUnavailable,
    SyncwardError,
)
from syncward.jobs import Job, JobState
from syncward.messages import (
    ApplyResult,
    CancelResult,
    LeaseOrder,
    Outcome,
    Recount,
    Rejected,
    Release,
    Submit,
    SubmitResult,
    SyncerMsg,
    Wake,
    refuse,
    settle,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from syncward.actors.mailbox import Mailbox
    from syncward.clock import Clock
    from syncward.limits import LimitRule
    from syncward.store.base import Store
    from syncward.testing.faults import Faults

__all__ = [
    "CommitFailing",
    "CommitObserver",
    "LeaseControl",
    "StatsUpdate",
    "Syncer",
    "SyncerConfig",
    "SyncerHealth",
]

CONSUMER = "syncer"
log = logging.getLogger("syncward.syncer")


class CommitFailing(SyncwardError):
    """Commits kept failing for longer than the configured limit: escalate."""

    def __init__(self, since: float, retries: int, cause: str) -> None:
        self.since = since
        self.retries = retries
        super().__init__(f"commits failing for {retries} retries since {since:.3f}: {cause}")


@dataclass(frozen=True, slots=True)
class SyncerConfig:
    """Group commit and failure handling.

    ``max_batch`` messages or ``max_delay`` seconds of gathering make a transaction.
    (1 ms rather than 5: measured with 100 downloaders, a longer gathering mostly kept
    them waiting for their next lease — 25% fewer no-op jobs/s at 5 ms.)
    A failed commit is retried after ``retry_initial`` seconds, doubling up to
    ``retry_max``; after ``escalate_after`` seconds of failure the syncer escalates. A
    failure of the store's environment (a full disk, a read-only filesystem, its file
    removed: `StoreFailure`) does not mend by waiting: after ``fatal_after`` seconds of
    it (at once for a removed file) the syncer reports `StoreFailing` to the runtime,
    which stops (see `Runtime`).
    ``idle_poll`` bounds how long an idle syncer goes without looking for due jobs.
    """

    max_batch: int = 1000
    max_delay: float = 0.001
    retry_initial: float = 0.05
    retry_max: float = 2.0
    escalate_after: float = 300.0
    fatal_after: float = 5.0
    idle_poll: float = 0.5


@dataclass(frozen=True, slots=True)
class StatsUpdate:
    """Committed deltas of one batch, and a consistent recount when one was asked for."""

    deltas: dict[JobState, int]
    counts: dict[JobState, int] | None = None
    reset: bool = False
    checked: dict[JobState, int] | None = None  # the rows counted, for a check


class CommitObserver(Protocol):
    """Told of each committed batch (metrics). Called on the syncer's task: keep it cheap,
    never await, never raise."""

    def committed(self, batch: Sequence[SyncerMsg], result: ApplyResult,
                  seconds: float) -> None:
        """``batch`` committed with ``result`` (one result per message, in order);
        ``seconds`` is how long the store's transaction took."""
        ...


@dataclass
class SyncerHealth:
    """What status and health say about the syncer. Owned by the runtime."""

    commits: int = 0
    messages: int = 0
    rejected: int = 0
    last_commit_at: float | None = None
    error: str | None = None
    error_since: float | None = None
    retries: int = 0
    failures_total: int = 0
    last_reset_at: float | None = None  # the commit that took the stats-keeper's snapshot
    last_check_at: float | None = None  # the last commit that counted rows for drift
    changed: anyio.Event = field(default_factory=anyio.Event, repr=False)

    def notify(self) -> None:
        """Wake whoever waits for the next change (set after each commit and failure)."""
        self.changed.set()
        self.changed = anyio.Event()

    def as_dict(self) -> dict[str, Any]:
        return {
            "commits": self.commits, "messages": self.messages, "rejected": self.rejected,
            "last_commit_at": self.last_commit_at, "error": self.error,
            "error_since": self.error_since, "retries": self.retries,
            "failures_total": self.failures_total, "last_reset_at": self.last_reset_at,
            "last_check_at": self.last_check_at,
        }


@dataclass
class LeaseControl:
    """Whether and for whom the syncer leases. Owned by the runtime."""

    owner: str
    boot_id: str
    default_lease_seconds: float
    enabled: bool = True
    # Leases granted by a commit may be held by nobody: the commit's outcome was unknown,
    # or the incarnation that made it was stopped (a crash, a restart) between its commit
    # and handing the jobs out. Set before every commit that leases, cleared once its jobs
    # are handed out; the next incarnation must know too, so this lives here.
    orphans_possible: bool = False
    renew_wake: anyio.Event = field(default_factory=anyio.Event)
    limits: Mapping[str, LimitRule] | None = None  # the runtime's limits per key, if any

    def pause(self) -> None:
        """Stop leasing (shutdown): jobs already leased run on, no new ones are handed out."""
        self.enabled = False


class Syncer:
    """One incarnation of the syncer actor. See the module docstring."""

    def __init__(self, *, store: Store, mailbox: Mailbox[SyncerMsg], work: Mailbox[Job],
                 stats: Mailbox[StatsUpdate], health: SyncerHealth, control: LeaseControl,
                 clock: Clock, config: SyncerConfig, faults: Faults | None = None,
                 observer: CommitObserver | None = None,
                 on_fatal: Callable[[StoreFailing], None] | None = None,
                 on_ended: Callable[[Sequence[tuple[int, int]]], None] | None = None) -> None:
        self.store = store
        self.on_ended = on_ended
        self.mailbox = mailbox
        self.work = work
        self.stats = stats
        self.health = health
        self.control = control
        self.clock = clock
        self.config = config
        self.faults = faults
        self.observer = observer
        self.on_fatal = on_fatal
        self._stopping = False
        self._next_due: float | None = 0.0  # unknown: look at once
        self._releases: list[Release] = []  # leases to give back with the next commit

    def request_stop(self) -> None:
        """Drain: commit everything already in the mailbox, then return."""
        self._stopping = True
        self.mailbox.close()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        cfg = self.config
        while True:
            try:
                batch = await self._receive(cfg)
            except MailboxClosed:
                if self._releases:
                    await self._commit([])  # leases handed out too late: give them back
                return
            await self._commit(batch)

    async def _receive(self, cfg: SyncerConfig) -> list[SyncerMsg]:
        if self._demand() and self._next_due is not None:
            timeout = max(0.0, min(self._next_due - self.clock.now(), cfg.idle_poll))
        else:
            timeout = cfg.idle_poll
        return await self.mailbox.receive_batch(
            CONSUMER, cfg.max_batch, max_delay=cfg.max_delay, timeout=timeout)

    def _demand(self) -> int:
        if not self.control.enabled or self._stopping:
            return 0
        work = self.work
        return max(0, work.capacity - len(work) - work.in_flight())

    async def _commit(self, batch: list[SyncerMsg]) -> None:
        cfg = self.config
        delay = cfg.retry_initial
        recounts = [m for m in batch if isinstance(m, Recount | Wake)]
        if any(isinstance(m, Wake) for m in recounts):
            self._next_due = self.clock.now()  # another runtime said: work is due
        while True:
            demand = min(self._demand(), cfg.max_batch)
            order = None
            due = self._next_due is not None and self._next_due <= self.clock.now()
            if demand and due and not self.control.orphans_possible:
                c = self.control
                order = LeaseOrder(n=demand, owner=c.owner, boot_id=c.boot_id,
                                   default_lease_seconds=c.default_lease_seconds,
                                   limits=c.limits)
            extra: list[SyncerMsg] = list(self._releases)
            if order is None and not extra and all(isinstance(m, Wake) for m in batch):
                if batch:  # wake-ups with no room to lease into: nothing to commit
                    self.mailbox.ack(CONSUMER, len(batch))
                return
            if self.faults is not None:
                self.faults.check("syncer.before_commit")
            if order is not None:
                self.control.orphans_possible = True  # until this commit's jobs are out
            try:
                now = self.clock.now()
                observer = self.observer  # the one told of this batch, if any
                started = time.perf_counter() if observer is not None else 0.0
                result = await self.store.apply(extra + batch, now=now, lease=order)
                break
            except StoreUnavailable as exc:
                # The commit's outcome is unknown: it may have granted leases that are
                # never handed out; the flag stays set and they are looked for after the
                # next successful commit.
                await self._record_failure(exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, cfg.retry_max)
            except Exception as exc:  # not transient: some message cannot be applied
                if not batch:
                    raise
                await self._isolate(batch, exc)
                return
        self._releases = []
        result.results = result.results[len(extra):]
        seconds = time.perf_counter() - started if observer is not None else 0.0
        await self._after_commit(batch, result, order, now, recounts)
        if observer is not None:
            observer.committed(batch, result, seconds)

    async def _isolate(self, batch: list[SyncerMsg], exc: Exception) -> None:
        """A batch failed with a non-transient error: find the message that causes it.

        Each message is committed on its own, in order; the one that still fails is
        refused (its sender's wait fails with the error, or gets `Rejected`) and
        acknowledged, instead of crashing the syncer on it again after every restart.
        """
        if len(batch) > 1:
            for msg in batch:
                await self._commit([msg])
            return
        # Only a store that commits an empty batch proves the fault is this message's: an
        # unclassified failure of the store itself must crash (and be redelivered), never
        # turn every message into a refusal.
        await self.store.apply([], now=self.clock.now())
        (msg,) = batch
        log.error("refusing a %s the store cannot apply: %s: %s", type(msg).__name__,
                  type(exc).__name__, exc)
        self.health.rejected += 1
        refuse(msg, exc)
        self.mailbox.ack(CONSUMER, 1)

    async def _record_failure(self, exc: StoreUnavailable) -> None:
        h = self.health
        now = self.clock.now()
        if h.error_since is None:
            h.error_since = now
        h.error = str(exc)
        h.retries += 1
        h.failures_total += 1
        h.notify()
        if exc.kind is not StoreFailure.TRANSIENT:
            if exc.kind is StoreFailure.GONE or now - h.error_since >= self.config.fatal_after:
                failing = StoreFailing(exc.kind, self.store.url, exc.cause_text)
                if self.on_fatal is None:
                    raise failing from exc
                self.on_fatal(failing)  # the runtime stops, this actor with it
                await anyio.sleep_forever()
        if now - h.error_since > self.config.escalate_after:
            raise CommitFailing(h.error_since, h.retries, str(exc)) from exc

    async def _after_commit(self, batch: list[SyncerMsg], result: ApplyResult,
                            order: LeaseOrder | None, now: float,
                            recounts: list[Recount | Wake]
                            ) -> None:
        if self.on_ended is not None:  # first, before anything that can fail or wait
            ended = [lease for res in result.results if type(res) is CancelResult
                     for lease in res.leases]
            if ended:
                self.on_ended(ended)
        h = self.health
        h.commits += 1
        h.messages += len(batch)
        h.last_commit_at = now
        h.error = h.error_since = None
        h.retries = 0
        h.notify()
        if result.deltas or result.counts is not None:
            # A stats-keeper that restarted asked for a reset: any Recount of the batch may
            # be it, and the snapshot is the same for all of them.
            update = StatsUpdate(deltas=result.deltas, counts=result.counts,
                                 reset=any(isinstance(r, Recount) and r.reset
                                           for r in recounts),
                                 checked=result.checked)
            if update.reset:
                h.last_reset_at = now
            if update.checked is not None:
                h.last_check_at = now
            if self._stopping:  # the stats-keeper has stopped: counts reload at next start
                with contextlib.suppress(MailboxClosed, MailboxFull):
                    self.stats.send_nowait(update)
            else:
                with contextlib.suppress(MailboxClosed):
                    await self.stats.send(update)
        self._hand_out(result.leased)
        if order is not None:
            self.control.orphans_possible = False  # every lease of this commit is out
        elif self.control.orphans_possible:
            await self._adopt_orphans()
        if order is not None:
            full = len(result.leased) == order.n
            if full:
                self._next_due = now
            elif order.limits is None:
                self._next_due = await self._lookup_next_due()
            else:  # limited jobs held back say themselves when they may start
                self._next_due = _earliest(await self._lookup_next_due(limited=False),
                                           result.wake_at)
        elif result.deltas.get(JobState.PLANNED, 0) > 0:
            self._next_due = now  # new or returned work: look for it in the next batch
        elif self.control.limits is not None and result.deltas.get(JobState.LEASED, 0) < 0:
            self._next_due = now  # a lease ended: its limit key may have room again
        if self.faults is not None:
            self.faults.check("syncer.after_commit")
        for msg, res in zip(batch, result.results, strict=True):
            if isinstance(res, Rejected):
                h.rejected += 1
            settle(msg, res)
            if isinstance(msg, Submit) and msg.on_commit is not None:
                assert isinstance(res, SubmitResult)
                msg.on_commit(res)
        self.mailbox.ack(CONSUMER, len(batch))

    def _hand_out(self, jobs: list[Job]) -> None:
        """Give newly leased jobs to the downloaders, or back if they have stopped.

        Leases granted by a commit that finished after the pool closed its mailbox are
        released by the next commit (prepended to it), so shutdown leaves none behind.
        """
        for i, job in enumerate(jobs):
            try:
                self.work.send_nowait(job)
            except (MailboxClosed, MailboxFull):
                self._releases.extend(Release(j.id, j.fence) for j in jobs[i:])
                return
        if any(j.lease_seconds < self.control.default_lease_seconds for j in jobs):
            self.control.renew_wake.set()  # the renewer may be asleep for longer than that

    async def _adopt_orphans(self) -> None:
        """Hand out leases of this boot that no downloader holds and no outcome ends.

        After a commit whose outcome was unknown, the leases it granted may be committed
        although the syncer never handed them out; without this they would sit until
        their expiry and then cost an attempt. No new leases are granted until this has
        run, so the orphans fit in the room they were granted for.
        """
        c = self.control
        try:
            leased = await self.store.leased_jobs(
                c.boot_id, default_lease_seconds=c.default_lease_seconds)
        except StoreUnavailable:
            return
        held = {(j.id, j.fence) for j in self.work.pending()}
        ending = {(m.job_id, m.fence) for m in self.mailbox.pending()
                  if isinstance(m, Outcome | Release)}
        self._hand_out([job for job in leased
                        if (job.id, job.fence) not in held and (job.id, job.fence) not in ending])
        self.control.orphans_possible = False

    async def _lookup_next_due(self, *, limited: bool = True) -> float | None:
        try:
            return await self.store.next_due(limited=limited)
        except StoreUnavailable:
            return self.clock.now() + self.config.idle_poll


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
