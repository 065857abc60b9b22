"""Schedules: each cron tick is one job, run once across runtimes, restarts and gaps.

Time is a `FakeClock` per runtime, moved across a tick by hand; the scheduler's progress
is read from `Runtime.schedule_board` (no sleeps). The command-line tests at the end run
a real process on the real clock (an every-second schedule), so they are marked slow.
"""

from __future__ import annotations

import signal
import uuid
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from store.store_helpers import POSTGRES_URL, drop_schemas, require_postgres
from test_cli import (
    _reap_processes,  # noqa: F401  # autouse: processes left are killed
    handler,
    invoke,
    read,
    start,
    wait_for,
)

from syncward import ConfigError, Context, Job, JobState, Runtime, Schedule, SyncerConfig
from syncward.jobs import job_key
from syncward.messages import SetMeta
from syncward.schedules import format_tick, parse_tick
from syncward.store import open_store
from syncward.store.memory import MemoryStore
from syncward.testing import FakeClock, Faults

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path
    from subprocess import Popen

    from syncward.actors.scheduler import ScheduleState
    from syncward.store import Store

QUICK = SyncerConfig(idle_poll=0.01, retry_initial=0.001, retry_max=0.01)
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
H23 = T0 + 2800  # 2023-11-14T23:00:00Z: the next tick of an hourly schedule
HOURLY = Schedule(name="hourly", cron="0 * * * *", payload={"what": "recount"})


