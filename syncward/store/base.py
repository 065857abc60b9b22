"""The store protocols: `StoreReader` for everybody, `Store` for the runtime's syncer.

A store keeps jobs, the operation ledger, workers, runs with their manifest entries, an
event log and a little metadata. `Store.apply` is the only way to change any of it: it
applies a batch of `SyncerMsg` in one transaction, commits, and returns what happened;
on failure it rolls back and raises `StoreUnavailable`, having changed nothing. Every
message is idempotent to apply twice, so retrying a batch whose commit outcome is unknown
is safe. What each message *means* is decided once, in `syncward.store.apply`; a backend
only answers the bulk operations of `syncward.store.port`.

Reads (`StoreReader`) are safe from any task and, for a durable backend, from any
process; they never wait for the writer. Results are frozen dataclasses (or enums and
plain numbers) until the JSON edge.

Design note: how a store proves another boot dead differs by backend, and start-up
reconciliation takes its rule from the store (`Liveness`): an ``EXCLUSIVE`` store (one
SQLite file under an OS lock, the in-memory store) has one owner at a time, so every
lease of another boot is stale the moment the store is opened; a ``SHARED`` store (a
database many processes use) must ask whether each other boot is still alive.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from syncward.clock import Clock
    from syncward.jobs import Job, JobState
    from syncward.messages import ApplyResult, LeaseOrder, SyncerMsg
    from syncward.supervisor import Actor

__all__ = [
    "EventRow",
    "JobRow",
    "LeaseRow",
    "Liveness",
    "ManifestComparison",
    "OwnerInfo",
    "RunInfo",
    "RunReject",
    "Store",
    "StoreHooks",
    "StoreReader",
    "WorkerRow",
    "WorkerState",
]


class Liveness(enum.Enum):
    """How a store proves that the boot which holds a lease is gone."""

    EXCLUSIVE = "exclusive"  # one owner at a time: every other boot is dead
    SHARED = "shared"  # several owners: each boot's liveness is checked on its own


class WorkerState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    key: str
    identity: dict[str, str | int]
    payload: dict[str, Any]
    state: JobState
    stage: str | None
    attempts: int
    max_attempts: int
    next_attempt_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    fence: int
    last_error: str | None
    result: Any
    created_at: float
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "identity": self.identity,
            "state": str(self.state),
            "stage": self.stage,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class LeaseRow:
    job_id: int
    key: str
    fence: int
    owner: str | None
    boot_id: str | None
    expires_at: float | None
    stage: str | None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    boot_id: str
    pid: int | None
    host: str | None
    status: str
    started_at: float | None
    heartbeat_at: float | None


@dataclass(frozen=True, slots=True)
class ManifestComparison:
    entries: int
    distinct: int
    missing: list[dict[str, str | int]]
    not_terminal: int


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: int
    source: str
    options: dict[str, Any]
    status: str
    started_at: float
    finished_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "options": self.options,
                "status": self.status, "started_at": self.started_at,
                "finished_at": self.finished_at}


@dataclass(frozen=True, slots=True)
class RunReject:
    line: int
    reason: str
    raw: str


@dataclass(frozen=True, slots=True)
class EventRow:
    at: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, **self.detail}


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """A runtime that holds (or held) the store, as far as the store can tell.

    ``alive`` is None when the store cannot tell (another host's pid, say).
    """

    boot_id: str | None
    pid: int | None
    host: str | None
    since: str | None
    alive: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "pid": self.pid, "host": self.host,
                "since": self.since, "alive": self.alive}


class StoreReader(Protocol):
    """Every read anybody needs. Safe from any task; never blocks the writer."""

    url: str

    async def counts(self) -> dict[JobState, int]:
        """Jobs by state (every state present, zero when none)."""
        ...

    async def get_job(self, key: str) -> JobRow | None: ...

    async def jobs_in_state(self, state: JobState, *, limit: int | None = None,
                            after: int | None = None) -> list[JobRow]:
        """Jobs in ``state`` by id; ``after`` is the last id of the previous page (keyset)."""
        ...

    async def get_op(self, op_key: str) -> str | None:
        """The committed JSON result of an operation, if the ledger has it."""
        ...

    async def ops_count(self) -> tuple[int, int]:
        """(rows in the operation ledger, distinct op keys): equal by the UNIQUE rule."""
        ...

    async def expired_leases(self, now: float, *, limit: int) -> list[tuple[int, int]]:
        """``(job_id, fence)`` of leases past their expiry, oldest first."""
        ...

    async def active_leases(self, *, limit: int = 100) -> list[LeaseRow]: ...

    async def leased_jobs(self, boot_id: str, *, default_lease_seconds: float) -> list[Job]:
        """The jobs leased to ``boot_id``, as a downloader would receive them."""
        ...

    async def next_due(self, *, limited: bool = True) -> float | None:
        """When the earliest planned job is due (None: nothing planned); without
        ``limited``, among jobs with no limit key only (a runtime that declares limits
        learns when its limited jobs may start from the lease itself)."""
        ...

    async def retrying_count(self, *, limit: int = 10_000) -> int:
        """Planned jobs that have failed an attempt, counted up to ``limit``."""
        ...

    async def workers(self) -> list[WorkerRow]: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def events(self, *, kind: str | None = None, limit: int = 50) -> list[EventRow]:
        """The newest events first."""
        ...

    async def rejection_count(self) -> int:
        """Messages refused on their own (stale fences, illegal transitions), ever."""
        ...

    async def latest_run(self) -> int | None: ...

    async def run_info(self, run_id: int) -> RunInfo | None: ...

    async def run_rejects(self, run_id: int) -> list[RunReject]: ...

    async def run_states(self, run_id: int) -> dict[JobState, int]:
        """A run's distinct manifest keys counted by their job's state."""
        ...

    async def compare_run(self, run_id: int) -> ManifestComparison:
        """A run's manifest entries against the jobs table."""
        ...

    async def key_states(self, keys: Sequence[str]) -> dict[str, JobState]:
        """The state of each of these job keys that has a job (absent keys left out)."""
        ...

    async def owners(self) -> list[OwnerInfo]:
        """The runtimes the store knows to hold it now (for `status`)."""
        ...

    async def published_status(self, boot_id: str) -> dict[str, Any] | None:
        """What the live runtime ``boot_id`` last published (see `Store.publish_status`)."""
        ...

    async def last_write_at(self) -> float | None:
        """When the store last committed, as well as it can tell (None: unknown)."""
        ...

    async def aclose(self) -> None: ...


class StoreHooks(Protocol):
    """What a store's own actors (`Store.housekeeping`) may use of the runtime."""

    @property
    def boot_id(self) -> str: ...

    @property
    def worker(self) -> str:
        """This boot's worker name ("" until it is registered)."""
        ...

    @property
    def clock(self) -> Clock: ...

    @property
    def closing(self) -> bool:
        """The runtime is stopping (its worker is being marked stopped)."""
        ...

    async def send(self, msg: SyncerMsg) -> None:
        """Deliver a message to the syncer (the only writer)."""
        ...

    def wake(self) -> None:
        """Work may be due now: the syncer leases at once instead of at its next poll."""
        ...


class Store(StoreReader, Protocol):
    """The reader plus the one write entry point, which only the syncer calls."""

    liveness: Liveness

    async def attach(self, boot_id: str) -> None:
        """A runtime with this boot id starts on the store: record the liveness evidence.

        (SQLite writes it into its owner lock; a shared store takes the boot's lock.)
        """
        ...

    async def apply(
        self,
        batch: Sequence[SyncerMsg],
        *,
        now: float,
        lease: LeaseOrder | None = None,
        recount: bool = False,
        dry_run: bool = False,
    ) -> ApplyResult:
        """Apply ``batch`` in one transaction and commit (or roll back when ``dry_run``).

        Raises:
            StoreUnavailable: the transaction failed and was rolled back; nothing changed.
            StoreError: the store is read-only.
        """
        ...

    def housekeeping(self, hooks: StoreHooks) -> Sequence[tuple[str, Callable[[], Actor]]]:
        """The backend's own actors, ``(child id, factory)``, run under the root supervisor
        (SQLite: the WAL checkpointer; PostgreSQL: liveness and wake-ups)."""
        ...

    async def publish_status(self, status: dict[str, Any] | None) -> None:
        """Make the running runtime's in-memory status readable by other processes.

        None withdraws it (the runtime is stopping). Never goes through a transaction:
        when commits fail, the failure is exactly what must still be published.
        """
        ...
