"""The in-memory store (``memory://``): the same port and reads as SQLite, in dicts.

For tests, examples and users' own unit tests: the whole framework runs on it with no
file and no server, and the contract suite holds it to exactly the rules the durable
backends follow (it runs `syncward.store.apply` unchanged). Nothing survives the
process.

``memory://`` opens a fresh store; ``memory://name`` opens the store of that name in this
process, creating it the first time, so a second handle (a read-only one for a status
view, or the next runtime after a simulated crash) sees the same data. Like SQLite it is
an exclusive store: one writable handle at a time (`StoreLocked` otherwise), and closing
it, as a dead process would, leaves its leases for the next owner to reclaim.

Design note: a transaction is an undo log. Each first change of a row (or key) within
a transaction records how to put it back; a rollback replays the log backwards. The
port never suspends, so the applier runs to completion on the event loop thread and no
reader can observe a half-applied batch. Planned jobs wait in heaps keyed by
``(next_attempt_at, id)`` (one for jobs with a limit key, one for the others) and, once
due, move to heaps keyed by rank (due time minus priority; one per limit key), all with
lazy deletion, so leasing does not scan the table.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import heapq
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncward.errors import StoreError, StoreLocked
from syncward.jobs import TERMINAL, Job, JobState
from syncward.store.apply import MAX_LOST_LISTED, Applier, lost_outcome
from syncward.store.base import (
    EventRow,
    JobRow,
    LeaseRow,
    Liveness,
    ManifestComparison,
    OwnerInfo,
    RunInfo,
    RunReject,
    WorkerRow,
    WorkerState,
)
from syncward.store.port import DueRow, FencedRow, LostLeases, run_to_completion

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from syncward.messages import ApplyResult, LeaseOrder, SyncerMsg
    from syncward.store.base import StoreHooks
    from syncward.store.port import (
        FinalWrite,
        ImportRow,
        InsertJob,
        OpWrite,
        ReleaseWrite,
        RenewWrite,
        RequeueWrite,
        SkipWrite,
        StageWrite,
    )
    from syncward.supervisor import Actor

__all__ = ["MemoryStore"]

_MISSING = object()
_PLANNED = JobState.PLANNED
_LEASED = JobState.LEASED


@dataclass(slots=True)
class _Job:
    id: int
    key: bytes
    identity: str
    payload: str
    state: JobState
    max_attempts: int
    next_attempt_at: float
    lease_seconds: float | None
    timeout: float | None
    created_by: int | None
    created_at: float
    updated_at: float
    stage: str | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_boot: str | None = None
    lease_expires_at: float | None = None
    fence: int = 0
    ended_fence: int | None = None
    ended_by: str | None = None
    last_error: str | None = None
    result: str | None = None
    priority: int = 0
    limit_key: str | None = None


_Ranked = tuple[float, int, float]  # (rank, id, due)


@dataclass
class _Data:
    """One named store's contents, shared by its handles."""

    jobs: dict[int, _Job] = field(default_factory=dict)
    by_key: dict[bytes, int] = field(default_factory=dict)
    due: list[tuple[float, int]] = field(default_factory=list)  # heap, lazily cleaned
    due_limited: list[tuple[float, int]] = field(default_factory=list)  # with a limit key
    ready: list[_Ranked] = field(default_factory=list)  # due, by rank; no limit key
    ready_limited: dict[str, list[_Ranked]] = field(default_factory=dict)  # by limit key
    leased_limited: dict[str, set[int]] = field(default_factory=dict)  # lazily cleaned
    limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    ops: dict[bytes, tuple[int, str, str, float]] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    run_tokens: dict[str, int] = field(default_factory=dict)
    run_entries: dict[tuple[int, int], bytes] = field(default_factory=dict)
    run_rejects: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)
    rejections: list[tuple[float, int | None, str, str]] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=lambda: {"worker_seq": "0"})
    counters: dict[str, int] = field(default_factory=lambda: {"job": 0, "run": 0})
    owner: dict[str, Any] | None = None
    published: dict[str, Any] | None = None
    last_commit_at: float | None = None

    def push_due(self, job: _Job) -> None:
        heapq.heappush(self.due if job.limit_key is None else self.due_limited,
                       (job.next_attempt_at, job.id))

    def waiting(self, job_id: int, due: float) -> _Job | None:
        """The job of a heap entry, if the entry is still current (else it is stale)."""
        job = self.jobs.get(job_id)
        if job is None or job.state is not _PLANNED or job.next_attempt_at != due:
            return None
        return job

    def promote(self, now: float, undo: list[Callable[[], None]] | None = None) -> None:
        """Move the jobs due at ``now`` from the waiting heaps to the rank heaps. Only
        entries move, never rows. With ``undo``, a rollback moves them back: an entry
        that looked stale may be current again (a job this transaction changed), and one
        promoted at a ``now`` that did not commit must not be leased before it is due."""
        moved: list[tuple[list[tuple[float, int]], tuple[float, int],
                          list[_Ranked] | None, _Ranked | None]] = []
        for heap in (self.due, self.due_limited):
            while heap and heap[0][0] <= now:
                due, job_id = heapq.heappop(heap)
                job = self.waiting(job_id, due)
                if job is None:
                    moved.append((heap, (due, job_id), None, None))
                    continue
                entry = (due - job.priority, job_id, due)
                if job.limit_key is None:
                    target = self.ready
                else:
                    target = self.ready_limited.setdefault(job.limit_key, [])
                heapq.heappush(target, entry)
                moved.append((heap, (due, job_id), target, entry))
        if undo is not None and moved:
            def put_back() -> None:
                touched: list[list[_Ranked]] = []
                for source, waiting, target, entry in moved:
                    heapq.heappush(source, waiting)
                    if target is not None and entry is not None:
                        with contextlib.suppress(ValueError):
                            target.remove(entry)
                        touched.append(target)
                for target in {id(t): t for t in touched}.values():
                    heapq.heapify(target)
            undo.append(put_back)

    def peek(self, heap: list[_Ranked], n: int,
             undo: list[Callable[[], None]] | None = None) -> list[_Ranked]:
        """Up to ``n`` current entries of a rank heap, best first, left in the heap; stale
        ones on the way are dropped (put back on rollback when ``undo`` is given: a job
        this transaction leased is planned again if it rolls back)."""
        out: list[_Ranked] = []
        dropped: list[_Ranked] = []
        while heap and len(out) < n:
            entry = heapq.heappop(heap)
            if self.waiting(entry[1], entry[2]) is not None:
                out.append(entry)
            else:
                dropped.append(entry)
        for entry in out:
            heapq.heappush(heap, entry)
        if undo is not None and dropped:
            def put_back() -> None:
                for entry in dropped:
                    heapq.heappush(heap, entry)
            undo.append(put_back)
        return out

    def next_waiting(self, heap: list[tuple[float, int]]) -> float | None:
        while heap:
            due, job_id = heap[0]
            if self.waiting(job_id, due) is not None:
                return due
            heapq.heappop(heap)
        return None


