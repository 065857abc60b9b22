"""Review of the schedules (f6c8874): daylight-saving folds and store errors.

Europe/Berlin falls back on 2024-10-27 (03:00 CEST -> 02:00 CET, at 01:00Z). A daily
02:30 schedule ticks once that day, at 02:30 CEST = 00:30Z (cronsim: once, as Debian's
cron). Going backwards from a time in the repeated hour (02:00-02:30 CET, 01:00Z-01:30Z),
cronsim skips that tick and answers the day before's: the scheduler must not take that
for "the latest tick due".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from test_schedules import QUICK, Ticks

from syncward import Runtime, Schedule
from syncward.errors import StoreUnavailable
from syncward.schedules import format_tick
from syncward.store.memory import MemoryStore
from syncward.testing import FakeClock


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


BERLIN_0230 = Schedule(name="nightly", cron="30 2 * * *", tz="Europe/Berlin")
TICK = _at("2024-10-27T00:30:00")  # 02:30 CEST, the one 02:30 of the fall-back day
NEXT = _at("2024-10-28T01:30:00")  # 02:30 CET the day after
IN_FOLD = _at("2024-10-27T01:10:00")  # 02:10 CET: the repeated hour, after the tick


def test_the_latest_tick_in_the_repeated_hour_is_that_days_tick() -> None:
    assert BERLIN_0230.next_tick(TICK - 1) == TICK
    assert format_tick(BERLIN_0230.latest_tick(IN_FOLD) or 0) == "2024-10-27T00:30:00Z"


def _runtime(ticks: Ticks, store: Any, clock: FakeClock, schedule: Schedule) -> Runtime:
    return Runtime(ticks, store=store, clock=clock, syncer=QUICK, concurrency=2,
                   schedules=[schedule])


async def test_a_tick_late_into_the_repeated_hour_runs_once_and_the_scheduler_moves_on(
        ) -> None:
    """Before the fix: the scheduler submitted and recorded the day before's tick again
    and again (a busy loop of commits for half an hour, the record going backwards), and
    submitted the day's tick only at 01:30Z."""
    ticks, clock = Ticks(), FakeClock(_at("2024-10-26T23:00:00"))
    with anyio.fail_after(10):
        async with _runtime(ticks, MemoryStore(), clock, BERLIN_0230) as rt:
            await rt.schedule_board.wait(lambda b: b["nightly"].next_tick == TICK)
            clock.advance(IN_FOLD - clock.now())  # a late wake-up (suspended machine)
            await rt.schedule_board.wait(lambda b: b["nightly"].next_tick == NEXT)
            await rt.join()
            state = rt.schedule_board["nightly"]
            meta = await rt.store.get_meta(BERLIN_0230.meta_key)
    assert ticks.ticks == ["2024-10-27T00:30:00Z"]
    assert (state.submitted, state.new) == (1, 1)
    assert meta == "2024-10-27T00:30:00Z"


@pytest.mark.parametrize("missed", ["run_once", "skip"])
async def test_a_tick_missed_before_a_start_in_the_repeated_hour_counts_as_missed(
        missed: str) -> None:
    schedule = Schedule(name="nightly", cron="30 2 * * *", tz="Europe/Berlin",
                        missed=missed)  # type: ignore[arg-type]
    ticks, store = Ticks(), MemoryStore()
    with anyio.fail_after(10):
        async with _runtime(ticks, store, FakeClock(_at("2024-10-26T12:00:00")),
                            schedule) as rt:
            await rt.schedule_board.wait(lambda b: b["nightly"].next_tick == TICK)
        async with _runtime(ticks, store, FakeClock(IN_FOLD), schedule) as rt:
            await rt.schedule_board.wait(lambda b: b["nightly"].next_tick == NEXT)
            await rt.join()
            state = rt.schedule_board["nightly"]
    if missed == "run_once":
        assert ticks.ticks == ["2024-10-27T00:30:00Z"]
    else:
        assert ticks.ticks == []
        assert state.skipped_until == "2024-10-27T00:30:00Z"


async def test_a_store_error_reading_the_schedule_record_does_not_stop_the_runtime(
        ) -> None:
    """`get_meta` is the scheduler's one direct store read. Before the fix a transient
    failure of it crashed the scheduler at once on every restart, so the root's restart
    intensity (3 in 5 s) was spent within a moment and the whole runtime stopped."""
    ticks, store = Ticks(), MemoryStore()
    clock = FakeClock(_at("2024-05-01T12:00:00"))
    real, failures = store.get_meta, [0]

    async def flaky(key: str) -> str | None:
        if key.startswith("schedule:") and failures[0] < 6:
            failures[0] += 1
            raise StoreUnavailable("read", OSError("connection reset"))
        return await real(key)

    store.get_meta = flaky  # type: ignore[method-assign]
    hourly = Schedule(name="hourly", cron="0 * * * *")
    with anyio.fail_after(10):
        async with _runtime(ticks, store, clock, hourly) as rt:
            while rt.schedule_board["hourly"].done_until is None:  # it waits between
                await anyio.sleep(0.001)  # tries, on the clock
                clock.advance(1.0)
            assert failures[0] == 6
            restarts = [r for r in rt.restarts if r["actor"] == "scheduler"]
    assert restarts == []
