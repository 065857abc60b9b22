"""Supervisor: ordered start, reverse stop, strategies, restart types, intensity, escalation.

Every step is ordered by events (the supervisor's ``on_event`` and the test actors write
to one `Journal`, and a test waits for a line), quiescence is reached with
`anyio.wait_all_tasks_blocked`, and restart windows are moved with `FakeClock`. The only
real-time bound is the 0.05 s shutdown timeout of the child that ignores ``request_stop``.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import pytest

from syncward.errors import InvalidChildSpec, SupervisorGaveUp
from syncward.supervisor import (
    ChildSpec,
    ExitReason,
    Restart,
    RestartIntensity,
    RestartStrategy,
    Supervisor,
    SupervisorEvent,
)
from syncward.testing.clock import FakeClock

ROOMY = RestartIntensity(max_restarts=10, within=60.0)


class Journal:
    """An ordered log of what happened, which a test can wait on."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[SupervisorEvent] = []
        self._changed = anyio.Event()

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = anyio.Event()

    def on_event(self, event: SupervisorEvent) -> None:
        self.events.append(event)
        self.add(f"{event.kind}:{event.child_id}")

    async def wait_for(self, line: str, count: int = 1) -> None:
        while self.lines.count(line) < count:
            await self._changed.wait()

    def only(self, *prefixes: str) -> list[str]:
        """The lines whose kind is one of ``prefixes``, in order."""
        return [line for line in self.lines if line.split(":", 1)[0] in prefixes]


class FakeActor:
    """One incarnation of a test child; the test ends it with `crash` or `finish`."""

    def __init__(self, probe: Probe, number: int) -> None:
        self.probe = probe
        self.number = number
        self.finished = False
        self._end = anyio.Event()
        self._error: Exception | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        probe = self.probe
        try:
            if probe.gate is not None:
                await probe.gate.wait()
            if probe.early_errors:
                raise probe.early_errors.pop(0)
            task_status.started()
            if probe.crash_after_start:
                raise ValueError(f"boom {self.number}")
            await self._end.wait()
        except anyio.get_cancelled_exc_class():
            probe.journal.add(f"cancelled:{probe.id}")
            raise
        finally:
            self.finished = True
            probe.journal.add(f"end:{probe.id}")
        if self._error is not None:
            raise self._error

    def request_stop(self) -> None:
        self.probe.journal.add(f"stop:{self.probe.id}")
        if not self.probe.ignore_stop:
            self._end.set()

    def crash(self, error: Exception) -> None:
        self._error = error
        self._end.set()

    def finish(self) -> None:
        self._end.set()


class Probe:
    """A child slot seen from the test: builds `FakeActor`s and remembers every one."""

    def __init__(
        self,
        child_id: str,
        journal: Journal,
        *,
        gate: anyio.Event | None = None,
        early_errors: list[Exception] | None = None,
        crash_after_start: bool = False,
        ignore_stop: bool = False,
    ) -> None:
        self.id = child_id
        self.journal = journal
        self.gate = gate
        self.early_errors = list(early_errors or [])
        self.crash_after_start = crash_after_start
        self.ignore_stop = ignore_stop
        self.actors: list[FakeActor] = []

    def factory(self) -> FakeActor:
        self.journal.add(f"factory:{self.id}")
        actor = FakeActor(self, len(self.actors) + 1)
        self.actors.append(actor)
        return actor

    @property
    def actor(self) -> FakeActor:
        return self.actors[-1]

    def spec(self, **overrides: Any) -> ChildSpec:
        return ChildSpec(id=self.id, factory=self.factory, **overrides)

    def all_finished(self) -> bool:
        return all(actor.finished for actor in self.actors)


def make(
    journal: Journal, probes: list[Probe], **overrides: Any
) -> tuple[Supervisor, dict[str, Probe]]:
    options: dict[str, Any] = {"intensity": ROOMY, "clock": FakeClock()}
    options.update(overrides)
    supervisor = Supervisor(
        name="sup",
        children=[p.spec() for p in probes],
        on_event=journal.on_event,
        **options,
    )
    return supervisor, {p.id: p for p in probes}


