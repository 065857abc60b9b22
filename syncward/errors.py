"""The exception tree of syncward: one root, layers beneath.

```
SyncwardError
  InvalidJob                 an identity or spec that cannot become a job (names the field)
  IllegalTransition          a state change the transition table refuses
  LeaseLost                  a handler's writes were fenced out: its lease is gone
  StageError                 a stage the handler's declared order refuses (not committed)
  ActorError                 MailboxClosed | MailboxFull
  SupervisorError            SupervisorGaveUp(child_id, restarts) | InvalidChildSpec
  StoreError                 StoreLocked(owner) | SchemaTooNew(found, supported)
                             | StoreUnavailable(kind) (a commit or a read failed)
                             | StoreFailing(kind, store) (its environment failed: the
                               runtime stopped; run again once it is mended)
  AdapterError               AdapterUnavailable | MissingDependency(extra)
  ConfigError                a bad URL, handler target or option (the CLI's exit 2)

HandlerSignal (not an error: how a handler tells the downloader what happened)
  Retry(after=None) | Permanent(reason) | Skip(reason)
```

Every exception builds its message in ``__init__`` and keeps its context as typed
attributes, so a caller can act on ``exc.child_id`` without parsing text.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "ActorError",
    "AdapterError",
    "AdapterUnavailable",
    "ConfigError",
    "HandlerSignal",
    "IllegalTransition",
    "InjectedCrash",
    "InvalidChildSpec",
    "InvalidJob",
    "LeaseLost",
    "MailboxClosed",
    "MailboxFull",
    "MissingDependency",
    "Permanent",
    "Retry",
    "SchemaTooNew",
    "Skip",
    "StageError",
    "StoreError",
    "StoreFailing",
    "StoreFailure",
    "StoreLocked",
    "StoreUnavailable",
    "SupervisorError",
    "SupervisorGaveUp",
    "SyncwardError",
]


class SyncwardError(Exception):
    """Root of every error syncward raises on its own account."""


class InvalidJob(SyncwardError):
    """A job identity, payload or spec that cannot be turned into a job."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        where = f"field {field!r}: " if field is not None else ""
        super().__init__(f"invalid job: {where}{reason}")


class IllegalTransition(SyncwardError):
    """A state change that the transition table does not allow."""

    def __init__(self, current: object, target: object, *, job: str | None = None) -> None:
        self.current = current
        self.target = target
        self.job = job
        who = f" for job {job}" if job else ""
        super().__init__(f"illegal transition {current} -> {target}{who}")


class LeaseLost(SyncwardError):
    """A handler's lease is no longer held (reaped and granted to another owner).

    Raised inside the handler by ``ctx.stage`` and ``ctx.effect``: its writes are fenced out.
    """

    def __init__(self, job: str, reason: str) -> None:
        self.job = job
        self.reason = reason
        super().__init__(f"lease on job {job} lost: {reason}")


class StageError(SyncwardError):
    """A handler declared its stage order and asked for a stage outside it (unknown), or
    one not after the job's current stage (backwards). Nothing was committed.

    Raised inside the handler by ``ctx.stage``; left uncaught, it fails the job at once
    (a programming error: retrying would only meet it again).
    """

    def __init__(self, stage: str, *, order: tuple[str, ...], current: str | None,
                 job: str | None = None) -> None:
        self.stage = stage
        self.order = order
        self.current = current
        self.job = job
        why = "not a declared stage" if stage not in order else "not after the current stage"
        who = f" of job {job}" if job else ""
        super().__init__(
            f"stage {stage!r}{who} refused: {why}; declared order {' -> '.join(order)};"
            f" current stage {current if current is not None else '(none: not started)'}")


class ActorError(SyncwardError):
    """Problems with actors and their mailboxes."""


class MailboxClosed(ActorError):
    """The mailbox was closed by us; nothing more can be sent to it."""

    def __init__(self, mailbox: str) -> None:
        self.mailbox = mailbox
        super().__init__(f"mailbox {mailbox!r} is closed")


class MailboxFull(ActorError):
    """``send_nowait`` found the mailbox at capacity."""

    def __init__(self, mailbox: str, capacity: int) -> None:
        self.mailbox = mailbox
        self.capacity = capacity
        super().__init__(f"mailbox {mailbox!r} is full ({capacity} messages)")


class SupervisorError(SyncwardError):
    """Problems of the supervision tree."""


class InvalidChildSpec(SupervisorError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid child spec: {reason}")


class SupervisorGaveUp(SupervisorError):
    """A child restarted more often than the restart intensity allows: escalation.

    The child's last crash is ``__cause__``.
    """

    def __init__(self, supervisor: str, child_id: str, restarts: int, within: float) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.restarts = restarts
        self.within = within
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child_id!r} needed more than "
            f"{restarts} restart(s) within {within:g}s"
        )


