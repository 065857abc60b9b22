"""The write port: the bulk operations a backend implements, inside one transaction.

`syncward.store.apply` decides what every message means and drives a `WriteTx`; a backend
answers "load these rows", "insert these jobs unless present", "update these if the fence
still matches", "lease the next N due jobs", and a few more, each in its own SQL (or, for
the memory store, its own dicts). One batch makes one call per kind of operation, so a
batch of a thousand outcomes is one ``executemany``, not a thousand statements.

Design note: the methods are ``async`` so that a backend with an async driver (asyncpg)
awaits each one on the event loop. A backend with a synchronous driver (sqlite3, the
memory store) implements them without ever suspending, and runs the whole applier
coroutine to completion in one go (`run_to_completion`), in a worker thread when the
driver blocks: one thread hop per batch, as before the port existed. The rules are thus
written once and run unchanged on both kinds of driver.

Writes are plain tuples in a documented field order (the aliases below), not objects:
they are built once per job on the hottest path and handed straight to ``executemany``.
A shared store's writes repeat the fence in their SQL (``WHERE id = $1 AND fence = $2``)
although the applier checked it against the rows it loaded (locked ``FOR UPDATE``): a
second lock. An exclusive store, the only writer of its file, needs only the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

if TYPE_CHECKING:
    from collections.abc import Collection, Coroutine, Sequence

    from syncward.jobs import JobState
    from syncward.messages import LeaseOrder

__all__ = [
    "DueRow",
    "FencedRow",
    "FinalWrite",
    "ImportRow",
    "InsertJob",
    "LostLeases",
    "OpWrite",
    "ReleaseWrite",
    "RenewWrite",
    "RequeueWrite",
    "SkipWrite",
    "StageWrite",
    "WriteTx",
    "run_to_completion",
]

T = TypeVar("T")

#: (key, identity JSON, payload JSON, max_attempts, next_attempt_at, lease_seconds,
#:  timeout, created_by token, created_at = updated_at, priority, limit key)
InsertJob: TypeAlias = tuple[bytes, str, str, int, float, "float | None", "float | None", int,
                             float, int, "str | None"]
#: (key, identity JSON, payload JSON, state, result JSON, last_error, attempts,
#:  max_attempts, next_attempt_at, created_by token, created_at = updated_at, limit key) —
#:  an imported job, created in its state (never leased); the columns not named take
#:  their defaults.
ImportRow: TypeAlias = tuple[bytes, str, str, str, "str | None", "str | None", int, int, float,
                             int, float, "str | None"]
#: (lease_expires_at, updated_at, job id, fence)
RenewWrite: TypeAlias = tuple[float, float, int, int]
#: (stage, updated_at, job id, fence)
StageWrite: TypeAlias = tuple[str, float, int, int]
#: (state, result JSON, last_error, next_attempt_at, attempts, ended_fence, ended_by,
#:  updated_at, job id) — the lease ends: owner, boot and expiry are cleared.
FinalWrite: TypeAlias = tuple[str, "str | None", "str | None", float, int, int, str, float, int]
#: (attempts, next_attempt_at, ended_fence, updated_at, job id) — back to planned,
#:  ended by "released"; result and last error are kept.
ReleaseWrite: TypeAlias = tuple[int, float, int, float, int]
#: (op key, job id, kind, result JSON, committed_at)
OpWrite: TypeAlias = tuple[bytes, int, str, str, float]
#: (next_attempt_at, updated_at, job id) — planned, attempts 0, result cleared.
RequeueWrite: TypeAlias = tuple[float, float, int]
#: (last_error, updated_at, job id) — a planned job skipped (cancelled): ``ended_by`` is
#:  set to the last error too ("cancelled": what ended it); its other columns are kept.
SkipWrite: TypeAlias = tuple[str, float, int]


@dataclass(slots=True)
class FencedRow:
    """The columns of a job that fenced messages check and change (a mutable view)."""

    id: int
    state: JobState
    fence: int
    attempts: int
    max_attempts: int
    stage: str | None
    lease_expires_at: float | None
    key: bytes
    ended_fence: int | None  # the last lease that ended, and what ended it: a redelivered
    ended_by: str | None  # outcome is recognised as already applied by these
    ended_here: bool = False  # ended by a message of this very batch


@dataclass(frozen=True, slots=True)
class DueRow:
    """A job `WriteTx.lease_due` has just leased: ``attempts`` and ``fence`` are the new
    lease's (one up), ``next_attempt_at`` when it was due (its place in the order)."""

    id: int
    key: bytes
    identity: str
    payload: str
    attempts: int
    max_attempts: int
    stage: str | None
    fence: int
    lease_seconds: float | None
    timeout: float | None
    next_attempt_at: float
    priority: int = 0

    @property
    def rank(self) -> tuple[float, int]:
        """Its place in the lease order: due time minus priority, then id."""
        return self.next_attempt_at - self.priority, self.id


