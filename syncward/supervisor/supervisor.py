"""The supervisor: starts children in order, restarts them by strategy, escalates, stops them.

Design notes.

*One control task.* `run()` is the only task that starts, stops and restarts children,
so decisions never race each other. Each child runs in its own task of the supervisor's
task group, inside its own `anyio.CancelScope`; when that task ends it reports an
`_Exit` to the control task (a deque plus a wake-up `anyio.Event`, which unlike a memory
stream needs no closing and can be created before the loop runs). Every report names the
incarnation it is about, so a report that arrives after the control task has already
stopped or replaced that incarnation is recognised as stale and dropped: an exit is
counted once, and a child stopped by the supervisor is never "restarted" for it.

*Readiness.* Children are started one at a time with ``await tg.start(...)``. The actor
sees a `_Readiness` in place of the real task status: when the actor calls ``started()``
the supervisor records it and releases ``tg.start``; when the actor returns or raises
before that, the child's task releases ``tg.start`` itself and reports the exit, so a
crash before readiness is an ordinary crash and ``tg.start`` never raises. A start pass
stops at a child that did not become ready; the exit is handled (restart or not) and the
pass resumes from there, so child i+1 never starts before child i is up. The supervisor
calls its own ``task_status.started()`` the first time every child that should run is up.

*Restart decisions* follow OTP: the restart type decides whether the exited child is
restarted; if so, one restart is recorded in the `RestartWindow` (per exit, not per
child restarted); the strategy decides which siblings are stopped (in reverse spec
order); then every child that should run but does not is started, in spec order. A
temporary child stopped by a sibling's restart is not started again (it is never
restarted), and neither is a child whose restart type ended it for good.

*Stopping* a child is ``request_stop()``, a wait under ``move_on_after(shutdown_timeout)``,
then cancelling its scope and waiting for the task to finish (OTP ``brutal_kill``). A
child that shields itself from cancellation can therefore delay shutdown indefinitely.
Children are stopped in reverse spec order (OTP's order), which differs from the order
they were last started after one-for-one restarts. A nested supervisor needs a
``shutdown_timeout`` long enough for its own children to stop.

*Escalation.* Giving up stops every child, leaves the task group cleanly and only then
raises `SupervisorGaveUp`, so the caller sees that exception rather than an
`ExceptionGroup`; a parent supervisor running this one sees a crash.

XX: ``on_event`` callbacks run synchronously in whichever task produced the event; an
exception from one is logged and ignored so that an observer cannot break supervision.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, assert_never

import anyio
import anyio.abc

from syncward.clock import Clock, SystemClock
from syncward.errors import InvalidChildSpec, SupervisorGaveUp
from syncward.supervisor.intensity import RestartWindow
from syncward.supervisor.spec import (
    Actor,
    ChildSpec,
    ExitReason,
    Restart,
    RestartIntensity,
    RestartStrategy,
    SupervisorEvent,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["Supervisor", "SupervisorStatistics"]

logger = logging.getLogger("syncward.supervisor")

_DEFAULT_INTENSITY = RestartIntensity()


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of a supervisor.

    ``running`` lists, in spec order, the children with a live incarnation; ``restarts``
    counts re-starts per child over the supervisor's lifetime; ``total_restarts`` is
    their sum.
    """

    name: str
    running: tuple[str, ...]
    restarts: dict[str, int]
    total_restarts: int


@dataclass(eq=False, slots=True)
class _Incarnation:
    """One run of a child: mutable bookkeeping shared by the control task and the child's task."""

    restart: bool
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    actor: Actor | None = None
    ready: bool = False
    stopping: bool = False


@dataclass(eq=False, slots=True)
class _Child:
    """A child slot: its spec, its live incarnation (if any) and its history."""

    spec: ChildSpec
    current: _Incarnation | None = None
    started_before: bool = False
    retired: bool = False
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class _Exit:
    """An incarnation ended by itself (not stopped by the supervisor)."""

    child: _Child
    incarnation: _Incarnation
    reason: ExitReason
    error: Exception | None


class _Readiness:
    """The task status an actor sees: tells the supervisor, then releases ``tg.start``."""

    def __init__(self, outer: anyio.abc.TaskStatus[None], on_ready: Callable[[], None]) -> None:
        self._outer = outer
        self._on_ready = on_ready
        self._signalled = False

    def started(self, value: None = None) -> None:
        """Signal readiness.

        Raises:
            RuntimeError: called a second time.
        """
        if self._signalled:
            raise RuntimeError("called 'started' twice on the same task status")
        self._signalled = True
        self._on_ready()
        self._outer.started()

    def release(self) -> None:
        """Release ``tg.start`` for an actor that ended without signalling readiness."""
        if not self._signalled:
            self._signalled = True
            self._outer.started()