class Ticks:
    """A handler recording every job it runs (identity and payload)."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.ran = anyio.Event()

    async def __call__(self, job: Job, ctx: Context) -> None:
        self.seen.append((dict(job.identity), dict(job.payload)))
        self.ran.set()

    @property
    def ticks(self) -> list[str]:
        return [str(identity["tick"]) for identity, _ in self.seen]


def runtime(handler: Ticks, store: str | Store, clock: FakeClock,
            *schedules: Schedule) -> Runtime:
    return Runtime(handler, store=store, clock=clock, syncer=QUICK, concurrency=2,
                   schedules=schedules or (HOURLY,))


async def waiting_for(rt: Runtime, tick: float, name: str = "hourly") -> None:
    """Until the scheduler has caught up and sleeps towards ``tick``."""
    await rt.schedule_board.wait(lambda b: b[name].next_tick == tick)


async def submitted(rt: Runtime, n: int, name: str = "hourly") -> ScheduleState:
    """Until this runtime has submitted ``n`` ticks (each returns after its commit)."""
    return (await rt.schedule_board.wait(lambda b: b[name].submitted == n))[name]


@pytest.fixture(params=["memory", "sqlite"])
def store_for(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A store that outlives a runtime: one `MemoryStore`, or one SQLite file."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    return lambda: f"sqlite:///{tmp_path / 'jobs.db'}"


# --- the schedule as a value ---------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "hourly", "cron": "61 * * * *"},
     "schedule 'hourly': cron '61 * * * *': bad minute field"),
    ({"name": "h", "cron": "0 25 * * *"}, "schedule 'h': cron '0 25 * * *': bad hour field"),
    ({"name": "h", "cron": "0 0 * * MON-XYZ"}, "bad day-of-week field"),
    ({"name": "h", "cron": "0 0 31 2 *"}, "bad day-of-month field"),
    ({"name": "h", "cron": "* * *"}, "cron '* * *': 3 fields; expected 5"),
    ({"name": "h", "cron": ""}, "0 fields; expected 5"),
    ({"name": "", "cron": "* * * * *"}, "schedule name must be a non-empty"),
    ({"name": "h", "cron": "* * * * *", "missed": "always"},
     "schedule 'h': missed must be one of run_once, skip, got 'always'"),
    ({"name": "h", "cron": "* * * * *", "tz": "Mars/Olympus"},
     "schedule 'h': tz 'Mars/Olympus' is not a known time zone name"),
    ({"name": "h", "cron": "* * * * *", "payload": {"x": object()}},
     "schedule 'h': payload must be a JSON object"),
])
def test_a_bad_schedule_is_one_line_naming_the_field(kwargs: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Schedule(**kwargs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_tick_is_a_job_keyed_by_the_schedule_name_and_the_tick_time() -> None:
    spec = HOURLY.job(H23)
    assert dict(spec.identity) == {"schedule": "hourly", "tick": "2023-11-14T23:00:00Z"}
    assert dict(spec.payload) == {"what": "recount"}
    assert spec.key == job_key({"schedule": "hourly", "tick": "2023-11-14T23:00:00Z"})
    assert spec.key != Schedule(name="other", cron="0 * * * *").job(H23).key
    assert parse_tick(format_tick(H23)) == H23


def test_ticks_are_found_forwards_and_backwards() -> None:
    assert HOURLY.next_tick(T0) == H23
    assert HOURLY.next_tick(H23) == H23 + 3600  # strictly after
    assert HOURLY.latest_tick(H23) == H23  # at or before
    assert HOURLY.latest_tick(H23 - 1) == H23 - 3600
    # Read in the schedule's zone, DST included: 02:30 in Berlin does not exist on the
    # day the clocks go forward; cronsim runs it at 03:00 local (01:00 UTC), once.
    berlin = Schedule(name="b", cron="30 2 * * *", tz="Europe/Berlin")
    before = parse_tick("2024-03-30T12:00:00Z")
    ticks = [berlin.next_tick(before)]
    ticks.append(berlin.next_tick(ticks[-1] or 0))
    assert [format_tick(t or 0) for t in ticks] == ["2024-03-31T01:00:00Z",
                                                      "2024-04-01T00:30:00Z"]


def test_a_runtime_refuses_two_schedules_of_one_name() -> None:
    with pytest.raises(ConfigError, match="schedules need distinct names"):
        Runtime(Ticks(), store="memory://",
                schedules=[HOURLY, Schedule(name="hourly", cron="*/5 * * * *")])


# --- a runtime running them ----------------------------------------------------------------


async def test_a_tick_runs_as_a_job_when_the_clock_reaches_it(store_for: Any) -> None:
    ticks, clock = Ticks(), FakeClock(T0)
    with anyio.fail_after(10):
        async with runtime(ticks, store_for(), clock) as rt:
            await waiting_for(rt, H23)
            await rt.join()  # nothing due yet: join does not wait for future ticks
            assert ticks.seen == []
            clock.advance(H23 - T0)
            state = await submitted(rt, 1)
            await rt.join()
            await waiting_for(rt, H23 + 3600)
            meta = await rt.store.get_meta(HOURLY.meta_key)
            shown = rt.status().schedules["hourly"]
    assert ticks.seen == [({"schedule": "hourly", "tick": "2023-11-14T23:00:00Z"},
                           {"what": "recount"})]
    assert (state.new, state.last_tick) == (1, "2023-11-14T23:00:00Z")
    assert meta == "2023-11-14T23:00:00Z"
    assert (shown["done_until"], shown["next_tick"]) == ("2023-11-14T23:00:00Z",
                                                         "2023-11-15T00:00:00Z")


async def test_a_restarted_runtime_does_not_run_a_tick_again(store_for: Any) -> None:
    ticks = Ticks()
    with anyio.fail_after(10):
        clock = FakeClock(T0)
        async with runtime(ticks, store_for(), clock) as rt:
            await waiting_for(rt, H23)
            clock.advance(H23 - T0)
            await submitted(rt, 1)
            await rt.join()
            await waiting_for(rt, H23 + 3600)  # 23:00 is recorded
        async with runtime(ticks, store_for(), FakeClock(H23 + 30)) as rt:
            await waiting_for(rt, H23 + 3600)
            assert rt.schedule_board["hourly"].submitted == 0
    assert ticks.ticks == ["2023-11-14T23:00:00Z"]


async def test_a_tick_whose_record_was_lost_is_submitted_again_as_a_duplicate(
        tmp_path: Path) -> None:
    """The metadata decides what counts as missed; the job key is what runs a tick once.
    (A crash between a tick's commit and its record leaves the record behind: here the
    record is set back by hand instead.)"""
    ticks, url = Ticks(), f"sqlite:///{tmp_path / 'jobs.db'}"
    with anyio.fail_after(10):
        clock = FakeClock(T0)
        async with runtime(ticks, url, clock) as rt:
            await waiting_for(rt, H23)
            clock.advance(H23 - T0)
            await submitted(rt, 1)
            await rt.join()
            await waiting_for(rt, H23 + 3600)  # 23:00 is recorded: set it back
            await rt.send(SetMeta(HOURLY.meta_key, format_tick(T0)))
        async with runtime(ticks, url, FakeClock(H23 + 30)) as rt:
            state = await submitted(rt, 1)  # run_once: the missed 23:00, again
            await rt.join()
    assert (state.new, state.last_tick) == (0, "2023-11-14T23:00:00Z")
    assert ticks.ticks == ["2023-11-14T23:00:00Z"]


@pytest.mark.parametrize("missed", ["run_once", "skip"])
async def test_ticks_missed_while_nothing_ran_run_once_or_are_skipped(
        store_for: Any, missed: str) -> None:
    schedule = Schedule(name="hourly", cron="0 * * * *", missed=missed)  # type: ignore[arg-type]
    ticks = Ticks()
    later = T0 + 3 * 3600  # 01:13:20: 23:00, 00:00 and 01:00 came due while stopped
    with anyio.fail_after(10):
        async with runtime(ticks, store_for(), FakeClock(T0), schedule) as rt:
            await waiting_for(rt, H23)  # its start is recorded: later gaps count as missed
        clock = FakeClock(later)
        async with runtime(ticks, store_for(), clock, schedule) as rt:
            await waiting_for(rt, H23 + 3 * 3600)
            await rt.join()
            caught_up = rt.schedule_board["hourly"]
            assert ticks.ticks == (["2023-11-15T01:00:00Z"] if missed == "run_once" else [])
            clock.advance(H23 + 3 * 3600 - later)  # the next tick runs either way
            await submitted(rt, caught_up.submitted + 1)
            await rt.join()
    expected = ["2023-11-15T02:00:00Z"]
    if missed == "run_once":
        expected.insert(0, "2023-11-15T01:00:00Z")
    else:
        assert caught_up.skipped_until == "2023-11-15T01:00:00Z"
    assert ticks.ticks == expected


async def test_a_schedule_never_run_on_a_store_is_not_backfilled(store_for: Any) -> None:
    ticks = Ticks()
    with anyio.fail_after(10):
        async with runtime(ticks, store_for(), FakeClock(T0 + 10 * 3600)) as rt:
            await waiting_for(rt, H23 + 10 * 3600)
            await rt.join()
    assert ticks.seen == []


async def test_ticks_that_came_due_together_are_one_job(store_for: Any) -> None:
    every_minute = Schedule(name="minutely", cron="* * * * *")
    ticks, clock = Ticks(), FakeClock(T0)  # T0 is 22:13:20
    with anyio.fail_after(10):
        async with runtime(ticks, store_for(), clock, every_minute) as rt:
            await waiting_for(rt, T0 + 40, "minutely")
            clock.advance(40 + 5 * 60)  # a late wake-up: 22:14 ... 22:19 are all due
            await submitted(rt, 1, "minutely")
            await rt.join()
    assert ticks.ticks == ["2023-11-14T22:19:00Z"]


@pytest.mark.parametrize(("point", "missed"), [
    ("scheduler.before_record", "run_once"),  # the tick committed, its record did not
    ("scheduler.before_submit", "skip"),  # a due tick is not "missed" by a restart
])
async def test_a_crashed_scheduler_is_restarted_without_losing_or_doubling_a_tick(
        point: str, missed: str) -> None:
    schedule = Schedule(name="hourly", cron="0 * * * *", missed=missed)  # type: ignore[arg-type]
    ticks, clock, faults = Ticks(), FakeClock(T0), Faults()
    with anyio.fail_after(10):
        async with Runtime(ticks, store="memory://", clock=clock, syncer=QUICK,
                           faults=faults, schedules=[schedule]) as rt:
            await waiting_for(rt, H23)
            faults.arm(point)
            clock.advance(H23 - T0)
            await waiting_for(rt, H23 + 3600)
            await rt.join()
            state = rt.schedule_board["hourly"]
            restarts = [r for r in rt.restarts if r["actor"] == "scheduler"]
    assert faults.fired[point] == 1 and len(restarts) == 1
    assert state.new == 1 and state.submitted == (2 if point.endswith("record") else 1)
    assert ticks.ticks == ["2023-11-14T23:00:00Z"]


# --- several runtimes on one PostgreSQL store --------------------------------------------


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}_sched"
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        await drop_schemas(schema)


@pytest.mark.integration
async def test_a_schedule_tick_is_run_exactly_once_by_three_runtimes(pg_url: str) -> None:
    ticks = Ticks()
    clocks = [FakeClock(T0) for _ in range(3)]
    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:
            rts = [await stack.enter_async_context(runtime(ticks, pg_url, clock))
                   for clock in clocks]
            for rt in rts:
                await waiting_for(rt, H23)
            for clock in clocks:
                clock.advance(H23 - T0)
            states = [await submitted(rt, 1) for rt in rts]
            await ticks.ran.wait()
        # Left: every runtime drained (the handler's outcome committed). `join` is not
        # used: on a shared store it trusts a recount, which a FakeClock never repeats.
        store = await open_store(pg_url, readonly=True)
        try:
            job = await store.get_job(HOURLY.job(H23).key)
            total = (await store.counts()).values()
        finally:
            await store.aclose()
    assert sum(state.new for state in states) == 1  # the other two were duplicates
    assert ticks.ticks == ["2023-11-14T23:00:00Z"]
    assert job is not None and (job.state, job.attempts) == (JobState.SUCCEEDED, 1)
    assert sum(total) == 1


# --- the command line ----------------------------------------------------------------------


def test_cli_a_bad_cron_expression_is_one_line_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = invoke(tmp_path, monkeypatch, "run", "--schedule", "hourly=61 * * * *",
                 "--handler", handler("ok"))
    assert res.returncode == 2
    assert res.stderr == ("syncward: error: --schedule: schedule 'hourly': "
                          "cron '61 * * * *': bad minute field\n")
    assert not (tmp_path / "jobs.db").exists()  # refused before the store was opened


@pytest.mark.parametrize(("args", "message"), [
    (("--schedule", "hourly"), "--schedule: 'hourly': expected NAME=CRON"),
    (("--schedule", "a=* * * * *", "--schedule", "a=0 * * * *"), "a name given twice: a"),
    (("--schedule", "a=* * * * *", "--schedule-tz", "Nowhere/Else"), "tz 'Nowhere/Else'"),
    ((), "SOURCE is needed"),
    (("--schedule", "a=* * * * *", "--strict"), "--strict apply to a manifest SOURCE"),
])
def test_cli_schedule_options_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...],
        message: str) -> None:
    res = invoke(tmp_path, monkeypatch, "run", *args, "--handler", handler("ok"))
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.count("\n") == 1


def scheduled_jobs(tmp_path: Path) -> list[dict[str, Any]]:
    """The succeeded jobs that are schedule ticks, read-only."""
    async def get(store: Any) -> list[Any]:
        return list(await store.jobs_in_state(JobState.SUCCEEDED))

    try:
        rows = read(tmp_path, get)
    except Exception:  # not created yet
        return []
    return [dict(row.identity) for row in rows if "schedule" in row.identity]


def stop(proc: Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    return proc.returncode, err


@pytest.mark.slow
def test_cli_schedule_without_a_manifest_runs_ticks_until_interrupted(tmp_path: Path) -> None:
    proc = start(tmp_path, "run", "--schedule", "every=* * * * * *", "--handler",
                 handler("ok"), "--json")
    wait_for(lambda: len(scheduled_jobs(tmp_path)) >= 2, timeout=15, what="two ticks")
    code, err = stop(proc)
    assert code == 3, err
    assert "Traceback" not in err
    jobs = scheduled_jobs(tmp_path)
    assert {job["schedule"] for job in jobs} == {"every"}
    assert len({job["tick"] for job in jobs}) == len(jobs)  # one job per tick


@pytest.mark.slow
def test_cli_schedule_with_a_manifest_runs_both(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a\nb\nc\n")
    proc = start(tmp_path, "run", "m.txt", "--schedule", "every=* * * * * *",
                 "--schedule-missed", "skip", "--handler", handler("ok"), "--json")
    wait_for(lambda: len(scheduled_jobs(tmp_path)) >= 1, timeout=15, what="a tick")
    code, err = stop(proc)
    assert code == 3, err

    async def counts(store: Any) -> Any:
        return await store.counts()

    assert read(tmp_path, counts)[JobState.SUCCEEDED] >= 4  # the three lines and a tick