class StoreError(SyncwardError):
    """Problems with the job store."""


class StoreFailure(enum.Enum):
    """What kind of failure a store operation met: passing, or its environment."""

    TRANSIENT = "transient"  # busy, locked, a connection dropped: retry
    DISK_FULL = "disk full"
    READ_ONLY = "read-only"
    PERMISSION = "permission denied"
    GONE = "removed or replaced"  # the store's file is not the one that was opened
    IO = "I/O error"


class StoreUnavailable(StoreError):
    """A read or a commit failed; nothing was applied. ``kind`` says whether retrying can
    help by itself (`StoreFailure.TRANSIENT`) or only once a person mends the store's
    environment (a full disk, a read-only filesystem, ...)."""

    def __init__(self, operation: str, cause: BaseException,
                 kind: StoreFailure = StoreFailure.TRANSIENT) -> None:
        self.operation = operation
        self.kind = kind
        self.cause_text = f"{type(cause).__name__}: {cause}"
        super().__init__(f"store {operation} failed: {self.cause_text}")


_MENDS = {
    StoreFailure.DISK_FULL: "the store's disk is full: {store}: {detail}; nothing committed "
                            "is lost; free space and run the same command again",
    StoreFailure.READ_ONLY: "the store cannot be written (a read-only file or filesystem): "
                            "{store}: {detail}; nothing committed is lost; make it writable "
                            "and run the same command again",
    StoreFailure.PERMISSION: "permission denied on the store: {store}: {detail}; nothing "
                             "committed is lost; fix its permissions and run the same "
                             "command again",
    StoreFailure.GONE: "the store file was removed or replaced during the run: {store}; "
                       "stopped writing to a file nobody can see; restore it (or start "
                       "afresh) and run the same command again",
    StoreFailure.IO: "the store's disk failed: {store}: {detail}; nothing committed is "
                     "lost; check the disk and run the same command again",
    StoreFailure.TRANSIENT: "the store kept failing: {store}: {detail}; nothing committed "
                            "is lost; run the same command again",
}


class StoreFailing(StoreError):
    """The store's environment failed and does not mend by waiting: the runtime stopped.

    Everything committed before stays committed; work in hand is redone by the next run.
    """

    def __init__(self, kind: StoreFailure, store: str, detail: str) -> None:
        self.kind = kind
        self.store = store
        self.detail = detail
        super().__init__(_MENDS[kind].format(store=store, detail=detail))


class StoreLocked(StoreError):
    """Another runtime owns this store."""

    def __init__(self, path: str, owner: dict[str, Any]) -> None:
        self.path = path
        self.owner = owner
        desc = ", ".join(f"{k} {owner[k]}" for k in ("pid", "host", "since") if k in owner)
        super().__init__(f"store {path} is in use by another runtime ({desc or 'owner unknown'})")


class SchemaTooNew(StoreError):
    """The database was written by a newer syncward."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"store {path} has schema version {found}; this syncward supports up to "
            f"{supported}: upgrade syncward to open it"
        )


class AdapterError(SyncwardError):
    """Problems with sources and effects adapters."""


class AdapterUnavailable(AdapterError):
    def __init__(self, adapter: str, cause: BaseException | str) -> None:
        self.adapter = adapter
        super().__init__(f"{adapter} unavailable: {cause}")


class MissingDependency(AdapterError):
    def __init__(self, extra: str) -> None:
        self.extra = extra
        super().__init__(
            f"this feature needs the optional dependency {extra!r}: "
            f'pip install "syncward[{extra}]"'
        )


class ConfigError(SyncwardError):
    """A configuration value that cannot be used (URL, handler target, option)."""


class InjectedCrash(Exception):
    """Raised by ``syncward.testing.Faults`` to crash an actor on purpose."""

    def __init__(self, point: str) -> None:
        self.point = point
        super().__init__(f"injected crash at {point}")


class HandlerSignal(Exception):
    """Base of the exceptions a handler raises to choose its job's outcome."""


class Retry(HandlerSignal):
    """Try the job again later: after ``after`` seconds, or by the back-off policy.

    With ``hold_key`` (and ``after``), every job of this job's limit key waits that long
    too (`syncward.Limit`): the server said "not now" to all of them, e.g. a 429.
    """

    def __init__(self, reason: str = "retry requested", *, after: float | None = None,
                 hold_key: bool = False) -> None:
        self.reason = reason
        self.after = after
        self.hold_key = hold_key
        super().__init__(reason)


class Permanent(HandlerSignal):
    """The job can never succeed: mark it failed at once."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Skip(HandlerSignal):
    """The job needs no work (a duplicate, cancelled): mark it skipped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