class Supervisor:
    """Runs child actors, restarts them by strategy within an intensity, and escalates.

    A `Supervisor` is itself an `Actor`, so supervisors nest: a child supervisor that gives
    up raises `SupervisorGaveUp` from its `run()`, which its parent sees as a crash.
    A supervisor runs once; a `ChildSpec.factory` should build a fresh one each time.
    """

    def __init__(
        self,
        *,
        name: str,
        children: Sequence[ChildSpec],
        strategy: RestartStrategy = RestartStrategy.ONE_FOR_ONE,
        intensity: RestartIntensity = _DEFAULT_INTENSITY,
        clock: Clock | None = None,
        on_event: Callable[[SupervisorEvent], None] | None = None,
    ) -> None:
        """Check the specs and prepare; nothing runs until `run()`.

        Raises:
            InvalidChildSpec: an empty or duplicate child id, a negative
                ``shutdown_timeout``, a negative ``max_restarts`` or a ``within`` <= 0.
        """
        _validate(children, intensity)
        self.name = name
        self._strategy = strategy
        self._intensity = intensity
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._on_event = on_event
        self._children = [_Child(spec) for spec in children]
        self._window = RestartWindow(intensity)
        self._exits: deque[_Exit] = deque()
        self._wakeup: anyio.Event | None = None
        self._starting: tuple[_Child, _Incarnation] | None = None
        self._cause: _Exit | None = None
        self._stop_requested = False
        self._ran = False

    # --- public ----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the children in order, supervise them, and stop them all before returning.

        ``task_status.started()`` is called once every child that should run is up (or,
        when a stop was requested first, just before returning). No child task is left
        running when this returns or raises.

        Raises:
            SupervisorGaveUp: more restarts than the intensity allows; ``__cause__`` is
                the last exit's exception (None for a normal return).
            RuntimeError: this supervisor has already run.
        """
        if self._ran:
            raise RuntimeError(f"supervisor {self.name!r} has already run; build a new one")
        self._ran = True
        self._wakeup = anyio.Event()
        async with anyio.create_task_group() as tg:
            last = await self._supervise(tg, task_status)
        if last is not None:
            raise SupervisorGaveUp(
                self.name, last.child.spec.id, self._intensity.max_restarts, self._intensity.within
            ) from last.error

    def request_stop(self) -> None:
        """Ask the supervisor to stop its children (reverse order) and return from `run()`.

        Idempotent; callable at any time from a task of the same event loop, also before
        `run()` (which then returns promptly). A child that is still starting is asked to
        stop and cancelled after its ``shutdown_timeout``.
        """
        if self._stop_requested:
            return
        self._stop_requested = True
        if self._starting is not None:
            child, incarnation = self._starting
            self._ask_to_stop(child, incarnation)
            incarnation.scope.deadline = anyio.current_time() + child.spec.shutdown_timeout
        if self._wakeup is not None:
            self._wakeup.set()

    def statistics(self) -> SupervisorStatistics:
        """Return a snapshot of which children run and how often each was restarted."""
        running = tuple(
            c.spec.id
            for c in self._children
            if c.current is not None and not c.current.done.is_set()
        )
        restarts = {c.spec.id: c.restarts for c in self._children}
        return SupervisorStatistics(self.name, running, restarts, sum(restarts.values()))

    # --- the control loop ------------------------------------------------------------

    async def _supervise(
        self, tg: anyio.abc.TaskGroup, task_status: anyio.abc.TaskStatus[None]
    ) -> _Exit | None:
        """Start, watch and restart until stopped (returns None) or giving up (the exit)."""
        announced = False
        while not self._stop_requested:
            if await self._start_pending(tg) and not announced:
                task_status.started()
                announced = True
            exit_ = await self._next_exit()
            if exit_ is None or not self._needs_restart(exit_):
                continue
            if not self._window.record(self._clock.now()):
                await self._give_up(exit_)
                return exit_
            self._cause = exit_
            await self._stop_siblings(exit_.child)
        await self._stop_all()
        if not announced:
            task_status.started()
        return None

    async def _start_pending(self, tg: anyio.abc.TaskGroup) -> bool:
        """Start, in spec order, every child that should run but does not.

        Returns True when all of them became ready; False when one ended before becoming
        ready (its exit is queued) or a stop was requested.
        """
        for child in self._children:
            if child.current is not None or child.retired:
                continue
            if self._stop_requested:
                return False
            incarnation = await self._start_child(tg, child)
            if not incarnation.ready:
                return False
        return True

    async def _start_child(self, tg: anyio.abc.TaskGroup, child: _Child) -> _Incarnation:
        """Start one incarnation of ``child`` and wait until it is ready or has ended."""
        restart = child.started_before
        if restart:
            child.restarts += 1
            self._log_restart(child)
        child.started_before = True
        incarnation = _Incarnation(restart=restart)
        child.current = incarnation
        self._starting = (child, incarnation)
        try:
            await tg.start(self._run_child, child, incarnation)
        finally:
            self._starting = None
        return incarnation

    async def _next_exit(self) -> _Exit | None:
        """Wait for the next exit report; None once a stop was requested."""
        while not self._stop_requested:
            if self._exits:
                return self._exits.popleft()
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return None

    def _needs_restart(self, exit_: _Exit) -> bool:
        """Retire or free the exited child's slot; True when its restart type restarts it."""
        child = exit_.child
        if child.current is not exit_.incarnation:
            return False  # stale: the supervisor already stopped or replaced it
        child.current = None
        if _restarts(child.spec.restart, exit_.reason):
            return True
        child.retired = True
        return False

    async def _give_up(self, exit_: _Exit) -> None:
        """Stop every child and report that the supervisor escalates."""
        logger.error(
            "supervisor %r gives up: child %r exceeded %d restart(s) within %gs (%s)",
            self.name,
            exit_.child.spec.id,
            self._intensity.max_restarts,
            self._intensity.within,
            _describe_exit(exit_),
        )
        await self._stop_all()
        self._emit(exit_.child, "gave_up", exit_.reason, exit_.error)

    # --- stopping ----------------------------------------------------------------------

    async def _stop_siblings(self, child: _Child) -> None:
        """Stop the siblings that the strategy restarts together with ``child``."""
        index = self._children.index(child)
        match self._strategy:
            case RestartStrategy.ONE_FOR_ONE:
                victims: list[_Child] = []
            case RestartStrategy.ONE_FOR_ALL:
                victims = [c for c in self._children if c is not child]
            case RestartStrategy.REST_FOR_ONE:
                victims = self._children[index + 1 :]
            case _:
                assert_never(self._strategy)
        for victim in reversed(victims):
            if victim.spec.restart is Restart.TEMPORARY and victim.current is not None:
                victim.retired = True
            await self._stop_child(victim)

    async def _stop_all(self) -> None:
        """Stop every child, in reverse spec order."""
        for child in reversed(self._children):
            await self._stop_child(child)

    async def _stop_child(self, child: _Child) -> None:
        """Stop ``child``'s live incarnation, gracefully, then by cancellation after its timeout.

        A child that already ended by itself is only forgotten: its queued exit report
        becomes stale, so it is neither counted twice nor reported as stopped.
        """
        incarnation = child.current
        if incarnation is None:
            return
        child.current = None
        if incarnation.done.is_set():
            return
        self._ask_to_stop(child, incarnation)
        with anyio.move_on_after(child.spec.shutdown_timeout):
            await incarnation.done.wait()
        if not incarnation.done.is_set():
            incarnation.scope.cancel()
            await incarnation.done.wait()
        self._emit(child, "stopped", ExitReason.SHUTDOWN, None)

    def _ask_to_stop(self, child: _Child, incarnation: _Incarnation) -> None:
        """Mark ``incarnation`` as stopping and call its actor's ``request_stop`` once."""
        if incarnation.stopping:
            return
        incarnation.stopping = True
        if incarnation.actor is None:
            return  # not begun: it sees `stopping` and never builds its actor
        try:
            incarnation.actor.request_stop()
        except Exception:
            logger.exception(
                "supervisor %r: request_stop of child %r failed; cancelling it",
                self.name,
                child.spec.id,
            )
            incarnation.scope.cancel()

    # --- the child's task --------------------------------------------------------------

    async def _run_child(
        self,
        child: _Child,
        incarnation: _Incarnation,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one incarnation and report how it ended; cancellation from outside propagates."""
        ready = _Readiness(task_status, lambda: self._on_ready(child, incarnation))
        try:
            reason, error = await self._incarnate(child, incarnation, ready)
        finally:
            incarnation.done.set()
        ready.release()
        if incarnation.stopping:
            if reason is ExitReason.CRASHED:  # not restarted, but never silent
                logger.error("supervisor %r: child %r crashed while stopping: %s", self.name,
                             child.spec.id, _describe_exit(_Exit(child, incarnation, reason,
                                                                 error)))
            return  # the supervisor is stopping it and reports that itself
        kind = "crashed" if reason is ExitReason.CRASHED else "exited"
        self._emit(child, kind, reason, error)
        self._exits.append(_Exit(child, incarnation, reason, error))
        if self._wakeup is not None:
            self._wakeup.set()

    async def _incarnate(
        self, child: _Child, incarnation: _Incarnation, ready: _Readiness
    ) -> tuple[ExitReason, Exception | None]:
        """Build the actor and run it inside the incarnation's scope; classify the end."""
        with incarnation.scope:
            if incarnation.stopping:
                return ExitReason.SHUTDOWN, None
            try:
                if incarnation.restart and child.spec.before_restart is not None:
                    child.spec.before_restart()
                incarnation.actor = child.spec.factory()
                await incarnation.actor.run(task_status=ready)
            except Exception as exc:
                return ExitReason.CRASHED, _unwrap(exc)
            return ExitReason.NORMAL, None
        return ExitReason.SHUTDOWN, None  # reached only when our own scope cancelled it

    def _on_ready(self, child: _Child, incarnation: _Incarnation) -> None:
        incarnation.ready = True
        if incarnation.restart and self._cause is not None:
            # A restart carries its cause: the exit that made the strategy restart it.
            self._emit(child, "restarted", self._cause.reason, self._cause.error)
        else:
            self._emit(child, "started", None, None)

    # --- reporting -----------------------------------------------------------------------

    def _log_restart(self, child: _Child) -> None:
        logger.warning(
            "supervisor %r restarting child %r (restart %d) after %s",
            self.name,
            child.spec.id,
            child.restarts,
            _describe_exit(self._cause) if self._cause is not None else "an unknown exit",
        )

    def _emit(
        self, child: _Child, kind: str, reason: ExitReason | None, error: Exception | None
    ) -> None:
        if self._on_event is None:
            return
        event = SupervisorEvent(
            supervisor=self.name,
            child_id=child.spec.id,
            kind=kind,
            reason=reason,
            error=_describe_error(error),
            restarts=child.restarts,
            at=self._clock.now(),
        )
        try:
            self._on_event(event)
        except Exception:
            logger.exception("supervisor %r: on_event callback failed", self.name)


def _restarts(restart: Restart, reason: ExitReason) -> bool:
    """Whether a child of this restart type is restarted after an exit for ``reason``."""
    match restart:
        case Restart.PERMANENT:
            return True
        case Restart.TRANSIENT:
            return reason is ExitReason.CRASHED
        case Restart.TEMPORARY:
            return False
        case _:
            assert_never(restart)


def _describe_error(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _describe_exit(exit_: _Exit) -> str:
    if exit_.error is not None:
        return f"child {exit_.child.spec.id!r} crashed with {_describe_error(exit_.error)}"
    return f"child {exit_.child.spec.id!r} exited ({exit_.reason.value})"


def _validate(children: Sequence[ChildSpec], intensity: RestartIntensity) -> None:
    """Raise `InvalidChildSpec` for the first spec or intensity value that cannot work."""
    seen: set[str] = set()
    for spec in children:
        if not spec.id:
            raise InvalidChildSpec("a child id must be a non-empty string")
        if spec.id in seen:
            raise InvalidChildSpec(f"duplicate child id {spec.id!r}")
        seen.add(spec.id)
        if not spec.shutdown_timeout >= 0:
            raise InvalidChildSpec(
                f"child {spec.id!r}: shutdown_timeout must be >= 0, got {spec.shutdown_timeout}"
            )
    if intensity.max_restarts < 0:
        raise InvalidChildSpec(f"max_restarts must be >= 0, got {intensity.max_restarts}")
    if not intensity.within > 0:
        raise InvalidChildSpec(f"within must be > 0, got {intensity.within}")


def _unwrap(exc: Exception) -> Exception:
    """The one error inside (nested) single-member exception groups, else ``exc`` itself.

    An actor that runs its own task group crashes with an `ExceptionGroup` around the real
    error; the cause that restarts and escalations carry should be the real error.
    """
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