async def supervise(
    supervisor: Supervisor,
    outcome: list[SupervisorGaveUp],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``supervisor`` in a task group, keeping its `SupervisorGaveUp` for the test."""
    try:
        await supervisor.run(task_status=task_status)
    except SupervisorGaveUp as exc:
        outcome.append(exc)


def incarnations(probes: dict[str, Probe]) -> dict[str, int]:
    return {child_id: len(p.actors) for child_id, p in probes.items()}


# --- start and stop order ------------------------------------------------------------


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        gate = anyio.Event()
        sup, probes = make(
            journal, [Probe("a", journal, gate=gate), Probe("b", journal), Probe("c", journal)]
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            await anyio.wait_all_tasks_blocked()
            assert journal.lines == ["factory:a"]  # b waits until a is ready
            gate.set()
            await journal.wait_for("started:c")
            assert journal.only("factory", "started") == [
                "factory:a", "started:a", "factory:b", "started:b", "factory:c", "started:c",
            ]  # fmt: skip
            assert sup.statistics().running == ("a", "b", "c")
            sup.request_stop()
        assert journal.only("stop", "stopped") == [
            "stop:c", "stopped:c", "stop:b", "stopped:b", "stop:a", "stopped:a",
        ]  # fmt: skip
        assert all(p.all_finished() for p in probes.values())
        assert sup.statistics().running == ()


async def test_run_reports_started_only_once_every_child_is_up() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        sup, probes = make(journal, [Probe("a", journal), Probe("b", journal)])
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            assert journal.only("started") == ["started:a", "started:b"]
            sup.request_stop()
        assert all(p.all_finished() for p in probes.values())


# --- strategies ------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_crashed_child(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="syncward.supervisor")
    with anyio.fail_after(5):
        journal = Journal()
        sup, probes = make(journal, [Probe("a", journal), Probe("b", journal), Probe("c", journal)])
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            probes["b"].actor.crash(ValueError("boom"))
            await journal.wait_for("restarted:b")
            await anyio.wait_all_tasks_blocked()
            assert incarnations(probes) == {"a": 1, "b": 2, "c": 1}
            assert journal.only("stop") == []
            stats = sup.statistics()
            assert stats.restarts == {"a": 0, "b": 1, "c": 0}
            assert stats.total_restarts == 1
            assert stats.running == ("a", "b", "c")
            sup.request_stop()
    (record,) = [r for r in caplog.records if r.name == "syncward.supervisor"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    for part in ("'sup'", "'b'", "ValueError: boom", "restart 1"):
        assert part in message


async def test_one_for_all_stops_the_others_in_reverse_then_restarts_all_in_order() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        sup, probes = make(
            journal,
            [Probe("a", journal), Probe("b", journal), Probe("c", journal)],
            strategy=RestartStrategy.ONE_FOR_ALL,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            journal.lines.clear()
            probes["b"].actor.crash(ValueError("boom"))
            await journal.wait_for("restarted:c")
            assert journal.only("crashed", "stop", "factory") == [
                "crashed:b", "stop:c", "stop:a", "factory:a", "factory:b", "factory:c",
            ]  # fmt: skip
            assert incarnations(probes) == {"a": 2, "b": 2, "c": 2}
            assert sup.statistics().restarts == {"a": 1, "b": 1, "c": 1}
            sup.request_stop()
        assert all(p.all_finished() for p in probes.values())


async def test_rest_for_one_restarts_the_child_and_those_after_it() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        names = ["a", "b", "c", "d"]
        sup, probes = make(
            journal,
            [Probe(n, journal) for n in names],
            strategy=RestartStrategy.REST_FOR_ONE,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            journal.lines.clear()
            probes["b"].actor.crash(ValueError("boom"))
            await journal.wait_for("restarted:d")
            assert journal.only("crashed", "stop", "factory") == [
                "crashed:b", "stop:d", "stop:c", "factory:b", "factory:c", "factory:d",
            ]  # fmt: skip
            assert incarnations(probes) == {"a": 1, "b": 2, "c": 2, "d": 2}
            sup.request_stop()
        assert all(p.all_finished() for p in probes.values())


async def test_one_for_all_does_not_bring_back_a_temporary_sibling() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        a, t = Probe("a", journal), Probe("t", journal)
        sup = Supervisor(
            name="sup",
            children=[a.spec(), t.spec(restart=Restart.TEMPORARY)],
            strategy=RestartStrategy.ONE_FOR_ALL,
            intensity=ROOMY,
            clock=FakeClock(),
            on_event=journal.on_event,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            a.actor.crash(ValueError("boom"))
            await journal.wait_for("restarted:a")
            await anyio.wait_all_tasks_blocked()
            assert (len(a.actors), len(t.actors)) == (2, 1)
            assert sup.statistics().running == ("a",)
            sup.request_stop()
        assert a.all_finished()
        assert t.all_finished()


# --- restart types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "crash", "restarted"),
    [
        (Restart.PERMANENT, False, True),
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, False, False),
        (Restart.TRANSIENT, True, True),
        (Restart.TEMPORARY, False, False),
        (Restart.TEMPORARY, True, False),
    ],
)
async def test_restart_types(restart: Restart, crash: bool, restarted: bool) -> None:
    with anyio.fail_after(5):
        journal = Journal()
        a, other = Probe("a", journal), Probe("other", journal)
        sup = Supervisor(
            name="sup",
            children=[a.spec(restart=restart), other.spec()],
            intensity=ROOMY,
            clock=FakeClock(),
            on_event=journal.on_event,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            if crash:
                a.actor.crash(ValueError("boom"))
                await journal.wait_for("crashed:a")
            else:
                a.actor.finish()
                await journal.wait_for("exited:a")
            await anyio.wait_all_tasks_blocked()
            assert len(a.actors) == (2 if restarted else 1)
            assert sup.statistics().running == (("a", "other") if restarted else ("other",))
            assert len(other.actors) == 1
            sup.request_stop()
        reasons = [e.reason for e in journal.events if e.kind in ("crashed", "exited")]
        assert reasons == [ExitReason.CRASHED if crash else ExitReason.NORMAL]


async def test_before_restart_runs_before_the_factory_on_restarts_only() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        a = Probe("a", journal)
        sup = Supervisor(
            name="sup",
            children=[a.spec(before_restart=lambda: journal.add("before:a"))],
            intensity=ROOMY,
            clock=FakeClock(),
            on_event=journal.on_event,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            assert "before:a" not in journal.lines
            a.actor.crash(ValueError("boom"))
            await journal.wait_for("restarted:a")
            a.actor.finish()  # a normal exit of a permanent child restarts it too
            await journal.wait_for("restarted:a", 2)
            sup.request_stop()
        assert journal.only("before", "factory") == [
            "factory:a", "before:a", "factory:a", "before:a", "factory:a",
        ]  # fmt: skip


# --- crashes around start-up -------------------------------------------------------------


async def test_crash_before_started_is_a_crash_and_is_restarted_before_the_next_child() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        sup, probes = make(
            journal,
            [Probe("a", journal, early_errors=[RuntimeError("early")]), Probe("b", journal)],
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            assert journal.only("factory", "started", "crashed", "restarted") == [
                "factory:a", "crashed:a", "factory:a", "restarted:a", "factory:b", "started:b",
            ]  # fmt: skip
            (crash,) = [e for e in journal.events if e.kind == "crashed"]
            assert crash.error == "RuntimeError: early"
            sup.request_stop()
        assert all(p.all_finished() for p in probes.values())


async def test_factory_error_is_a_crash() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        a = Probe("a", journal)
        calls = 0

        def flaky_factory() -> FakeActor:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("cannot build")
            return a.factory()

        sup = Supervisor(
            name="sup",
            children=[ChildSpec(id="a", factory=flaky_factory)],
            intensity=ROOMY,
            clock=FakeClock(),
            on_event=journal.on_event,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            assert journal.only("crashed", "restarted") == ["crashed:a", "restarted:a"]
            sup.request_stop()
        assert a.all_finished()


# --- intensity and escalation -----------------------------------------------------------


async def test_gives_up_after_max_restarts_with_the_last_crash_as_cause() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        sup, probes = make(
            journal,
            [Probe("steady", journal), Probe("a", journal, crash_after_start=True)],
            intensity=RestartIntensity(max_restarts=2, within=10.0),
        )
        with pytest.raises(SupervisorGaveUp) as info:
            await sup.run()
        assert info.value.child_id == "a"
        assert info.value.supervisor == "sup"
        assert (info.value.restarts, info.value.within) == (2, 10.0)
        assert isinstance(info.value.__cause__, ValueError)
        assert str(info.value.__cause__) == "boom 3"  # restarts 1 and 2 were allowed
        assert incarnations(probes) == {"steady": 1, "a": 3}
        assert journal.only("gave_up", "stopped") == ["stopped:steady", "gave_up:a"]
        assert all(p.all_finished() for p in probes.values())


async def test_time_passing_the_window_resets_the_count() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        clock = FakeClock()
        sup, probes = make(
            journal,
            [Probe("a", journal)],
            intensity=RestartIntensity(max_restarts=1, within=10.0),
            clock=clock,
        )
        outcome: list[SupervisorGaveUp] = []
        async with anyio.create_task_group() as tg:
            await tg.start(supervise, sup, outcome)
            probes["a"].actor.crash(ValueError("first"))
            await journal.wait_for("restarted:a")
            clock.advance(11.0)
            probes["a"].actor.crash(ValueError("second"))
            await journal.wait_for("restarted:a", 2)
            assert outcome == []
            probes["a"].actor.crash(ValueError("third"))  # 2 restarts inside 10 s
        (gave_up,) = outcome
        assert str(gave_up.__cause__) == "third"
        assert len(probes["a"].actors) == 3
        assert probes["a"].all_finished()


async def test_simultaneous_exits_are_counted_once_per_handled_exit() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        sup, probes = make(
            journal,
            [Probe("a", journal), Probe("b", journal)],
            strategy=RestartStrategy.ONE_FOR_ALL,
            intensity=RestartIntensity(max_restarts=1, within=10.0),
        )
        outcome: list[SupervisorGaveUp] = []
        async with anyio.create_task_group() as tg:
            await tg.start(supervise, sup, outcome)
            probes["a"].actor.crash(ValueError("a"))
            probes["b"].actor.crash(ValueError("b"))
            await journal.wait_for("restarted:b")
            await anyio.wait_all_tasks_blocked()
            # b's exit was overtaken by a's one-for-all restart: no second restart, no give-up
            assert outcome == []
            assert incarnations(probes) == {"a": 2, "b": 2}
            assert journal.only("stopped") == []
            sup.request_stop()
        assert outcome == []


async def test_nested_supervisor_escalates_to_the_root() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        clock = FakeClock()
        worker = Probe("worker", journal, crash_after_start=True)

        def inner() -> Supervisor:
            return Supervisor(
                name="inner",
                children=[worker.spec()],
                intensity=RestartIntensity(max_restarts=0, within=5.0),
                clock=clock,
                on_event=journal.on_event,
            )

        root = Supervisor(
            name="root",
            children=[ChildSpec(id="inner", factory=inner)],
            intensity=RestartIntensity(max_restarts=1, within=5.0),
            clock=clock,
            on_event=journal.on_event,
        )
        with pytest.raises(SupervisorGaveUp) as info:
            await root.run()
        assert (info.value.supervisor, info.value.child_id) == ("root", "inner")
        middle = info.value.__cause__
        assert isinstance(middle, SupervisorGaveUp)
        assert (middle.supervisor, middle.child_id) == ("inner", "worker")
        assert isinstance(middle.__cause__, ValueError)
        assert str(middle.__cause__) == "boom 2"
        assert journal.only("gave_up") == ["gave_up:worker", "gave_up:worker", "gave_up:inner"]
        assert worker.all_finished()


# --- stopping ---------------------------------------------------------------------------


async def test_child_ignoring_request_stop_is_cancelled_after_its_timeout() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        stubborn, polite = Probe("stubborn", journal, ignore_stop=True), Probe("polite", journal)
        sup = Supervisor(
            name="sup",
            children=[polite.spec(), stubborn.spec(shutdown_timeout=0.05)],
            clock=FakeClock(),
            on_event=journal.on_event,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            sup.request_stop()
        assert journal.only("stop", "cancelled", "stopped") == [
            "stop:stubborn", "cancelled:stubborn", "stopped:stubborn",
            "stop:polite", "stopped:polite",
        ]  # fmt: skip
        assert stubborn.all_finished()
        assert polite.all_finished()


async def test_request_stop_is_idempotent() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        sup, probes = make(journal, [Probe("a", journal), Probe("b", journal)])
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            sup.request_stop()
            sup.request_stop()
        sup.request_stop()
        assert journal.only("stop") == ["stop:b", "stop:a"]
        assert journal.only("stopped") == ["stopped:b", "stopped:a"]
        assert all(p.all_finished() for p in probes.values())


async def test_request_stop_before_run_returns_at_once() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        sup, _ = make(journal, [Probe("a", journal)])
        sup.request_stop()
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)  # started() is still signalled, so start() returns
        assert journal.lines == []


async def test_request_stop_while_a_child_is_starting() -> None:
    with anyio.fail_after(5):
        journal = Journal()
        stuck = Probe("stuck", journal, gate=anyio.Event())  # never becomes ready
        later = Probe("later", journal)
        sup = Supervisor(
            name="sup",
            children=[stuck.spec(shutdown_timeout=0.05), later.spec()],
            clock=FakeClock(),
            on_event=journal.on_event,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            await anyio.wait_all_tasks_blocked()
            sup.request_stop()
        assert journal.only("factory", "stop", "cancelled") == [
            "factory:stuck", "stop:stuck", "cancelled:stuck",
        ]  # fmt: skip
        assert later.actors == []
        assert stuck.all_finished()


async def test_a_supervisor_runs_once() -> None:
    with anyio.fail_after(5):
        sup = Supervisor(name="sup", children=[])
        sup.request_stop()
        await sup.run()
        with pytest.raises(RuntimeError, match="already run"):
            await sup.run()


# --- validation -------------------------------------------------------------------------


def _nothing() -> FakeActor:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("children", "intensity", "match"),
    [
        ([ChildSpec(id="", factory=_nothing)], RestartIntensity(), "non-empty"),
        (
            [ChildSpec(id="a", factory=_nothing), ChildSpec(id="a", factory=_nothing)],
            RestartIntensity(),
            "duplicate child id 'a'",
        ),
        (
            [ChildSpec(id="a", factory=_nothing, shutdown_timeout=-1.0)],
            RestartIntensity(),
            "shutdown_timeout",
        ),
        ([], RestartIntensity(max_restarts=-1), "max_restarts"),
        ([], RestartIntensity(within=0.0), "within"),
    ],
)
def test_invalid_specs_are_rejected(
    children: list[ChildSpec], intensity: RestartIntensity, match: str
) -> None:
    with pytest.raises(InvalidChildSpec, match=match):
        Supervisor(name="sup", children=children, intensity=intensity)
