"""The reconciler: workers heartbeat and are reconciled continuously, not only at start-up.

Owns: nothing that outlives it. The `ReconcileHistory` it records into and its mailbox of
`Tracked` reconciliations belong to the runtime.
Receives: `Tracked` — a `Reconcile` someone else sent through the syncer with a reply (the
PostgreSQL liveness keeper's, when a boot died: the runtime's store hooks attach the reply),
to wait for, time and record.
Sends, every ``every`` seconds (when given; the runtime gives it on an exclusive store,
where nothing else reconciles after start-up): this worker's heartbeat (`WorkerStatus`)
and a dry-run `Reconcile` to the syncer, in one batch; when the dry run finds anything to
fix, the real `Reconcile`. Each cycle's `ReconcileReport` goes into the history.

Design note: the dry run first, because a real `Reconcile` rewrites the store's
``last_reconcile`` record: a cycle that finds nothing would otherwise hide, after one
period, what start-up reconciliation found (``syncward status`` shows it). A cycle that
finds nothing is recorded with the dry run's report, marked as not a dry run: applying
it would have changed nothing.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio

from syncward.actors._periodic import LoopActor
from syncward.errors import MailboxClosed
from syncward.messages import Reconcile, ReconcileReport, Reply, WorkerStatus
from syncward.store.base import WorkerState

if TYPE_CHECKING:
    from collections.abc import Callable

    from syncward.actors.mailbox import Mailbox
    from syncward.clock import Clock
    from syncward.messages import SyncerMsg

__all__ = ["FIXES", "ReconcileCycle", "ReconcileHistory", "ReconcileOrigin", "Reconciler",
           "Tracked", "fixes"]

log = logging.getLogger("syncward.reconciler")
CONSUMER = "reconciler"

#: The kinds of issue a reconciliation fixes (the metrics' ``kind`` label).
FIXES = ("leases_requeued", "leases_failed", "workers_marked_dead", "runs_interrupted")


class ReconcileOrigin(enum.StrEnum):
    STARTUP = "startup"  # before any actor started
    PERIODIC = "periodic"  # this reconciler's cycle
    LIVENESS = "liveness"  # the store saw another boot die (PostgreSQL's keeper)
    MANUAL = "manual"  # Runtime.reconcile (the admin API)


def fixes(report: ReconcileReport) -> dict[str, int]:
    """What ``report`` fixed, by kind (a dry run's: what it would fix)."""
    return {"leases_requeued": report.leases_requeued, "leases_failed": report.leases_failed,
            "workers_marked_dead": len(report.workers_marked_dead),
            "runs_interrupted": report.runs_interrupted}


@dataclass(frozen=True, slots=True)
class ReconcileCycle:
    """One reconciliation: where it came from, when, how long it took, what it found."""

    origin: ReconcileOrigin
    at: float  # the runtime clock's time when it was asked for
    seconds: float  # from asking to its commit
    report: ReconcileReport

    @property
    def fixed(self) -> int:
        return sum(fixes(self.report).values())

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin.value, "at": self.at, "seconds": self.seconds,
                "fixed": self.fixed, **fixes(self.report), "report": self.report.as_dict()}


class ReconcileHistory:
    """The last ``keep`` cycles, newest last, and running totals since the runtime started.

    Owned by the runtime; every reconciliation that changed (or could have changed) the
    store is recorded here, whatever asked for it. Dry runs asked for by a person are not.
    """

    def __init__(self, keep: int = 100) -> None:
        self._cycles: deque[ReconcileCycle] = deque(maxlen=keep)
        self.startup: ReconcileCycle | None = None
        self.total = 0
        self.seconds_total = 0.0
        self.fixed: Counter[str] = Counter(dict.fromkeys(FIXES, 0))
        self._changed: anyio.Event | None = None  # made when someone waits

    async def wait_for(self, total: int) -> None:
        """Return once ``total`` reconciliations have been recorded."""
        while self.total < total:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def record(self, cycle: ReconcileCycle) -> None:
        if cycle.origin is ReconcileOrigin.STARTUP:
            self.startup = cycle
        self._cycles.append(cycle)
        self.total += 1
        self.seconds_total += cycle.seconds
        self.fixed.update(fixes(cycle.report))
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        if cycle.fixed and cycle.origin is not ReconcileOrigin.STARTUP:
            log.warning("%s reconciliation fixed: %s", cycle.origin.value,
                        {k: v for k, v in fixes(cycle.report).items() if v})

    def cycles(self) -> tuple[ReconcileCycle, ...]:
        return tuple(self._cycles)

    def as_dict(self, *, limit: int | None = None) -> dict[str, Any]:
        """Start-up report, totals and the newest ``limit`` cycles, newest first."""
        recent = list(self._cycles)[::-1]
        return {"startup": self.startup.as_dict() if self.startup is not None else None,
                "cycles_total": self.total, "seconds_total": self.seconds_total,
                "fixed_total": dict(self.fixed),
                "cycles": [c.as_dict() for c in recent[:limit]]}


@dataclass(frozen=True, slots=True)
class Tracked:
    """A reconciliation sent by someone else, whose reply the reconciler records."""

    reply: Reply[ReconcileReport]
    origin: ReconcileOrigin
    at: float
    started: float  # time.perf_counter() when it was sent


class Reconciler(LoopActor):
    """One incarnation of the reconciler. See the module docstring."""

    def __init__(self, *, syncer: Mailbox[SyncerMsg], mailbox: Mailbox[Tracked],
                 history: ReconcileHistory, clock: Clock, boot_id: str,
                 worker: Callable[[], str], every: float | None,
                 closing: Callable[[], bool]) -> None:
        super().__init__()
        self.syncer = syncer
        self.mailbox = mailbox
        self.history = history
        self.clock = clock
        self.boot_id = boot_id
        self.worker = worker
        self.every = every
        self.closing = closing

    async def _loop(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.every is not None:
                tg.start_soon(self._periodic, self.every)
            await self._watch()

    async def _watch(self) -> None:
        try:
            while True:
                tracked = await self.mailbox.receive(CONSUMER)
                try:
                    report = await tracked.reply.wait()
                except Exception as exc:  # the syncer refused it: nothing was done
                    log.warning("a %s reconciliation failed: %s", tracked.origin.value, exc)
                else:
                    self.history.record(ReconcileCycle(
                        tracked.origin, tracked.at, time.perf_counter() - tracked.started,
                        report))
                self.mailbox.ack(CONSUMER)
        except MailboxClosed:
            await anyio.sleep_forever()

    async def _periodic(self, every: float) -> None:
        while True:
            await self.clock.sleep(every)
            if self.closing():
                return  # the worker is being marked stopped: no heartbeat may follow
            await self.cycle()

    async def cycle(self) -> ReconcileCycle:
        """Heartbeat, then one reconciliation cycle (see the module docstring)."""
        at, started = self.clock.now(), time.perf_counter()
        look: Reply[ReconcileReport] = Reply()
        worker = self.worker()
        if worker:
            await self.syncer.send(WorkerStatus(worker, WorkerState.RUNNING))
        await self.syncer.send(Reconcile(self.boot_id, dry_run=True, reply=look))
        report = await look.wait()
        if any(fixes(report).values()):
            fix: Reply[ReconcileReport] = Reply()
            await self.syncer.send(Reconcile(self.boot_id, reply=fix))
            report = await fix.wait()
        else:
            report = replace(report, dry_run=False)  # applying it would change nothing
        cycle = ReconcileCycle(ReconcileOrigin.PERIODIC, at, time.perf_counter() - started,
                               report)
        self.history.record(cycle)
        return cycle