_NAMED: dict[str, _Data] = {}


class _MemoryTx:
    """`WriteTx` over `_Data` with an undo log (see the module docstring)."""

    def __init__(self, data: _Data) -> None:
        self.d = data
        self._undo: list[Callable[[], None]] = []
        self._saved_jobs: set[int] = set()

    # --- the undo log ------------------------------------------------------------------

    def _touch(self, job: _Job) -> _Job:
        if job.id not in self._saved_jobs:
            self._saved_jobs.add(job.id)
            saved = copy.copy(job)
            jobs = self.d.jobs
            self._undo.append(lambda: jobs.__setitem__(saved.id, saved))
        return job

    def _set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        old = table.get(key, _MISSING)
        if old is _MISSING:
            self._undo.append(lambda: table.pop(key, None))
        else:
            self._undo.append(lambda: table.__setitem__(key, old))
        table[key] = value

    def _append(self, items: list[Any], value: Any) -> None:
        n = len(items)
        self._undo.append(lambda: items.__delitem__(slice(n, None)))
        items.append(value)

    def _push_due(self, job: _Job) -> None:
        self.d.push_due(job)  # a stale heap entry is harmless: it is checked when popped

    def rollback(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._saved_jobs.clear()

    def commit(self) -> None:
        self._undo.clear()
        self._saved_jobs.clear()

    def _job(self, job_id: int) -> _Job | None:
        job = self.d.jobs.get(job_id)
        return None if job is None else self._touch(job)

    # --- jobs ----------------------------------------------------------------------------

    async def load(self, ids: Collection[int]) -> list[FencedRow]:
        jobs = self.d.jobs
        return [_fenced(jobs[i]) for i in ids if i in jobs]

    async def creators(self, keys: Sequence[bytes]) -> dict[bytes, int | None]:
        found: dict[bytes, int | None] = {}
        for key in keys:
            job_id = self.d.by_key.get(key)
            if job_id is not None:
                found[key] = self.d.jobs[job_id].created_by
        return found

    async def insert_jobs(self, rows: Sequence[InsertJob]) -> set[bytes]:
        inserted: set[bytes] = set()
        d = self.d
        for (key, identity, payload, max_attempts, next_at, lease_s, timeout, token, now,
             priority, limit_key) in rows:
            if key in d.by_key:
                continue
            job_id = d.counters["job"] + 1
            self._set(d.counters, "job", job_id)
            job = _Job(id=job_id, key=key, identity=identity, payload=payload, state=_PLANNED,
                       max_attempts=max_attempts, next_attempt_at=next_at,
                       lease_seconds=lease_s, timeout=timeout, created_by=token,
                       created_at=now, updated_at=now, priority=priority, limit_key=limit_key)
            self._set(d.jobs, job_id, job)
            self._saved_jobs.add(job_id)  # new: the undo above removes it whole
            self._set(d.by_key, key, job_id)
            self._push_due(job)
            inserted.add(key)
        return inserted

    async def existing(self, keys: Sequence[bytes]) -> dict[bytes, tuple[JobState, int | None]]:
        found: dict[bytes, tuple[JobState, int | None]] = {}
        for key in keys:
            job_id = self.d.by_key.get(key)
            if job_id is not None:
                job = self.d.jobs[job_id]
                found[key] = (job.state, job.created_by)
        return found

    async def insert_imported(self, rows: Sequence[ImportRow]) -> set[bytes]:
        inserted: set[bytes] = set()
        d = self.d
        for (key, identity, payload, state, result, error, attempts, max_attempts, next_at,
             token, now, limit_key) in rows:
            if key in d.by_key:
                continue
            job_id = d.counters["job"] + 1
            self._set(d.counters, "job", job_id)
            job = _Job(id=job_id, key=key, identity=identity, payload=payload,
                       state=JobState(state), max_attempts=max_attempts,
                       next_attempt_at=next_at, lease_seconds=None, timeout=None,
                       created_by=token, created_at=now, updated_at=now, attempts=attempts,
                       last_error=error, result=result, limit_key=limit_key)
            self._set(d.jobs, job_id, job)
            self._saved_jobs.add(job_id)  # new: the undo above removes it whole
            self._set(d.by_key, key, job_id)
            if job.state is _PLANNED:
                self._push_due(job)
            inserted.add(key)
        return inserted

    async def insert_run_entries(self, entries: Sequence[tuple[int, int, bytes]]) -> None:
        for run_id, line, key in entries:
            if (run_id, line) not in self.d.run_entries:
                self._set(self.d.run_entries, (run_id, line), key)

    def _fenced(self, job_id: int, fence: int) -> _Job | None:
        job = self.d.jobs.get(job_id)
        if job is None or job.fence != fence:
            return None
        return self._touch(job)

    async def renew(self, writes: Sequence[RenewWrite]) -> None:
        for expires, now, job_id, fence in writes:
            job = self._fenced(job_id, fence)
            if job is not None and job.state is _LEASED:
                job.lease_expires_at, job.updated_at = expires, now

    async def set_stages(self, writes: Sequence[StageWrite]) -> None:
        for stage, now, job_id, fence in writes:
            job = self._fenced(job_id, fence)
            if job is not None:
                job.stage, job.updated_at = stage, now

    async def finish(self, writes: Sequence[FinalWrite]) -> None:
        for state, result, error, next_at, attempts, ended_fence, ended_by, now, job_id in writes:
            job = self._job(job_id)
            if job is None:
                continue
            job.state = JobState(state)
            job.result, job.last_error, job.next_attempt_at = result, error, next_at
            job.attempts, job.ended_fence, job.ended_by = attempts, ended_fence, ended_by
            job.lease_owner = job.lease_boot = None
            job.lease_expires_at = None
            job.updated_at = now
            if job.state is _PLANNED:
                self._push_due(job)

    async def release(self, writes: Sequence[ReleaseWrite]) -> None:
        for attempts, next_at, ended_fence, now, job_id in writes:
            job = self._job(job_id)
            if job is None:
                continue
            job.state, job.attempts, job.next_attempt_at = _PLANNED, attempts, next_at
            job.ended_fence, job.ended_by = ended_fence, "released"
            job.lease_owner = job.lease_boot = None
            job.lease_expires_at = None
            job.updated_at = now
            self._push_due(job)

    async def lease_due(self, order: LeaseOrder, now: float) -> list[DueRow]:
        d = self.d
        d.promote(now, self._undo)
        best = d.peek(d.ready, order.n, self._undo)
        for heap in d.ready_limited.values():  # none unless limit keys were ever stored
            best.extend(d.peek(heap, order.n, self._undo))
        best.sort()
        return await self.lease_ids(order, now, [entry[1] for entry in best[:order.n]])

    async def lease_ids(self, order: LeaseOrder, now: float,
                        ids: Sequence[int]) -> list[DueRow]:
        d = self.d
        out: list[DueRow] = []
        for job_id in ids:
            job = d.jobs.get(job_id)
            if job is None or job.state is not _PLANNED:
                continue
            job = self._touch(job)
            seconds = (job.lease_seconds if job.lease_seconds is not None
                       else order.default_lease_seconds)
            job.state, job.lease_owner, job.lease_boot = _LEASED, order.owner, order.boot_id
            job.lease_expires_at, job.updated_at = now + seconds, now
            job.fence += 1
            job.attempts += 1
            if job.limit_key is not None:
                held = d.leased_limited.setdefault(job.limit_key, set())
                if job.id not in held:
                    held.add(job.id)
                    self._undo.append(functools.partial(held.discard, job.id))
            out.append(DueRow(job.id, job.key, job.identity, job.payload, job.attempts,
                              job.max_attempts, job.stage, job.fence, job.lease_seconds,
                              job.timeout, job.next_attempt_at, job.priority))
        out.sort(key=lambda row: row.rank)
        return out  # the rank-heap entries of these jobs are stale now (state leased)

    async def limit_usage(self, keys: Sequence[str]
                          ) -> dict[str, tuple[int, float | None, float | None]]:
        d = self.d
        usage: dict[str, tuple[int, float | None, float | None]] = {}
        for key in keys:
            tat, held = d.limits.get(key, (None, None))
            ids = d.leased_limited.get(key)
            if ids:
                gone = {i for i in ids if d.jobs[i].state is not _LEASED}
                if gone:  # their leases ended since: forget them (back on rollback)
                    ids -= gone
                    self._undo.append(functools.partial(ids.update, gone))
            usage[key] = (len(ids) if ids else 0, tat, held)
        return usage

    async def planned_limit_keys(self) -> list[str]:
        d = self.d
        keys = {key for key, heap in d.ready_limited.items() if d.peek(heap, 1, self._undo)}
        for due, job_id in d.due_limited:
            job = d.waiting(job_id, due)
            if job is not None and job.limit_key is not None:
                keys.add(job.limit_key)
        return sorted(keys)

    async def due_ids(self, now: float, key: str | None, n: int, *,
                      after: tuple[float, int] | None = None) -> list[tuple[float, int]]:
        d = self.d
        d.promote(now, self._undo)
        heap = d.ready if key is None else d.ready_limited.get(key, [])
        if after is None:
            return [(rank, job_id) for rank, job_id, _ in d.peek(heap, n, self._undo)]
        # The next page: the heap is not a sorted list, so read past the earlier pages.
        best = d.peek(heap, len(heap), self._undo)
        return [(rank, job_id) for rank, job_id, _ in best if (rank, job_id) > after][:n]

    async def save_limits(self, rows: Sequence[tuple[str, float | None, float | None]]
                          ) -> None:
        for key, tat, held in rows:
            self._set(self.d.limits, key, (tat, held))

    async def hold_limits(self, rows: Sequence[tuple[int, float]]) -> None:
        for job_id, until in rows:
            job = self.d.jobs.get(job_id)
            key = None if job is None else job.limit_key
            if key is None:
                continue
            tat, held = self.d.limits.get(key, (None, None))
            self._set(self.d.limits, key, (tat, until if held is None else max(held, until)))

    async def requeue_candidates(self, state: JobState, keys: Sequence[bytes] | None,
                                 decided_at: float) -> list[int]:
        if keys is None:
            jobs = list(self.d.jobs.values())
        else:
            jobs = [self.d.jobs[i] for i in (self.d.by_key.get(k) for k in keys)
                    if i is not None]
        return sorted(j.id for j in jobs if j.state is state and j.updated_at <= decided_at)

    async def requeue(self, writes: Sequence[RequeueWrite]) -> None:
        for next_at, now, job_id in writes:
            job = self._job(job_id)
            if job is None:
                continue
            job.state, job.attempts, job.next_attempt_at = _PLANNED, 0, next_at
            job.result, job.updated_at = None, now
            self._push_due(job)

    async def cancel_candidates(self, states: Collection[JobState],
                                keys: Sequence[bytes] | None,
                                created_before: float) -> list[FencedRow]:
        if keys is None:
            ids = [j.id for j in self.d.jobs.values()
                   if j.state in states and j.created_at <= created_before]
        else:
            ids = [i for i in (self.d.by_key.get(k) for k in keys) if i is not None]
        return sorted(await self.load(ids), key=lambda row: row.id)

    async def skip_planned(self, writes: Sequence[SkipWrite]) -> None:
        for error, now, job_id in writes:
            job = self._job(job_id)
            if job is not None and job.state is _PLANNED:
                job.state = JobState.SKIPPED  # its heap entry is left to lazy deletion
                job.last_error, job.ended_by, job.updated_at = error, error, now

    async def count_by_state(self) -> dict[JobState, int]:
        return _count(self.d)

    async def count_checked(self) -> tuple[dict[JobState, int], dict[JobState, int]]:
        counts = _count(self.d)
        return counts, dict(counts)

    async def record_deltas(self, deltas: dict[JobState, int]) -> None:
        return None  # counts are taken from the rows: nothing to keep

    async def record_ops(self, writes: Sequence[OpWrite]) -> dict[bytes, tuple[str, bool]]:
        found: dict[bytes, tuple[str, bool]] = {}
        for key, job_id, kind, result, at in writes:
            existing = self.d.ops.get(key)
            if existing is not None:
                found[key] = (existing[2], False)
            else:
                self._set(self.d.ops, key, (job_id, kind, result, at))
                found[key] = (result, True)
        return found

    async def reject(self, rows: Sequence[tuple[float, int | None, str, str]]) -> None:
        for row in rows:
            self._append(self.d.rejections, row)

    # --- liveness: one owner, so every other boot is dead ------------------------------

    async def lose_leases(self, boot_id: str, now: float, why: str, *,
                          dry_run: bool) -> LostLeases:
        requeued = failed = 0
        listed: list[tuple[bytes, str]] = []
        for j in sorted(self.d.jobs.values(), key=lambda j: j.id):
            if j.state is not _LEASED or j.lease_boot == boot_id:
                continue
            target, note = lost_outcome(j.attempts, j.max_attempts, j.stage, why)
            if len(listed) < MAX_LOST_LISTED:
                listed.append((j.key, note))
            failed += target is JobState.FAILED
            requeued += target is _PLANNED
            if dry_run:
                continue
            job = self._touch(j)
            job.state, job.last_error, job.next_attempt_at = target, note, now
            job.ended_fence, job.ended_by = job.fence, "lost"
            job.lease_owner = job.lease_boot = None
            job.lease_expires_at = None
            job.updated_at = now
            if target is _PLANNED:
                self._push_due(job)
        return LostLeases(requeued=requeued, failed=failed, listed=listed)

    async def dead_workers(self, boot_id: str) -> list[str]:
        return [name for name, w in self.d.workers.items()
                if w["boot_id"] != boot_id and w["status"] not in ("dead", "stopped")]

    async def interrupt_runs(self, boot_id: str, now: float, *, dry_run: bool) -> int:
        hit = [run_id for run_id, r in self.d.runs.items()
               if r["status"] == "running" and r["boot_id"] != boot_id]
        if not dry_run:
            for run_id in hit:
                self._set(self.d.runs, run_id,
                          {**self.d.runs[run_id], "status": "interrupted", "finished_at": now})
        return len(hit)

    # --- workers, runs, events, metadata -------------------------------------------------

    async def worker_by_boot(self, boot_id: str) -> str | None:
        for name, w in self.d.workers.items():
            if w["boot_id"] == boot_id:
                return name
        return None

    async def next_worker_number(self) -> int:
        n = int(self.d.meta["worker_seq"]) + 1
        self._set(self.d.meta, "worker_seq", str(n))
        return n

    async def insert_worker(self, name: str, boot_id: str, pid: int, host: str,
                            now: float) -> None:
        self._set(self.d.workers, name, {"boot_id": boot_id, "pid": pid, "host": host,
                                         "status": WorkerState.RUNNING.value,
                                         "started_at": now, "heartbeat_at": now})

    async def set_worker_status(self, names: Sequence[str], status: str, now: float) -> None:
        for name in names:
            w = self.d.workers.get(name)
            if w is not None:
                self._set(self.d.workers, name, {**w, "status": status, "heartbeat_at": now})

    async def insert_event(self, at: float, kind: str, detail: str) -> None:
        self._append(self.d.events, EventRow(at=at, kind=kind, detail=json.loads(detail)))

    async def start_run(self, token: str, source: str, options: str, boot_id: str,
                        now: float) -> int:
        existing = self.d.run_tokens.get(token)
        if existing is not None:
            return existing
        run_id = self.d.counters["run"] + 1
        self._set(self.d.counters, "run", run_id)
        self._set(self.d.run_tokens, token, run_id)
        self._set(self.d.runs, run_id, {"source": source, "options": json.loads(options),
                                        "status": "running", "started_at": now,
                                        "finished_at": None, "boot_id": boot_id})
        return run_id

    async def insert_run_rejects(self, rows: Sequence[tuple[int, int, str, str]]) -> None:
        for run_id, line, reason, raw in rows:
            if (run_id, line) not in self.d.run_rejects:
                self._set(self.d.run_rejects, (run_id, line), (reason, raw))

    async def finish_run(self, run_id: int, status: str, now: float) -> None:
        run = self.d.runs.get(run_id)
        if run is not None:
            self._set(self.d.runs, run_id, {**run, "status": status, "finished_at": now})

    async def set_meta(self, key: str, value: str, *, only_if_absent: bool) -> str:
        if not (only_if_absent and key in self.d.meta):
            self._set(self.d.meta, key, value)
        return self.d.meta[key]


def _fenced(j: _Job) -> FencedRow:
    return FencedRow(j.id, j.state, j.fence, j.attempts, j.max_attempts, j.stage,
                     j.lease_expires_at, j.key, j.ended_fence, j.ended_by)


def _count(d: _Data) -> dict[JobState, int]:
    counts = dict.fromkeys(JobState, 0)
    for job in d.jobs.values():
        counts[job.state] += 1
    return counts


def _job_row(j: _Job) -> JobRow:
    return JobRow(
        id=j.id, key=j.key.hex(), identity=json.loads(j.identity), payload=json.loads(j.payload),
        state=j.state, stage=j.stage, attempts=j.attempts, max_attempts=j.max_attempts,
        next_attempt_at=j.next_attempt_at, lease_owner=j.lease_owner,
        lease_expires_at=j.lease_expires_at, fence=j.fence, last_error=j.last_error,
        result=json.loads(j.result) if j.result is not None else None,
        created_at=j.created_at, updated_at=j.updated_at)


class MemoryStore:
    """`Store` in this process's memory. See the module docstring.

    ``MemoryStore()`` is a fresh store; `MemoryStore.open` takes a ``memory://`` URL.
    """

    liveness = Liveness.EXCLUSIVE

    def __init__(self, *, url: str = "memory://", readonly: bool = False,
                 _data: _Data | None = None) -> None:
        self.url = url
        self.readonly = readonly
        self._d = _data if _data is not None else _Data()
        self._applier = Applier()
        self._closed = False
        self._owns = False
        if not readonly:
            if self._d.owner is not None:
                raise StoreLocked(url, dict(self._d.owner))
            self._d.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "boot_id": None}
            self._owns = True

    @classmethod
    async def open(cls, url: str = "memory://", *, readonly: bool = False) -> MemoryStore:
        """``memory://`` (fresh) or ``memory://name`` (shared by name in this process).

        Raises:
            StoreLocked: a writable handle on this named store is open.
            StoreError: a read-only open of a name that has no store.
        """
        name = url[len("memory://"):] if url.startswith("memory://") else url
        if not name:
            return cls(url=url, readonly=readonly)
        data = _NAMED.get(name)
        if data is None:
            if readonly:
                raise StoreError(f"store {url} does not exist")
            data = _NAMED[name] = _Data()
        return cls(url=url, readonly=readonly, _data=data)

    @staticmethod
    def forget(name: str) -> None:
        """Drop the named store ``memory://name`` from this process (tests' clean-up)."""
        _NAMED.pop(name, None)

    async def attach(self, boot_id: str) -> None:
        self._writable()
        assert self._d.owner is not None
        self._d.owner = {**self._d.owner, "boot_id": boot_id}

    def housekeeping(self, hooks: StoreHooks) -> Sequence[tuple[str, Callable[[], Actor]]]:
        return ()

    def _writable(self) -> None:
        if self.readonly or self._closed:
            raise StoreError(f"store {self.url} is {'closed' if self._closed else 'read-only'}")

    async def apply(self, batch: Sequence[SyncerMsg], *, now: float,
                    lease: LeaseOrder | None = None, recount: bool = False,
                    dry_run: bool = False) -> ApplyResult:
        """See `syncward.store.base.Store.apply`.

        Raises:
            StoreError: the handle is read-only or closed.
        """
        self._writable()
        tx = _MemoryTx(self._d)
        try:
            result = run_to_completion(
                self._applier.apply(tx, batch, now=now, lease=lease, recount=recount))
        except BaseException:
            tx.rollback()
            raise
        if dry_run:
            tx.rollback()
        else:
            tx.commit()
            self._d.last_commit_at = time.time()
        return result

    async def publish_status(self, status: dict[str, Any] | None) -> None:
        self._d.published = None if status is None else dict(status)

    # --- reads -------------------------------------------------------------------------

    async def counts(self) -> dict[JobState, int]:
        return _count(self._d)

    async def get_job(self, key: str) -> JobRow | None:
        job_id = self._d.by_key.get(bytes.fromhex(key))
        return None if job_id is None else _job_row(self._d.jobs[job_id])

    async def jobs_in_state(self, state: JobState, *, limit: int | None = None,
                            after: int | None = None) -> list[JobRow]:
        start = after if after is not None else -1
        ids = sorted(j.id for j in self._d.jobs.values() if j.state is state and j.id > start)
        if limit is not None:
            ids = ids[:limit]
        return [_job_row(self._d.jobs[i]) for i in ids]

    async def get_op(self, op_key: str) -> str | None:
        op = self._d.ops.get(bytes.fromhex(op_key))
        return None if op is None else op[2]

    async def ops_count(self) -> tuple[int, int]:
        return len(self._d.ops), len(self._d.ops)

    def _leased(self) -> list[_Job]:
        return sorted((j for j in self._d.jobs.values() if j.state is _LEASED),
                      key=lambda j: (j.lease_expires_at or 0.0, j.id))

    async def expired_leases(self, now: float, *, limit: int) -> list[tuple[int, int]]:
        return [(j.id, j.fence) for j in self._leased()
                if j.lease_expires_at is not None and j.lease_expires_at <= now][:limit]

    async def active_leases(self, *, limit: int = 100) -> list[LeaseRow]:
        return [LeaseRow(job_id=j.id, key=j.key.hex(), fence=j.fence, owner=j.lease_owner,
                         boot_id=j.lease_boot, expires_at=j.lease_expires_at, stage=j.stage)
                for j in self._leased()[:limit]]

    async def leased_jobs(self, boot_id: str, *, default_lease_seconds: float) -> list[Job]:
        return [Job(id=j.id, key=j.key.hex(), identity=json.loads(j.identity),
                    payload=json.loads(j.payload), attempt=j.attempts,
                    max_attempts=j.max_attempts, stage=j.stage, fence=j.fence,
                    lease_seconds=(j.lease_seconds if j.lease_seconds is not None
                                   else default_lease_seconds),
                    lease_expires_at=j.lease_expires_at or 0.0, timeout=j.timeout)
                for j in sorted(self._d.jobs.values(), key=lambda j: j.id)
                if j.state is _LEASED and j.lease_boot == boot_id]

    async def next_due(self, *, limited: bool = True) -> float | None:
        d = self._d
        found = [d.next_waiting(d.due)]
        found.extend(entry[2] for entry in d.peek(d.ready, 1))
        if limited:
            found.append(d.next_waiting(d.due_limited))
            for heap in d.ready_limited.values():
                found.extend(entry[2] for entry in d.peek(heap, 1))
        return min((at for at in found if at is not None), default=None)

    async def retrying_count(self, *, limit: int = 10_000) -> int:
        n = sum(1 for j in self._d.jobs.values() if j.state is _PLANNED and j.attempts > 0)
        return min(n, limit)

    async def workers(self) -> list[WorkerRow]:
        return [WorkerRow(name=name, boot_id=w["boot_id"], pid=w["pid"], host=w["host"],
                          status=w["status"], started_at=w["started_at"],
                          heartbeat_at=w["heartbeat_at"])
                for name, w in sorted(self._d.workers.items(),
                                      key=lambda item: item[1]["started_at"])]

    async def get_meta(self, key: str) -> str | None:
        return self._d.meta.get(key)

    async def events(self, *, kind: str | None = None, limit: int = 50) -> list[EventRow]:
        found = [e for e in reversed(self._d.events) if kind is None or e.kind == kind]
        return found[:limit]

    async def rejection_count(self) -> int:
        return len(self._d.rejections)

    async def latest_run(self) -> int | None:
        return max(self._d.runs, default=None)

    async def run_info(self, run_id: int) -> RunInfo | None:
        r = self._d.runs.get(run_id)
        if r is None:
            return None
        return RunInfo(id=run_id, source=r["source"], options=dict(r["options"]),
                       status=r["status"], started_at=r["started_at"],
                       finished_at=r["finished_at"])

    async def run_rejects(self, run_id: int) -> list[RunReject]:
        return [RunReject(line=line, reason=reason, raw=raw)
                for (rid, line), (reason, raw) in sorted(self._d.run_rejects.items())
                if rid == run_id]

    def _run_keys(self, run_id: int) -> list[tuple[int, bytes]]:
        return sorted((line, key) for (rid, line), key in self._d.run_entries.items()
                      if rid == run_id)

    async def run_states(self, run_id: int) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for key in {key for _, key in self._run_keys(run_id)}:
            job_id = self._d.by_key.get(key)
            if job_id is not None:
                counts[self._d.jobs[job_id].state] += 1
        return counts

    async def compare_run(self, run_id: int) -> ManifestComparison:
        entries = self._run_keys(run_id)
        distinct = {key for _, key in entries}
        missing: list[dict[str, str | int]] = [
            {"line": line} for line, key in entries if key not in self._d.by_key]
        not_terminal = sum(1 for key in distinct if key in self._d.by_key
                           and self._d.jobs[self._d.by_key[key]].state not in TERMINAL)
        return ManifestComparison(entries=len(entries), distinct=len(distinct),
                                  missing=missing, not_terminal=not_terminal)

    async def key_states(self, keys: Sequence[str]) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for key in keys:
            job_id = self._d.by_key.get(bytes.fromhex(key))
            if job_id is not None:
                states[key] = self._d.jobs[job_id].state
        return states

    async def owners(self) -> list[OwnerInfo]:
        owner = self._d.owner
        if owner is None:
            return []
        return [OwnerInfo(boot_id=owner.get("boot_id"), pid=owner.get("pid"),
                          host=owner.get("host"), since=owner.get("since"), alive=True)]

    async def published_status(self, boot_id: str) -> dict[str, Any] | None:
        status = self._d.published
        return status if status is not None and status.get("boot_id") == boot_id else None

    async def last_write_at(self) -> float | None:
        return self._d.last_commit_at

    async def aclose(self) -> None:
        """Close this handle; a writable one gives up ownership (its leases stay). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns:
            self._d.owner = None
            self._d.published = None
            self._owns = False