@dataclass(frozen=True, slots=True)
class LostLeases:
    """What `WriteTx.lose_leases` did: how many went back, how many failed, and the
    first few ``(key, note)`` by job id."""

    requeued: int
    failed: int
    listed: list[tuple[bytes, str]]


class WriteTx(Protocol):
    """One open write transaction. Only `syncward.store.apply` calls these."""

    # --- jobs ----------------------------------------------------------------------------

    async def load(self, ids: Collection[int]) -> list[FencedRow]:
        """The rows of these job ids that exist (locked for the transaction if shared)."""
        ...

    async def creators(self, keys: Sequence[bytes]) -> dict[bytes, int | None]:
        """For the keys that have a job: the token of the submit that created it."""
        ...

    async def insert_jobs(self, rows: Sequence[InsertJob]) -> set[bytes]:
        """Insert planned jobs unless their key exists; returns the keys inserted."""
        ...

    async def insert_run_entries(self, entries: Sequence[tuple[int, int, bytes]]) -> None:
        """``(run id, line, key)``, unless present."""
        ...

    async def existing(self, keys: Sequence[bytes]) -> dict[bytes, tuple[JobState, int | None]]:
        """For the keys that have a job: its state and the token of the message that
        created it (committed rows, and this transaction's own)."""
        ...

    async def insert_imported(self, rows: Sequence[ImportRow]) -> set[bytes]:
        """Insert imported jobs in their states unless their key exists (distinct keys);
        returns the keys inserted (a shared store: not those another writer inserted
        first)."""
        ...

    async def renew(self, writes: Sequence[RenewWrite]) -> None: ...

    async def set_stages(self, writes: Sequence[StageWrite]) -> None: ...

    async def finish(self, writes: Sequence[FinalWrite]) -> None: ...

    async def release(self, writes: Sequence[ReleaseWrite]) -> None: ...

    async def lease_due(self, order: LeaseOrder, now: float) -> list[DueRow]:
        """Lease up to ``order.n`` planned jobs due at ``now`` in rank order (due time
        minus priority, ties by id), limit keys ignored, skipping rows another transaction
        holds, in one statement: leased to ``order.owner`` and ``order.boot_id``, fence
        and attempts one up, expiring at ``now`` plus the job's own lease seconds or
        ``order.default_lease_seconds``. Returns them in that order."""
        ...

    # --- limits per key (`syncward.limits`; the applier decides, these read and write) --

    async def limit_usage(self, keys: Sequence[str]
                          ) -> dict[str, tuple[int, float | None, float | None]]:
        """For these limit keys, those with leased jobs or a rate state: ``(jobs leased
        now, tat, held_until)``. A shared store first takes a transaction lock that
        serialises limited leasing (and holds) across its writers, so the counts hold for
        the whole cluster."""
        ...

    async def planned_limit_keys(self) -> list[str]:
        """The limit keys that have planned jobs (due or not)."""
        ...

    async def due_ids(self, now: float, key: str | None, n: int, *,
                      after: tuple[float, int] | None = None) -> list[tuple[float, int]]:
        """``(rank, id)`` of up to ``n`` planned jobs due at ``now`` in rank order: those
        without a limit key when ``key`` is None, otherwise that key's (those ranked after
        ``after``, when given: the next page)."""
        ...

    async def lease_ids(self, order: LeaseOrder, now: float,
                        ids: Sequence[int]) -> list[DueRow]:
        """Lease these jobs (still planned) as `lease_due` does; returns them in rank order."""
        ...

    async def save_limits(self, rows: Sequence[tuple[str, float | None, float | None]]
                          ) -> None:
        """Store ``(key, tat, held_until)`` rate states (insert or replace)."""
        ...

    async def hold_limits(self, rows: Sequence[tuple[int, float]]) -> None:
        """``(job id, until)``: hold each job's limit key (if it has one) back until at
        least then (a later hold is kept)."""
        ...

    async def requeue_candidates(self, state: JobState, keys: Sequence[bytes] | None,
                                 decided_at: float) -> list[int]:
        """Ids of jobs in ``state`` (among ``keys``, or all) not updated after ``decided_at``."""
        ...

    async def requeue(self, writes: Sequence[RequeueWrite]) -> None: ...

    async def cancel_candidates(self, states: Collection[JobState],
                                keys: Sequence[bytes] | None,
                                created_before: float) -> list[FencedRow]:
        """The rows a cancel looks at, as `load` gives them (locked if shared), by id:
        with ``keys``, those keys' jobs whatever their state; without, every job in
        ``states`` created at or before ``created_before``."""
        ...

    async def skip_planned(self, writes: Sequence[SkipWrite]) -> None:
        """Planned jobs to skipped (those still planned)."""
        ...

    async def count_by_state(self) -> dict[JobState, int]:
        """The store's totals by state as of this transaction, every state present (an
        exclusive store counts its rows; a shared one sums its running totals)."""
        ...

    async def count_checked(self) -> tuple[dict[JobState, int], dict[JobState, int]]:
        """``(count_by_state(), the jobs counted row by row)`` as of one snapshot (the
        check of the totals: a shared store must not see another writer's commit
        between the two)."""
        ...

    async def record_deltas(self, deltas: dict[JobState, int]) -> None:
        """This batch's changes by state, for a store that keeps running totals (a shared
        one: its totals then include every writer's commits); others ignore it."""
        ...

    async def record_ops(self, writes: Sequence[OpWrite]) -> dict[bytes, tuple[str, bool]]:
        """Insert ledger rows unless their op key exists (distinct keys, first one wins).

        Returns, for every key written, the committed result and whether this call
        inserted it.
        """
        ...

    async def reject(self, rows: Sequence[tuple[float, int | None, str, str]]) -> None:
        """Record refused messages: ``(at, job id, message kind, reason)``."""
        ...

    # --- liveness and reconciliation ---------------------------------------------------

    async def lose_leases(self, boot_id: str, now: float, why: str, *,
                          dry_run: bool) -> LostLeases:
        """Apply the lost-lease rule to every lease whose owner the store proves dead,
        seen from ``boot_id``: `syncward.store.apply.lost_outcome`, or in SQL its twin
        (``LOST_STATE_SQL``, ``lost_note_sql(why)``); ``ended_by`` "lost", the lease
        cleared, due at ``now``. With ``dry_run``, only count and list."""
        ...

    async def dead_workers(self, boot_id: str) -> list[str]:
        """Names of workers not marked dead or stopped whose boot the store proves dead."""
        ...

    async def interrupt_runs(self, boot_id: str, now: float, *, dry_run: bool) -> int:
        """Mark running runs of boots the store proves dead interrupted; returns how many
        (with ``dry_run``, only counts them)."""
        ...

    # --- workers, runs, events, metadata -------------------------------------------------

    async def worker_by_boot(self, boot_id: str) -> str | None: ...

    async def next_worker_number(self) -> int:
        """The next value of the store's atomic worker counter (never reused)."""
        ...

    async def insert_worker(self, name: str, boot_id: str, pid: int, host: str,
                            now: float) -> None: ...

    async def set_worker_status(self, names: Sequence[str], status: str, now: float) -> None: ...

    async def insert_event(self, at: float, kind: str, detail: str) -> None: ...

    async def start_run(self, token: str, source: str, options: str, boot_id: str,
                        now: float) -> int:
        """Insert the run unless its token exists; returns its id either way."""
        ...

    async def insert_run_rejects(self, rows: Sequence[tuple[int, int, str, str]]) -> None:
        """``(run id, line, reason, raw)``, unless present."""
        ...

    async def finish_run(self, run_id: int, status: str, now: float) -> None: ...

    async def set_meta(self, key: str, value: str, *, only_if_absent: bool) -> str:
        """Write one metadata key; returns the value stored."""
        ...


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the applier over a synchronous port).

    Raises:
        RuntimeError: the coroutine suspended: its port was not synchronous after all.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a synchronous store port suspended")
