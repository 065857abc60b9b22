"""The scheduler: each `Schedule`'s ticks submitted as jobs, once, on the injected clock.

Owns: nothing that outlives it. What each schedule has done is in the store's metadata
(``schedule:<name>:last``: the UTC time up to which its ticks are accounted for, submitted
or skipped), and what it does now is shown on the runtime's `ScheduleBoard`.
Receives: nothing.
Sends: each tick's job through the runtime's submit path (a `Submit` to the syncer, the
same as `Runtime.submit`), then — only once that submit has committed — a `SetMeta`
recording the tick.

Per schedule, one task:

1. Catch up. No metadata: the schedule has never run on this store; it begins now
   (nothing is backfilled) and records now, so that a tick that comes due while no
   runtime runs later counts as missed. Metadata present and ticks came due after it:
   ``run_once`` submits the latest of them (one job, however many were missed), ``skip``
   submits none; either way that tick is recorded.
2. Sleep until the next tick, submit it, record it; repeat. A tick that is late (a
   blocked loop, a suspended machine) is still submitted; ticks that came due together
   are submitted as one, the latest.

A crashed scheduler is restarted by its supervisor; the new incarnation reads the store
again, and ticks that came due while the runtime ran (the `ScheduleBoard`, which outlives
incarnations, says since when) are submitted, not treated as missed.

Exactly once, by construction rather than by coordination: a tick's job key is its
schedule's name and time, so several runtimes on one store, a restarted actor, or a
metadata write lost to a crash between the submit and the record all submit the same
key again, and the store's UNIQUE key makes the repeats duplicates. The metadata only
decides which ticks count as missed; it is never what stops a tick running twice.

Design notes: sleeps are capped at `MAX_NAP` seconds and the clock read again on
waking, because a monotonic sleep does not count time a machine spent suspended and a
wall clock may be stepped. One actor for every schedule (a task each), not an actor per
schedule: they share everything but their expression, and a crash of one restarts all,
which costs only a metadata read each.
XX: ticks that fall while this runtime is stopping are left to the next start's catch-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio

from syncward.actors._periodic import LoopActor
from syncward.errors import MailboxClosed, StoreUnavailable
from syncward.messages import Reply, SetMeta
from syncward.schedules import format_tick, parse_tick

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from syncward.actors.mailbox import Mailbox
    from syncward.clock import Clock
    from syncward.jobs import JobSpec
    from syncward.messages import SubmitResult, SyncerMsg
    from syncward.schedules import Schedule
    from syncward.testing.faults import Faults

__all__ = ["MAX_NAP", "ScheduleBoard", "ScheduleState", "Scheduler"]

log = logging.getLogger("syncward.scheduler")

#: The longest the scheduler sleeps before reading the clock again (seconds).
MAX_NAP = 60.0
#: The first wait before reading a schedule's record again after the store failed (s).
_READ_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What one schedule is doing in this runtime.

    ``done_until``: the time up to which its ticks are accounted for (None until the
    catch-up has read the store). ``next_tick``: the tick it waits for (None: not known
    yet, or none in fifty years). ``submitted``: ticks this runtime submitted, of which
    ``new`` created a job (the others were already there: another runtime, a restart).
    ``skipped_until``: the latest missed tick a ``skip`` schedule passed over.
    """

    name: str
    done_until: float | None = None
    next_tick: float | None = None
    submitted: int = 0
    new: int = 0
    last_tick: str | None = None
    skipped_until: str | None = None

    def as_dict(self) -> dict[str, object]:
        def iso(at: float | None) -> str | None:
            return format_tick(at) if at is not None else None

        return {"name": self.name, "done_until": iso(self.done_until),
                "next_tick": iso(self.next_tick),
                "submitted": self.submitted, "new": self.new, "last_tick": self.last_tick,
                "skipped_until": self.skipped_until}


class ScheduleBoard:
    """Every schedule's `ScheduleState`, owned by the runtime (it outlives restarts)."""

    def __init__(self, names: Sequence[str]) -> None:
        self._states = {name: ScheduleState(name) for name in names}
        self._changed: anyio.Event | None = None  # made when someone waits

    def __getitem__(self, name: str) -> ScheduleState:
        return self._states[name]

    def snapshot(self) -> dict[str, ScheduleState]:
        return dict(self._states)

    def update(self, name: str, **changes: object) -> None:
        self._states[name] = replace(self._states[name], **changes)  # type: ignore[arg-type]
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def wait(self, predicate: Callable[[Mapping[str, ScheduleState]], bool]
                   ) -> dict[str, ScheduleState]:
        """Return the states once ``predicate`` holds for them."""
        while not predicate(self._states):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self.snapshot()


