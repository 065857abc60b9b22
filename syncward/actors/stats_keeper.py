"""The stats-keeper: counts by state that are true from the first answer on.

Owns: nothing that outlives it; the `Stats` it maintains belongs to the runtime.
Receives: `StatsUpdate` from the syncer, in commit order (its own mailbox).
Sends: `Recount` requests to the syncer — one with ``reset`` when it starts, then one per
``recount_every`` seconds.

Design note: a count read on a separate connection races the deltas already committed
but still on their way here, so it would show drift that is not real (or hide drift
that is). Instead the recount is taken by the syncer *inside* a committed batch and
arrives in the same ordered stream as the deltas: at that point the stats-keeper's
counts and the snapshot describe the same commit, and any difference is real drift.
Until the reset snapshot arrives, `Stats.loaded` is False and nothing is reported;
deltas from before the snapshot are already inside it and are discarded.

A store several runtimes write (``shared``) changes under this keeper's feet: its own
deltas are not the whole story. Such a store keeps running totals by state in the same
transactions as its rows, so every ``refresh_every`` seconds the keeper asks for them
(`Recount(refresh=True)`, a tiny read) and adopts them: every runtime's counts are then
within a few seconds of every other runtime's commits. Drift is then the store's own
check — its totals against its rows, counted in one transaction on the recount period —
and must be 0 as well.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from syncward.errors import MailboxClosed
from syncward.jobs import ACTIVE, JobState
from syncward.messages import RecordEvent, Recount, SyncerMsg

if TYPE_CHECKING:
    from syncward.actors.mailbox import Mailbox
    from syncward.actors.syncer import StatsUpdate
    from syncward.clock import Clock
    from syncward.testing.faults import Faults

__all__ = ["Stats", "StatsKeeper", "StatsSnapshot"]

CONSUMER = "stats-keeper"
log = logging.getLogger("syncward.stats")


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Counts by state as of the last commit the stats-keeper has applied."""

    counts: dict[JobState, int]
    total: int
    drift_checks: int
    last_drift: dict[JobState, int]
    drift_total: int

    @property
    def active(self) -> int:
        return sum(self.counts[s] for s in ACTIVE)

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": {str(s): n for s, n in self.counts.items()},
            "total": self.total,
            "drift_checks": self.drift_checks,
            "last_drift": {str(s): n for s, n in self.last_drift.items() if n},
            "drift_total": self.drift_total,
        }


@dataclass
class Stats:
    """Counts by state, owned by the runtime, kept by the `StatsKeeper`."""

    counts: dict[JobState, int] = field(default_factory=lambda: dict.fromkeys(JobState, 0))
    loaded: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)
    drift_checks: int = 0
    drift_total: int = 0
    last_drift: dict[JobState, int] = field(default_factory=dict)
    # A store several runtimes write: how many times the store's totals were adopted,
    # and how many jobs were active in the last ones (exact as of that commit; the counts
    # since then add only this runtime's own deltas).
    refreshes: int = 0
    refreshed_active: int = 0

    def adopt(self, totals: dict[JobState, int]) -> None:
        self.counts = dict(totals)
        self.refreshes += 1
        self.refreshed_active = sum(totals.get(s, 0) for s in ACTIVE)

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            counts=dict(self.counts), total=sum(self.counts.values()),
            drift_checks=self.drift_checks, last_drift=dict(self.last_drift),
            drift_total=self.drift_total,
        )

    async def wait_loaded(self) -> None:
        """Return once counts have been loaded from the store (again, after a restart)."""
        while True:
            changed = self.changed
            if self.loaded:
                return
            await changed.wait()

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class StatsKeeper:
    """One incarnation of the stats-keeper actor. See the module docstring."""

    def __init__(self, *, stats: Stats, mailbox: Mailbox[StatsUpdate],
                 syncer: Mailbox[SyncerMsg], clock: Clock, recount_every: float = 30.0,
                 shared: bool = False, refresh_every: float = 2.0,
                 faults: Faults | None = None) -> None:
        self.stats = stats
        self.mailbox = mailbox
        self.syncer = syncer
        self.clock = clock
        self.recount_every = recount_every
        self.shared = shared
        self.refresh_every = refresh_every
        self.faults = faults
        self._stop = anyio.Event()
        self._reset_pending = True

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        self.stats.loaded = False  # a new incarnation reports nothing until reloaded
        self._reset_pending = True
        await self.syncer.send(Recount(reset=True))
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._recount_loop)
            if self.shared:
                tg.start_soon(self._refresh_loop)
            tg.start_soon(self._stop_watch, tg.cancel_scope)
            try:
                while True:
                    update = await self.mailbox.receive(CONSUMER)
                    if self.faults is not None:
                        self.faults.check("stats.apply")
                    drift = self._apply(update)
                    if drift:
                        await self.syncer.send(RecordEvent(
                            kind="stats_drift", at=self.clock.now(),
                            detail={"off": sum(abs(d) for d in drift.values()),
                                    "drift": {str(s): d for s, d in drift.items() if d}}))
                    self.mailbox.ack(CONSUMER)
            except MailboxClosed:
                pass
            tg.cancel_scope.cancel()

    async def _stop_watch(self, scope: anyio.CancelScope) -> None:
        await self._stop.wait()
        scope.cancel()

    async def _recount_loop(self) -> None:
        while True:
            await self.clock.sleep(self.recount_every)
            await self.syncer.send(Recount())

    async def _refresh_loop(self) -> None:
        while True:
            await self.clock.sleep(self.refresh_every)
            await self.syncer.send(Recount(refresh=True))

    def _apply(self, update: StatsUpdate) -> dict[JobState, int] | None:
        """Apply one committed update; returns the drift found, if a recount showed any."""
        stats = self.stats
        drift = None
        if update.reset and update.counts is not None:
            stats.adopt(update.counts)
            self._reset_pending = False
            stats.loaded = True
        elif self._reset_pending:
            return None  # already inside the snapshot that is on its way
        else:
            for state, delta in update.deltas.items():
                stats.counts[state] += delta
            if self.shared and update.counts is not None:
                # The totals include the other writers' commits: adopt them. Drift is
                # the store's totals against its rows, when this was a check.
                stats.adopt(update.counts)
                if update.checked is not None:
                    drift = self._check_drift(update.checked)
            elif update.counts is not None:
                drift = self._check_drift(update.checked if update.checked is not None
                                          else update.counts)
        stats.notify()
        return drift

    def _check_drift(self, truth: dict[JobState, int]) -> dict[JobState, int] | None:
        stats = self.stats
        drift = {s: stats.counts.get(s, 0) - truth.get(s, 0) for s in JobState}
        stats.drift_checks += 1
        stats.last_drift = drift
        off = sum(abs(d) for d in drift.values())
        if off:
            stats.drift_total += off
            log.error("stats drift found and corrected: %s",
                      {str(s): d for s, d in drift.items() if d})
            stats.counts = dict(truth)
            return drift
        return None
