"""What the routes read and do, over either a live runtime or a store alone.

`OpsView` is the seam between the routes and what they look at: `syncward.web.live`
implements it over a running `Runtime` (counts from its stats-keeper, admin actions
through its syncer), `syncward.web.watch` over a store opened read-only (counts read
from the store, what a live runtime publishes, no admin actions). The routes never know
which one they have. Reads go through `StoreReader` only.

Also here: what both views share — keyset pages of jobs, a job's JSON, the
figures `/metrics` exposes (`MetricsSnapshot`), and a small cache so that many dashboards
polling one store cost the store one read per ``cache_seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from syncward.jobs import JobState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from syncward.health import Health, WorkerFacts
    from syncward.store.base import JobRow, StoreReader

__all__ = ["Cache", "JobPage", "MetricsSnapshot", "OpsView", "job_detail", "job_summary",
           "list_jobs", "store_overview"]

T = TypeVar("T")
_ERROR_SHOWN = 2000
_FAILURES_SHOWN = 20
_SLOWNESS = 20
_LEASES_SHOWN = 50


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs by id; ``next_after`` is the ``after=`` of the next page."""

    jobs: tuple[JobRow, ...]
    next_after: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": [job_summary(j) for j in self.jobs], "next_after": self.next_after}


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSnapshot:
    """The figures `/metrics` exposes at one scrape; None: not known in this view."""

    counts: Mapping[JobState, int]
    healthy: bool
    paused: bool | None = None
    commits: int | None = None
    commit_failures: int | None = None
    rejected: int | None = None
    last_commit_age: float | None = None
    restarts: Mapping[str, int] = field(default_factory=dict)  # by actor
    reconcile_cycles: int | None = None
    reconcile_fixed: Mapping[str, int] = field(default_factory=dict)
    reconcile_seconds: float = 0.0
    drift_checks: int | None = None
    drift_last: int | None = None
    drift_total: int | None = None
    in_hand: int | None = None
    mailboxes: Mapping[str, int] = field(default_factory=dict)  # queued, by mailbox
    sources: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # lag, pending


class OpsView(Protocol):
    """What the routes need (see the module docstring)."""

    mode: str  # "live" or "watch"
    store_name: str  # the store as shown to a person (passwords masked)
    writable: bool  # whether admin actions can be done

    async def health(self) -> Health: ...

    async def jobs(self, state: JobState | None, limit: int, after: int | None) -> JobPage: ...

    async def job(self, key: str) -> dict[str, Any] | None: ...

    async def workers(self) -> list[WorkerFacts]: ...

    async def reconciliation(self) -> dict[str, Any]: ...

    async def overview(self) -> dict[str, Any]: ...

    async def metrics(self) -> MetricsSnapshot: ...

    async def refresh_stats(self) -> dict[str, Any]: ...

    async def reconcile(self, *, dry_run: bool) -> dict[str, Any]: ...

    async def retry(self, keys: list[str] | None) -> dict[str, Any]: ...

    async def cancel(self, keys: list[str] | None, state: str | None) -> dict[str, Any]: ...

    async def pause(self, paused: bool) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class Cache:
    """Values reused for a while; one computation at a time per name.

    A value is reused for ``seconds``, or for ``_SLOWNESS`` times as long as computing it
    took, whichever is longer: a read that takes 50 ms on a big store is made at most
    every second, so readers never take more than a small share of the store's time.
    ``version`` names what the value depends on: a different version recomputes at once
    (the failed jobs when the count of failed jobs changes).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._values: dict[str, tuple[float, object, Any]] = {}  # until, version, value
        self._locks: dict[str, anyio.Lock] = {}

    async def get(self, name: str, compute: Callable[[], Awaitable[T]],
                  version: object = None) -> T:
        lock = self._locks.setdefault(name, anyio.Lock())
        async with lock:
            hit = self._values.get(name)
            if hit is not None and hit[1] == version and time.monotonic() < hit[0]:
                value: T = hit[2]
                return value
            started = time.monotonic()
            value = await compute()
            took = time.monotonic() - started
            self._values[name] = (started + max(self.seconds, _SLOWNESS * took), version,
                                  value)
            return value


async def list_jobs(store: StoreReader, state: JobState | None, limit: int,
                    after: int | None) -> JobPage:
    """Jobs by id after ``after``, in one state or all (merged by id): keyset paging."""
    states = [state] if state is not None else list(JobState)
    found: list[JobRow] = []
    for s in states:
        found.extend(await store.jobs_in_state(s, limit=limit + 1, after=after))
    found.sort(key=lambda j: j.id)
    page = tuple(found[:limit])
    return JobPage(page, page[-1].id if len(found) > limit else None)


def job_summary(row: JobRow) -> dict[str, Any]:
    """A job in a listing: identity, state, stage, attempts, last error."""
    return {"key": row.key, "identity": row.identity, "state": row.state.value,
            "stage": row.stage, "attempts": row.attempts, "max_attempts": row.max_attempts,
            "error": _clip(row.last_error), "updated_at": row.updated_at}


def job_detail(row: JobRow, progress: Mapping[str, Any] | None) -> dict[str, Any]:
    """A job on its own (never its payload, which may hold secrets)."""
    lease = None
    if row.state is JobState.LEASED:
        lease = {"owner": row.lease_owner, "expires_at": row.lease_expires_at,
                 "fence": row.fence}
    return {**job_summary(row), "next_attempt_at": row.next_attempt_at, "lease": lease,
            "progress": dict(progress) if progress is not None else None,
            "result": row.result, "created_at": row.created_at}


async def store_overview(store: StoreReader, cache: Cache, counts: Mapping[JobState, int],
                         progress: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The dashboard's store-side parts: failures, leases (with progress), the run.

    Failed jobs are read only when there are some, and again when their count changes
    (a store may have to scan for them).
    """
    failed = counts.get(JobState.FAILED, 0)
    failures: list[JobRow] = []
    if failed:
        failures = await cache.get("failures", lambda: store.jobs_in_state(
            JobState.FAILED, limit=_FAILURES_SHOWN), version=failed)
    leases = await cache.get("leases", lambda: store.active_leases(limit=_LEASES_SHOWN))
    run = await cache.get("run", lambda: _latest_run(store))
    return {
        "failures": [job_summary(j) for j in failures],
        "leases": [{"key": lease.key, "owner": lease.owner, "stage": lease.stage,
                    "expires_at": lease.expires_at,
                    "progress": (progress[lease.key].get("progress")
                                 if lease.key in progress else None)}
                   for lease in leases],
        "run": run,
    }


async def _latest_run(store: StoreReader) -> dict[str, Any] | None:
    run_id = await store.latest_run()
    info = await store.run_info(run_id) if run_id is not None else None
    if info is None:
        return None
    states = await store.run_states(info.id)
    return {"id": info.id, "source": info.source, "status": info.status,
            "started_at": info.started_at, "finished_at": info.finished_at,
            "states": {s.value: states.get(s, 0) for s in JobState},
            "total": sum(states.values()),
            "done": sum(n for s, n in states.items()
                        if s in (JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED))}


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= _ERROR_SHOWN:
        return text
    return text[:_ERROR_SHOWN] + "…"