class Scheduler(LoopActor):
    """One incarnation of the scheduler. See the module docstring."""

    def __init__(self, *, schedules: Sequence[Schedule], board: ScheduleBoard, clock: Clock,
                 syncer: Mailbox[SyncerMsg],
                 submit: Callable[[list[JobSpec]], Awaitable[SubmitResult]],
                 get_meta: Callable[[str], Awaitable[str | None]],
                 faults: Faults | None = None) -> None:
        super().__init__()
        self.schedules = tuple(schedules)
        self.board = board
        self.clock = clock
        self.syncer = syncer
        self.submit = submit
        self.get_meta = get_meta
        self.faults = faults

    async def _loop(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                for schedule in self.schedules:
                    tg.start_soon(self._follow, schedule)
        except* MailboxClosed:
            await anyio.sleep_forever()  # the runtime is stopping: it stops us next

    async def _follow(self, schedule: Schedule) -> None:
        done = await self.catch_up(schedule)
        while True:
            done = await self._step(schedule, done)

    async def catch_up(self, schedule: Schedule) -> float:
        """Step 1 of the module docstring; returns the time ticks are done up to.

        A restarted incarnation (the board says this runtime caught up before) misses
        nothing: ticks due since then came due while the runtime ran, so the loop submits
        them whatever ``missed`` says.
        """
        stored = await self._read(schedule)
        now = self.clock.now()
        done = _parse(schedule, stored)
        earlier = self.board[schedule.name].done_until
        if earlier is not None:
            return max(earlier, done if done is not None else earlier)
        if done is None:
            # only_if_absent: a runtime that got here first keeps its start.
            kept = await self._record(schedule, now, only_if_absent=stored is None)
            done = _parse(schedule, kept) or now
        else:
            due = schedule.latest_tick(now)
            if due is not None and due > done:
                if schedule.missed == "run_once":
                    log.info("schedule %r: running missed tick %s once", schedule.name,
                             format_tick(due))
                    await self._submit(schedule, due)
                else:
                    log.info("schedule %r: skipping missed ticks up to %s", schedule.name,
                             format_tick(due))
                    self.board.update(schedule.name, skipped_until=format_tick(due))
                await self._record(schedule, due)
                done = due
        self.board.update(schedule.name, done_until=done)
        return done

    async def _read(self, schedule: Schedule) -> str | None:
        """The schedule's record; a read the store fails is tried again on the clock.

        Never a crash: the store failing for longer than a moment would spend the root
        supervisor's restart intensity on the scheduler and stop the whole runtime.
        """
        delay = _READ_RETRY
        while True:
            try:
                return await self.get_meta(schedule.meta_key)
            except StoreUnavailable as exc:
                log.warning("schedule %r: cannot read %s (%s); trying again in %gs",
                            schedule.name, schedule.meta_key, exc, delay)
                await self.clock.sleep(delay)
                delay = min(delay * 2, MAX_NAP)

    async def _step(self, schedule: Schedule, done: float) -> float:
        """Step 2 of the module docstring, once: a sleep, or a tick submitted."""
        tick = schedule.next_tick(done)
        self.board.update(schedule.name, next_tick=tick)
        if tick is None:
            await anyio.sleep_forever()  # never again (the expression was checked to match)
        assert tick is not None
        now = self.clock.now()
        if tick > now:
            await self.clock.sleep(min(tick - now, MAX_NAP))
            return done
        # Ticks that came due together: one job, the latest (never one before ``tick``: the
        # scheduler must move forwards whatever the reverse search answers).
        due = max(tick, schedule.latest_tick(now) or tick)
        await self._submit(schedule, due)
        await self._record(schedule, due)
        self.board.update(schedule.name, done_until=due)
        return due

    async def _submit(self, schedule: Schedule, tick: float) -> None:
        if self.faults is not None:
            self.faults.check("scheduler.before_submit")
        result = await self.submit([schedule.job(tick)])  # returns after commit
        state = self.board[schedule.name]
        self.board.update(schedule.name, submitted=state.submitted + 1,
                          new=state.new + result.new, last_tick=format_tick(tick))
        if result.new:
            log.info("schedule %r: tick %s submitted", schedule.name, format_tick(tick))
        else:
            log.debug("schedule %r: tick %s was already submitted", schedule.name,
                      format_tick(tick))

    async def _record(self, schedule: Schedule, at: float, *,
                      only_if_absent: bool = False) -> str:
        if self.faults is not None:
            self.faults.check("scheduler.before_record")
        reply: Reply[str] = Reply()
        await self.syncer.send(SetMeta(schedule.meta_key, format_tick(at),
                                       only_if_absent=only_if_absent, reply=reply))
        return await reply.wait()


def _parse(schedule: Schedule, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_tick(value)
    except ValueError:
        log.warning("schedule %r: unreadable %s %r: starting afresh", schedule.name,
                    schedule.meta_key, value)
        return None
