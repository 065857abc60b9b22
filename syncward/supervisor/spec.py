"""The supervision vocabulary: child specs, restart types, strategies, exit reasons, events.

Design note: the names are OTP's (`supervisor.erl`), not invented. A `ChildSpec` is a
frozen value object handed to a `Supervisor`; it holds a *factory* rather than an actor,
because every (re)start runs a fresh incarnation (state from a crashed incarnation is
never reused). Anything that must survive a restart (a mailbox and its in-flight
messages) belongs to whoever builds the spec, and `before_restart` is the hook that puts
such state back in order before the next incarnation starts.

Validation lives in `Supervisor.__init__`, which sees all specs at once (ids must be
unique across siblings, which no single spec can check).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Actor",
    "ChildSpec",
    "ExitReason",
    "Restart",
    "RestartIntensity",
    "RestartStrategy",
    "SupervisorEvent",
]


class Restart(enum.Enum):
    """When a child that exited is started again."""

    PERMANENT = "permanent"
    """Always: after a crash and after a normal return."""
    TRANSIENT = "transient"
    """Only after `ExitReason.CRASHED`; a normal return ends the child for good."""
    TEMPORARY = "temporary"
    """Never; also not when a sibling's restart stopped it (as in OTP)."""


class RestartStrategy(enum.Enum):
    """Which children are restarted together when one of them exits."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped (reverse order), then all start in order."""
    REST_FOR_ONE = "rest_for_one"
    """The child that exited and every child after it in the spec order."""


class ExitReason(enum.Enum):
    """Why an incarnation of a child ended."""

    NORMAL = "normal"
    """`run()` returned while nobody asked it to stop."""
    SHUTDOWN = "shutdown"
    """The supervisor stopped it (request_stop, then cancellation after the timeout)."""
    CRASHED = "crashed"
    """`run()` (or the factory, or `before_restart`) raised an `Exception`."""


@dataclass(frozen=True, slots=True)
class RestartIntensity:
    """More than ``max_restarts`` restarts inside ``within`` seconds and the supervisor gives up.

    OTP's defaults: at most 1 restart in 5 seconds. ``max_restarts=0`` means the first
    exit that needs a restart escalates at once.
    """

    max_restarts: int = 1
    within: float = 5.0


class Actor(Protocol):
    """What a supervisor can run: something with a readiness handshake and a stop request."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Do the actor's work; call ``task_status.started()`` once ready; return when done.

        Raising an `Exception` is a crash. Cancellation must be allowed to propagate.
        """
        ...

    def request_stop(self) -> None:
        """Ask for a graceful stop; `run()` should return soon after. Must not block."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """How to start, restart and stop one child of a supervisor.

    Attributes:
        id: unique among its siblings and non-empty.
        factory: called for each (re)start, in the child's own task; returns a fresh actor.
        restart: when an exited child is started again (see `Restart`).
        shutdown_timeout: seconds between `request_stop()` and cancelling the child's
            scope (OTP's ``brutal_kill`` is 0). Must be >= 0.
        before_restart: called just before the factory on every *re*-start (never on the
            first start), e.g. to redeliver a mailbox's in-flight messages; its return
            value is ignored. Raising from it counts as a crash of the new incarnation.
    """

    id: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    before_restart: Callable[[], object] | None = None


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    """One thing that happened to a child, as reported to ``on_event``.

    ``kind`` is one of ``"started"``, ``"restarted"`` (the incarnation called
    ``task_status.started()``), ``"crashed"``, ``"exited"`` (it ended by itself),
    ``"stopped"`` (the supervisor stopped it) and ``"gave_up"`` (the supervisor escalates
    because of this child). ``reason`` is set for the last four, ``error`` (``"Type:
    message"``) when an exception was involved; ``restarts`` is the child's restart count
    so far and ``at`` the supervisor clock's `now()`.
    """

    supervisor: str
    child_id: str
    kind: str
    reason: ExitReason | None
    error: str | None
    restarts: int
    at: float
