"""The store protocol: reads for everybody, one write entry point for the syncer.

A store keeps jobs, the operation ledger, workers, runs with their manifest entries, an
event log and a little metadata. `Store.apply` is the only way to change any of it: it
applies a batch of `SyncerMsg` in one transaction, commits, and returns what happened;
on failure it rolls back and raises `StoreUnavailable`, having changed nothing. Every
message is idempotent to apply twice, so retrying a batch whose commit outcome is unknown
is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from syncward.jobs import Job, JobState
    from syncward.messages import ApplyResult, LeaseOrder, SyncerMsg
    from syncward.runtime import Runtime
    from syncward.supervisor import Actor

__all__ = ["JobRow", "LeaseRow", "ManifestComparison", "Source", "Store", "WorkerRow"]


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


class Store(Protocol):
    """What the runtime needs of a job store. See the module docstring for the contract."""

    url: str

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
        """
        ...

    async def counts(self) -> dict[JobState, int]: ...

    async def get_job(self, key: str) -> JobRow | None: ...

    async def get_op(self, op_key: str) -> str | None: ...

    async def jobs_in_state(self, state: JobState, *, limit: int | None = None) -> list[JobRow]: ...

    async def expired_leases(self, now: float, *, limit: int) -> list[tuple[int, int]]: ...

    async def active_leases(self, *, limit: int = 100) -> list[LeaseRow]: ...

    async def next_due(self) -> float | None: ...

    async def leased_jobs(self, boot_id: str, *, default_lease_seconds: float) -> list[Job]: ...

    async def workers(self) -> list[WorkerRow]: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def aclose(self) -> None: ...


class Source(Protocol):
    """Where work comes from besides `Runtime.submit`: a Redis stream, a Redis list, ...

    The runtime runs each source as an actor, a child of its root supervisor started
    after the downloader pool (so it is stopped first). ``actor(runtime)`` makes a fresh
    incarnation on every (re)start. A source submits through ``runtime.send(Submit(...,
    on_commit=...))`` and acknowledges upstream only from ``on_commit``, i.e. after the
    commit; it takes no more than ``runtime.room()`` entries into local buffers at once.
    """

    name: str

    def actor(self, runtime: Runtime) -> Actor: ...

    def status(self) -> dict[str, Any]:
        """JSON-serialisable state for `Runtime.status` (connected, lag, gaps, ...)."""
        ...
