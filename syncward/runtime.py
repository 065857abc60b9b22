"""The embeddable runtime: an async context manager that runs the actor tree.

```python
async with syncward.Runtime(handler, store="sqlite:///jobs.db", concurrency=32) as rt:
    result = await rt.submit(specs)   # returns after commit: how many new, how many duplicates
    await rt.join()                   # until nothing is planned or leased
    snapshot = rt.stats()
```

It runs inside the caller's event loop (it never creates or replaces one). ``store`` is
a URL (``sqlite:///jobs.db``, ``memory://``, ...; see `syncward.store.open_store`) or a
`Store` object the caller opened and will close. Entering: open the store (an exclusive
one takes its owner lock), reconcile (leases whose owners the store proves gone go back
at once, their workers are marked dead, adapters clean their leftovers), register this
boot's worker from the store's atomic counter, then start the tree::

    root (rest-for-one): syncer, stats-keeper, lease-reaper, the store's housekeeping
                         (SQLite: checkpointer; PostgreSQL: liveness keeper),
                         status-publisher, reconciler, pool, sources..., scheduler
    pool (one-for-one):  downloader-1..N, lease-renewer

Leaving drains: leasing stops, downloaders finish the job in hand within ``grace``
seconds, the leases still held are released, the syncer commits everything in its
mailbox, the store is closed. If the root supervisor gives up, leaving raises its
`SupervisorGaveUp`, whose ``__cause__`` chain holds the crash that started it.

Operating it while it runs (what the web app and ``syncward status`` use): `health`,
`reconcile`, `retry_failed`, `cancel`, `refresh_stats`, `pause`/`resume`, `in_hand` (jobs in the
downloaders' hands, with ``ctx.progress``) and `reconciliations` (start-up, then every
``reconcile_every`` seconds on an exclusive store, and whenever a shared store's keeper
sees another boot die). `add_observer` attaches instrumentation (metrics); without one
the hot path pays nothing for it.

``schedules`` (`syncward.Schedule`: cron expressions) make the scheduler actor submit
each tick as a job keyed by the schedule's name and the tick's time, so a tick runs once
across processes and restarts (see `syncward.schedules`, `syncward.actors.scheduler`);
`schedule_board` shows what each is doing. A runtime with schedules never runs out of
work for good: `join` still returns when the work there is now is done (a tick not yet
due is not work), so a program that serves its schedules waits for its own stop signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from syncward.actors.attempts import Attempts
from syncward.actors.downloader import Downloader, Handler
from syncward.actors.lease_reaper import LeaseReaper
from syncward.actors.lease_renewer import LeaseRenewer
from syncward.actors.mailbox import Mailbox
from syncward.actors.pool import DownloaderPool
from syncward.actors.publisher import StatusPublisher
from syncward.actors.reconciler import (
    ReconcileCycle,
    ReconcileHistory,
    ReconcileOrigin,
    Reconciler,
    Tracked,
)
from syncward.actors.scheduler import ScheduleBoard, Scheduler
from syncward.actors.stats_keeper import Stats, StatsKeeper, StatsSnapshot
from syncward.actors.syncer import LeaseControl, StatsUpdate, Syncer, SyncerConfig, SyncerHealth
from syncward.adapters.base import ReconcileHook
from syncward.clock import Clock, SystemClock
from syncward.errors import (
    ConfigError,
    InvalidJob,
    MailboxClosed,
    MailboxFull,
    StoreFailing,
    SupervisorGaveUp,
)
from syncward.health import (
    Health,
    HealthPolicy,
    RecountFacts,
    SyncerFacts,
    WorkerFacts,
    assess,
    notable_workers,
)
from syncward.jobs import Job, JobSpec, JobState, keyed_identity
from syncward.limits import Limit, limit_key_of, rules_of
from syncward.messages import (
    Accepted,
    Cancel,
    CancelResult,
    FinishRun,
    NewJob,
    Reconcile,
    ReconcileReport,
    RecordEvent,
    Recount,
    RegisterWorker,
    Rejected,
    Reply,
    Requeue,
    RunRejects,
    SetMeta,
    StartRun,
    Submit,
    SubmitResult,
    SyncerMsg,
    Wake,
    WorkerStatus,
)
from syncward.operations import InHand, RetryResult, RuntimeObserver, StatsRefresh, fan_out
from syncward.report import Report, build_report
from syncward.retry import RetryPolicy
from syncward.schedules import Schedule
from syncward.store import Liveness, Store, WorkerRow, open_store
from syncward.supervisor import (
    Actor,
    ChildSpec,
    Restart,
    RestartIntensity,
    RestartStrategy,
    Supervisor,
    SupervisorEvent,
)

if TYPE_CHECKING:
    from types import TracebackType

    from syncward.adapters.base import Source
    from syncward.imports import ImportRecord
    from syncward.messages import ImportResult
    from syncward.testing.faults import Faults

__all__ = ["ReconcileHook", "Runtime", "RuntimeStatus"]

log = logging.getLogger("syncward.runtime")

_SUBMIT_CHUNK = 1000
_SUBMIT_WINDOW = 8
_KEY = re.compile(r"[0-9a-f]{64}")
_STORE_PROBE_TIMEOUT = 5.0
_PUBLISHED_IN_HAND = 100


@dataclass
class RuntimeStatus:
    """What `Runtime.status` returns: the in-process truth about the runtime."""

    worker: str
    boot_id: str
    stats: StatsSnapshot
    syncer: dict[str, object]
    restarts: list[dict[str, object]] = field(default_factory=list)
    reconcile: dict[str, Any] | None = None
    mailboxes: dict[str, dict[str, object]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedules: dict[str, dict[str, object]] = field(default_factory=dict)


def _to_new_job(spec: JobSpec | dict[str, Any], max_attempts: int, line: int | None,
                limits: tuple[Limit, ...] = ()) -> NewJob:
    import json

    if isinstance(spec, dict):
        spec = JobSpec(identity=spec)
    _check_limits(spec)
    key, canonical = keyed_identity(spec.identity)
    return NewJob(
        key=key, identity=canonical,
        payload=json.dumps(dict(spec.payload)),
        max_attempts=spec.max_attempts if spec.max_attempts is not None else max_attempts,
        lease_seconds=spec.lease_seconds, timeout=spec.timeout, line=line,
        priority=spec.priority, limit_key=limit_key_of(limits, spec) if limits else None,
    )


_MAX_ATTEMPTS_LIMIT = 1_000_000
_PRIORITY_LIMIT = 1_000_000_000  # seconds of waiting: about 31 years
_SECONDS_LIMIT = 366 * 24 * 3600.0


def _check_limits(spec: JobSpec) -> None:
    """Per-job overrides within sane bounds (a value SQLite cannot store is refused here).

    Raises:
        InvalidJob: naming the field.
    """
    if spec.max_attempts is not None and (
            isinstance(spec.max_attempts, bool) or not isinstance(spec.max_attempts, int)
            or not 1 <= spec.max_attempts <= _MAX_ATTEMPTS_LIMIT):
        raise InvalidJob(f"must be an int from 1 to {_MAX_ATTEMPTS_LIMIT}, "
                         f"got {spec.max_attempts!r}", field="max_attempts")
    p = spec.priority
    if type(p) is not int or not -_PRIORITY_LIMIT <= p <= _PRIORITY_LIMIT:  # not bool
        raise InvalidJob(f"must be an int from -{_PRIORITY_LIMIT} to {_PRIORITY_LIMIT}, "
                         f"got {p!r}", field="priority")
    if spec.lease_seconds is None and spec.timeout is None:
        return
    for name in ("lease_seconds", "timeout"):
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0 < value <= _SECONDS_LIMIT):
            raise InvalidJob(f"must be a number of seconds in (0, {_SECONDS_LIMIT:g}], "
                             f"got {value!r}", field=name)


class Runtime:
    """The embedding API. See the module docstring.

    Keyword arguments set the defaults of every job (``max_attempts``, ``lease_seconds``,
    ``job_timeout``) and of the runtime (``concurrency`` downloaders, ``prefetch`` leased
    jobs waiting for a free downloader, ``grace`` seconds to finish jobs when leaving).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        store: str | Store = "sqlite:///syncward.db",
        concurrency: int = 32,
        prefetch: int | None = None,
        max_attempts: int = 5,
        lease_seconds: float = 60.0,
        job_timeout: float | None = 600.0,
        grace: float = 10.0,
        retry: RetryPolicy | None = None,
        syncer: SyncerConfig | None = None,
        synchronous: str = "full",
        recount_every: float = 30.0,
        reap_every: float = 5.0,
        intensity: RestartIntensity | None = None,
        mailbox_size: int = 10_000,
        reconcile_hooks: Sequence[tuple[str, ReconcileHook]] = (),
        sources: Sequence[Source] = (),
        clock: Clock | None = None,
        faults: Faults | None = None,
        reconcile_every: float | None = 10.0,
        health_policy: HealthPolicy | None = None,
        schedules: Sequence[Schedule] = (),
        limits: Sequence[Limit] = (),
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        if lease_seconds <= 0:
            raise ConfigError(f"lease_seconds must be > 0, got {lease_seconds}")
        if reconcile_every is not None and reconcile_every <= 0:
            raise ConfigError(f"reconcile_every must be > 0 (or None), got {reconcile_every}")
        self.handler = handler
        self.store_url = store if isinstance(store, str) else store.url
        self._given_store = None if isinstance(store, str) else store
        self.concurrency = concurrency
        # Leased jobs waiting for a free downloader hide the commit that leases the next
        # ones: measured at concurrency 100 with 10 ms jobs, 4x prefetch ran ~50% more
        # jobs/s than 1x. Their leases are renewed like those in a downloader's hands.
        self.prefetch = prefetch if prefetch is not None else min(4 * concurrency, 1024)
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.job_timeout = job_timeout
        self.grace = grace
        self.retry = retry or RetryPolicy()
        self.syncer_config = syncer or SyncerConfig()
        self.synchronous = synchronous
        self.recount_every = recount_every
        self.reap_every = reap_every
        self.intensity = intensity or RestartIntensity(max_restarts=3, within=5.0)
        self.mailbox_size = mailbox_size
        self.reconcile_hooks = tuple(reconcile_hooks)
        self.sources = tuple(sources)
        self.limits = tuple(limits)
        if not all(isinstance(limit, Limit) for limit in self.limits):
            raise ConfigError("limits must be syncward.Limit objects")
        if len({limit.name for limit in self.limits}) != len(self.limits):
            raise ConfigError(f"limits need distinct names: {_twice(self.limits)} is given twice")
        if len({src.name for src in self.sources}) != len(self.sources):
            raise ConfigError(f"sources need distinct names: {_twice(self.sources)} is given twice")
        self.schedules = tuple(schedules)
        if not all(isinstance(s, Schedule) for s in self.schedules):
            raise ConfigError("schedules must be syncward.Schedule objects")
        if len({s.name for s in self.schedules}) != len(self.schedules):
            raise ConfigError(
                f"schedules need distinct names: {_twice(self.schedules)} is given twice")
        #: What each schedule is doing (see `syncward.actors.scheduler`).
        self.schedule_board = ScheduleBoard([s.name for s in self.schedules])
        self.clock: Clock = clock or SystemClock()
        self.faults = faults
        self.boot_id = uuid.uuid4().hex
        self.worker = ""
        self.reconcile_report: ReconcileReport | None = None
        self.restarts: list[dict[str, object]] = []
        self.reconcile_every = reconcile_every
        self.health_policy = health_policy or HealthPolicy()
        self.reconciliations = ReconcileHistory()
        self._observers: list[RuntimeObserver] = []
        self._syncer: Syncer | None = None
        self._publishing = anyio.Lock()
        self._stats = Stats()
        self._health = SyncerHealth()
        self._stack: contextlib.AsyncExitStack | None = None
        self._store: Store | None = None
        self._killed = False
        self._fatal: StoreFailing | None = None
        self._closing = False
        self._tg: anyio.abc.TaskGroup | None = None

    # --- entering and leaving --------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the runtime is not running (use `async with Runtime(...)`)")
        return self._store

    async def __aenter__(self) -> Runtime:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            if self._given_store is not None:
                self._store = self._given_store
            else:
                self._store = await open_store(self.store_url, synchronous=self.synchronous)
                stack.push_async_callback(self._store.aclose)
            await self._store.attach(self.boot_id)
            stack.push_async_callback(self._store.publish_status, None)
            await self._reconcile()
            self._build()
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            await self._tg.start(self._run_root)
            await self._stats.wait_loaded()
            with contextlib.suppress(OSError):  # the publisher's first was before the load
                await self._publish(self._published())
        except BaseException as exc:
            try:
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                _raise_gave_up(group)
                raise
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        try:
            if not self._killed:
                with anyio.CancelScope(shield=True):
                    await self._shutdown()
            suppressed = await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            _raise_gave_up(group)
            raise
        finally:
            self._store = None
        if self._fatal is not None:
            raise self._fatal  # the store's environment failed: it says what and what to do
        return suppressed

    async def _reconcile(self) -> None:
        store = self.store
        now = self.clock.now()
        started = time.perf_counter()
        result = await store.apply([Reconcile(self.boot_id)], now=now)
        report = result.results[0]
        assert isinstance(report, ReconcileReport)
        adapters = {}
        for name, hook in self.reconcile_hooks:
            adapters[name] = await hook(store, dry_run=False)
        if adapters:
            report = ReconcileReport(**{**_fields(report), "adapters": adapters})
        self.reconcile_report = report
        self.reconciliations.record(ReconcileCycle(ReconcileOrigin.STARTUP, now,
                                                   time.perf_counter() - started, report))
        if report.leases_requeued or report.leases_failed or report.workers_marked_dead:
            log.warning("start-up reconciliation: %s", report.summary())
            for line in report.lost:
                log.info("  %s", line)  # details with --verbose, and in `status`
        else:
            log.info("start-up reconciliation: nothing to do")
        reg = RegisterWorker(self.boot_id, os.getpid(), socket.gethostname(), reply=Reply())
        registered = (await store.apply([reg], now=now)).results[0]
        assert isinstance(registered, str)
        self.worker = registered

    def _build(self) -> None:
        self._control = LeaseControl(owner=self.worker, boot_id=self.boot_id,
                                     default_lease_seconds=self.lease_seconds,
                                     limits=rules_of(self.limits) if self.limits else None)
        self._syncer_mb: Mailbox[SyncerMsg] = Mailbox("syncer", self.mailbox_size)
        self._work_mb: Mailbox[Job] = Mailbox("work", self.concurrency + self.prefetch)
        self._attempts = Attempts(self._work_mb)
        self._stats_mb: Mailbox[StatsUpdate] = Mailbox("stats", self.mailbox_size)
        self._reconcile_mb: Mailbox[Tracked] = Mailbox("reconciler", 64)
        self._pool: DownloaderPool | None = None
        self._downloaders: dict[str, Downloader] = {}
        self._root = Supervisor(
            name="root", strategy=RestartStrategy.REST_FOR_ONE, intensity=self.intensity,
            clock=self.clock, on_event=self._on_event,
            children=[
                ChildSpec(id="syncer", factory=self._new_syncer,
                          before_restart=lambda: self._syncer_mb.redeliver("syncer"),
                          shutdown_timeout=60.0),
                ChildSpec(id="stats-keeper", factory=self._new_stats_keeper,
                          before_restart=lambda: self._stats_mb.redeliver("stats-keeper")),
                ChildSpec(id="lease-reaper", factory=self._new_reaper),
                *(ChildSpec(id=name, factory=factory)
                  for name, factory in self.store.housekeeping(_StoreHooks(self))),
                ChildSpec(id="status-publisher", factory=lambda: StatusPublisher(
                    publish=self._publish, snapshot=self._published)),
                ChildSpec(id="reconciler", factory=self._new_reconciler,
                          before_restart=lambda: self._reconcile_mb.redeliver("reconciler")),
                ChildSpec(id="pool", factory=self._new_pool, restart=Restart.TRANSIENT,
                          shutdown_timeout=self.grace + 5.0),
                *(ChildSpec(id=f"source-{src.name}", factory=self._source_factory(src))
                  for src in self.sources),
                *([ChildSpec(id="scheduler", factory=self._new_scheduler)]
                  if self.schedules else []),
            ],
        )

    async def _run_root(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self._root.run(task_status=task_status)

    # --- actor factories (each call is a new incarnation) ----------------------------

    def _source_factory(self, source: Source) -> Callable[[], Actor]:
        port = _SourcePort(self)
        return lambda: source.actor(port)

    def _new_syncer(self) -> Syncer:
        self._syncer = Syncer(
            store=self.store, mailbox=self._syncer_mb, work=self._work_mb,
            stats=self._stats_mb, health=self._health, control=self._control,
            clock=self.clock, config=self.syncer_config, faults=self.faults,
            observer=fan_out(self._observers), on_fatal=self._store_failing,
            on_ended=self._cancelled)
        return self._syncer

    def _cancelled(self, leases: Sequence[tuple[int, int]]) -> None:
        """A committed `Cancel` ended these leases: stop this process's work under them."""
        self._attempts.end(leases, "cancelled")

    def _new_scheduler(self) -> Scheduler:
        return Scheduler(schedules=self.schedules, board=self.schedule_board,
                         clock=self.clock, syncer=self._syncer_mb, submit=self.submit,
                         get_meta=self.store.get_meta, faults=self.faults)

    def _store_failing(self, failing: StoreFailing) -> None:
        """The store's environment failed (a full disk, ...): stop at once, as `kill` does
        — nothing can be drained into a store that cannot be written — and let leaving
        the ``async with`` block raise ``failing``. Leases held now are recovered by the
        next runtime on the store."""
        if self._fatal is None:
            self._fatal = failing
            self.kill()

    def _new_reconciler(self) -> Reconciler:
        # An exclusive store has one owner: nothing but this runtime reconciles it after
        # start-up. A shared one is reconciled by its own keeper when a boot dies.
        every = self.reconcile_every if self.store.liveness is Liveness.EXCLUSIVE else None
        return Reconciler(syncer=self._syncer_mb, mailbox=self._reconcile_mb,
                          history=self.reconciliations, clock=self.clock,
                          boot_id=self.boot_id, worker=lambda: self.worker, every=every,
                          closing=lambda: self._closing)

    def _new_stats_keeper(self) -> StatsKeeper:
        return StatsKeeper(stats=self._stats, mailbox=self._stats_mb, syncer=self._syncer_mb,
                           clock=self.clock, recount_every=self.recount_every,
                           shared=self.store.liveness is Liveness.SHARED, faults=self.faults)

    def _new_reaper(self) -> LeaseReaper:
        return LeaseReaper(store=self.store, syncer=self._syncer_mb, clock=self.clock,
                           every=self.reap_every, faults=self.faults)

    def _new_pool(self) -> DownloaderPool:
        # The renewer starts first so that it stops last: jobs finishing in the grace
        # period keep their leases alive.
        children = [ChildSpec(id="lease-renewer", factory=self._new_renewer)]
        children.extend(
            ChildSpec(id=f"downloader-{i}", factory=self._downloader_factory(f"downloader-{i}"),
                      restart=Restart.TRANSIENT, shutdown_timeout=self.grace,
                      before_restart=self._redeliver(f"downloader-{i}"))
            for i in range(1, self.concurrency + 1))
        inner = Supervisor(name="pool", children=children, strategy=RestartStrategy.ONE_FOR_ONE,
                           intensity=self.intensity, clock=self.clock, on_event=self._on_event)
        self._pool = DownloaderPool(supervisor=inner, work=self._work_mb,
                                    syncer=self._syncer_mb, closing=lambda: self._closing,
                                    attempts=self._attempts)
        return self._pool

    def _redeliver(self, name: str) -> Any:
        return lambda: self._work_mb.redeliver(name)

    def _downloader_factory(self, name: str) -> Any:
        def factory() -> Downloader:
            downloader = Downloader(name=name, handler=self.handler, work=self._work_mb,
                                    syncer=self._syncer_mb, store=self.store, clock=self.clock,
                                    retry=self.retry, default_timeout=self.job_timeout,
                                    faults=self.faults, attempts=self._attempts)
            self._downloaders[name] = downloader
            return downloader
        return factory

    def _new_renewer(self) -> LeaseRenewer:
        return LeaseRenewer(work=self._work_mb, syncer=self._syncer_mb, clock=self.clock,
                            default_lease_seconds=self.lease_seconds, control=self._control,
                            attempts=self._attempts)

    def _on_event(self, event: SupervisorEvent) -> None:
        if event.kind not in ("restarted", "gave_up"):
            return
        entry: dict[str, object] = {
            "supervisor": event.supervisor, "actor": event.child_id, "kind": event.kind,
            "error": event.error, "count": event.restarts, "at": event.at}
        self.restarts.append(entry)
        with contextlib.suppress(Exception):
            self._syncer_mb.send_nowait(RecordEvent(kind="restart", detail=entry, at=event.at))

    def kill(self) -> None:
        """Stop at once, as a crash would: nothing is drained, no lease is given back.

        Leaving the ``async with`` block then only closes the store (releasing its lock);
        the next runtime on the store recovers this one's leases at start-up.
        """
        self._killed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _shutdown(self) -> None:
        self._closing = True
        self._control.pause()
        pool = self._pool
        if pool is not None and not pool.stopped.is_set():
            for downloader in self._downloaders.values():  # all at once: one grace period
                downloader.request_stop()
            pool.request_stop()
            with anyio.move_on_after(self.grace + 10.0):
                await pool.stopped.wait()
        with contextlib.suppress(Exception):
            self._syncer_mb.send_nowait(WorkerStatus(self.worker, "stopped"))
        self._root.request_stop()

    # --- the embedding API -----------------------------------------------------------

    async def submit(self, specs: Iterable[JobSpec | dict[str, Any]]
                     | AsyncIterable[JobSpec | dict[str, Any]]) -> SubmitResult:
        """Create jobs for ``specs``; returns after they are committed.

        ``specs`` may be any (async) iterable and is consumed as a stream, a thousand at a
        time, with a few chunks in flight. A plain dict is taken as an identity.
        Raises:
            InvalidJob: a spec's identity is not valid (nothing after it is submitted).
            MailboxClosed: the runtime is stopping.
        """
        if isinstance(specs, list | tuple) and len(specs) <= _SUBMIT_CHUNK:
            # One message and one wait: the shape of an embedding app's submit per
            # request, which the streaming path below (an async generator, chunking, a
            # window of replies) made cost twice a job's own commit.
            jobs = tuple(_to_new_job(spec, self.max_attempts, None, self.limits)
                         for spec in specs)
            reply: Reply[SubmitResult] = Reply()
            await self._syncer_mb.send(Submit(jobs, reply=reply,
                                              on_commit=self._submit_timer()))
            return await reply.wait()
        return await self._submit(_aiter((None, s) for s in specs)
                                  if not isinstance(specs, AsyncIterable)
                                  else _numbered(specs, None), run_id=None)

    async def submit_entries(self, entries: Iterable[tuple[int, JobSpec]]
                             | AsyncIterable[tuple[int, JobSpec]], *, run_id: int
                             ) -> SubmitResult:
        """Submit manifest entries ``(line, spec)`` as part of run ``run_id``.

        Each entry is recorded with the run in the same transaction as its job, so the
        report can compare every input line with its outcome.
        """
        return await self._submit(_aiter(entries), run_id=run_id)

    async def _submit(self, entries: AsyncIterable[tuple[int | None, JobSpec | dict[str, Any]]],
                      *, run_id: int | None) -> SubmitResult:
        new = dup = 0
        replies: list[Reply[SubmitResult]] = []

        async def flush(chunk: list[NewJob]) -> None:
            nonlocal new, dup
            reply: Reply[SubmitResult] = Reply()
            await self._syncer_mb.send(Submit(tuple(chunk), run_id=run_id, reply=reply,
                                              on_commit=self._submit_timer()))
            replies.append(reply)
            while len(replies) >= _SUBMIT_WINDOW or (replies and replies[0].done):
                res = await replies.pop(0).wait()
                new, dup = new + res.new, dup + res.duplicates

        chunk: list[NewJob] = []
        async for line, spec in entries:
            chunk.append(_to_new_job(spec, self.max_attempts, line, self.limits))
            if len(chunk) >= _SUBMIT_CHUNK:
                await flush(chunk)
                chunk = []
        if chunk:
            await flush(chunk)
        for reply in replies:
            res = await reply.wait()
            new, dup = new + res.new, dup + res.duplicates
        return SubmitResult(new=new, duplicates=dup)

    async def import_jobs(self, records: Iterable[ImportRecord | dict[str, Any]]
                          | AsyncIterable[ImportRecord | dict[str, Any]], *,
                          dry_run: bool = False) -> ImportResult:
        """Create jobs in the states ``records`` give (bring in an existing pipeline's
        state); returns after every chunk is committed.

        A record is an `ImportRecord` or its dict form ``{"identity": {...}, "state":
        "succeeded", "result": ..., "error": ..., "attempts": n}`` (see
        `syncward.imports`); keys are a submit's, so a manifest run later finds them. A
        key that exists is never changed: it counts as unchanged or as a conflict. A
        record that cannot become a job is counted and listed as rejected (its "line" is
        its position, from 1), never raised. With ``dry_run`` nothing is written.
        Raises:
            MailboxClosed: the runtime is stopping.
        """
        from syncward.adapters.importer import import_limit_key, record_chunks, run_import

        return await run_import(record_chunks(records, _SUBMIT_CHUNK), self._syncer_mb.send,
                                max_attempts=self.max_attempts, dry_run=dry_run,
                                limit_key=import_limit_key(self.limits))

    async def start_run(self, source: str, options: dict[str, Any]) -> int:
        """Record a run (a manifest being submitted); returns its id."""
        reply: Reply[int] = Reply()
        await self._syncer_mb.send(StartRun(uuid.uuid4().hex, source, options, reply,
                                            boot_id=self.boot_id))
        return await reply.wait()

    async def reject_lines(self, run_id: int, items: Sequence[tuple[int, str, str]]) -> None:
        """Record manifest lines that could not become jobs: ``(line, reason, raw)``."""
        if items:
            reply: Reply[Accepted | Rejected] = Reply()
            await self._syncer_mb.send(RunRejects(run_id, tuple(items), reply=reply))
            await reply.wait()

    async def finish_run(self, run_id: int, status: str) -> None:
        """Record how run ``run_id`` ended; returns after commit."""
        reply: Reply[Accepted | Rejected] = Reply()
        await self._syncer_mb.send(FinishRun(run_id, status, reply=reply))
        await reply.wait()

    async def send(self, msg: SyncerMsg) -> None:
        """Send a raw message to the syncer (sources and the CLI use this)."""
        await self._syncer_mb.send(msg)

    async def join(self) -> None:
        """Wait until nothing is planned or leased (retries waiting for back-off count).

        Counts come from the stats-keeper, which sees every commit's deltas in order; the
        syncer sends them before it answers anyone, so work submitted before `join` is
        counted by the time the stats mailbox is empty. Schedules' future ticks are not
        waited for: with ``schedules``, `join` returns between ticks.
        """
        if self.store.liveness is Liveness.SHARED:
            return await self._join_shared()
        while True:
            changed = self._stats.changed
            busy = len(self._stats_mb) or self._stats_mb.in_flight()
            if not busy and self._stats.loaded and self.stats().active == 0:
                return
            await changed.wait()

    async def _join_shared(self) -> None:
        """`join` on a store several runtimes write: only the store's totals can say that
        nothing is active anywhere. This runtime's own view (the totals last adopted plus
        its own deltas since) decides when to ask; a fresh look decides when to return."""
        stats = self._stats
        asked: int | None = None  # the refresh generation a fresh look was asked after
        first = True
        while True:
            changed = stats.changed
            if stats.loaded:
                if asked is not None and stats.refreshes > asked:
                    if stats.refreshed_active == 0:
                        return
                    asked = None
                if asked is None and (first or self.stats().active == 0):
                    first = False
                    asked = stats.refreshes
                    await self._syncer_mb.send(Recount(refresh=True))
            await changed.wait()

    async def wait(self, predicate: Callable[[StatsSnapshot], bool]) -> StatsSnapshot:
        """Wait until ``predicate(stats)`` holds for the committed counts; returns them."""
        while True:
            changed = self._stats.changed
            snap = self.stats()
            if self._stats.loaded and predicate(snap):
                return snap
            await changed.wait()

    def stats(self) -> StatsSnapshot:
        """Counts by state as of the last commit applied by the stats-keeper."""
        return self._stats.snapshot()

    def status(self) -> RuntimeStatus:
        return RuntimeStatus(
            worker=self.worker, boot_id=self.boot_id, stats=self.stats(),
            syncer=self._health.as_dict(), restarts=list(self.restarts),
            reconcile=self.reconcile_report.as_dict() if self.reconcile_report else None,
            mailboxes={mb.name: _mb_dict(mb) for mb in
                       (self._syncer_mb, self._work_mb, self._stats_mb)},
            sources={src.name: src.status() for src in self.sources},
            schedules={name: state.as_dict()
                       for name, state in self.schedule_board.snapshot().items()},
        )

    async def _publish(self, status: dict[str, Any] | None) -> None:
        """`Store.publish_status`, one at a time (a store may write a file per call)."""
        async with self._publishing:
            await self.store.publish_status(status)

    def _published(self) -> dict[str, Any]:
        st = self.status()
        now = self.clock.now()
        reasons = self._assess(now)
        return {"at": now, "pid": os.getpid(), "worker": st.worker,
                "boot_id": st.boot_id, "syncer": st.syncer, "restarts": st.restarts[-20:],
                "restarts_total": len(st.restarts), "mailboxes": st.mailboxes,
                "sources": st.sources, "schedules": st.schedules,
                "stats": st.stats.as_dict(),
                "health": {"ok": not reasons, "reasons": list(reasons)},
                "paused": self.paused, "stats_loaded_at": self._stats_loaded_at(),
                "in_hand": [j.as_dict() for j in self.in_hand()[:_PUBLISHED_IN_HAND]],
                "reconciliation": self.reconciliations.as_dict(limit=10)}

    def pause(self) -> None:
        """Stop leasing: jobs in hand run on, no new ones start (submits still commit)."""
        self._control.enabled = False

    def resume(self) -> None:
        """Lease again after `pause`."""
        self._control.enabled = True

    @property
    def paused(self) -> bool:
        """Whether leasing is off (`pause`, or the runtime is stopping)."""
        control: LeaseControl | None = getattr(self, "_control", None)
        return control is not None and not control.enabled

    # --- operating a running runtime -------------------------------------------------

    def add_observer(self, observer: RuntimeObserver) -> Callable[[], None]:
        """Tell ``observer`` of every committed batch and submit from now on (metrics).

        Returns the function that detaches it again. Observers are called on the syncer's
        task: they must be cheap and must not raise.
        """
        self._observers.append(observer)
        self._rewire_observers()

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._observers.remove(observer)
            self._rewire_observers()
        return remove

    def _rewire_observers(self) -> None:
        if self._syncer is not None:  # the running incarnation; the next one is built so
            self._syncer.observer = fan_out(self._observers)

    def _submit_timer(self) -> Callable[[SubmitResult], None] | None:
        observer = fan_out(self._observers)
        if observer is None:
            return None
        sent = time.perf_counter()
        return lambda _result: observer.submit_committed(time.perf_counter() - sent)

    def in_hand(self) -> list[InHand]:
        """The jobs the downloaders run now, with the progress their handlers reported."""
        held = []
        for name, downloader in list(self._downloaders.items()):
            ctx = downloader.current
            if ctx is None:
                continue
            job = ctx.job
            held.append(InHand(downloader=name, key=job.key, identity=job.identity,
                               attempt=job.attempt, max_attempts=job.max_attempts,
                               stage=job.stage, progress_done=ctx.progress_done,
                               progress_total=ctx.progress_total))
        return held

    async def reconcile(self, *, dry_run: bool = False) -> ReconcileReport:
        """Reconcile the store now, through the syncer; returns after its commit.

        Leases the store proves lost go back, dead workers are marked so, their runs are
        interrupted (see `syncward.store.apply`). A real one is kept in `reconciliations`;
        a dry run only reports. Adapters' start-up hooks are not run: their leftovers may
        belong to jobs in hand.
        Raises:
            MailboxClosed: the runtime is stopping.
        """
        at, started = self.clock.now(), time.perf_counter()
        reply: Reply[ReconcileReport] = Reply()
        await self._syncer_mb.send(Reconcile(self.boot_id, dry_run=dry_run, reply=reply))
        report = await reply.wait()
        if not dry_run:
            self.reconciliations.record(ReconcileCycle(
                ReconcileOrigin.MANUAL, at, time.perf_counter() - started, report))
        return report

    async def retry_failed(self, keys: Sequence[str] | None = None) -> RetryResult:
        """Send failed jobs back to planned with their attempts reset: these keys, or all.

        Raises:
            InvalidJob: a key is not a job key (64 hex digits).
            MailboxClosed: the runtime is stopping.
        """
        wanted: tuple[str, ...] | None = None
        skipped: tuple[str, ...] = ()
        if keys is not None:
            wanted = tuple(dict.fromkeys(_job_key_arg(k) for k in keys))
            if not wanted:
                return RetryResult(requeued=0)
            before = await self.store.key_states(list(wanted))
            skipped = tuple(k for k in wanted if before.get(k) is not JobState.FAILED)
        reply: Reply[int] = Reply()
        await self._syncer_mb.send(Requeue(state=JobState.FAILED, keys=wanted,
                                           decided_at=self.clock.now(), reply=reply))
        return RetryResult(requeued=await reply.wait(), not_requeued=skipped)

    async def cancel(self, keys: Sequence[str] | None = None, *,
                     state: JobState | str | None = None) -> CancelResult:
        """Cancel jobs: these keys, or every job in ``state`` (planned or leased); returns
        after the commit.

        A planned job becomes skipped. A leased one becomes skipped and its lease ends:
        a handler of this runtime running it is cancelled (it sees cancellation at its
        next await) before this returns, and a job waiting for a downloader never starts;
        on a shared store, a runtime of another process stops its handler when its next
        renewal is refused (see `syncward.actors.attempts`). Effects committed before stay
        committed; jobs already finished are left alone (``finished``).
        Raises:
            InvalidJob: a key is not a job key (64 hex digits).
            ConfigError: neither keys nor a state, or a state other than planned/leased.
            MailboxClosed: the runtime is stopping.
        """
        wanted = None if keys is None else tuple(dict.fromkeys(_job_key_arg(k) for k in keys))
        wanted_state = _cancel_state(state)
        if wanted is None and wanted_state is None:
            raise ConfigError("cancel: give job keys, or a state (planned or leased)")
        if wanted == ():
            return CancelResult()
        reply: Reply[CancelResult] = Reply()
        await self._syncer_mb.send(Cancel(keys=wanted, state=wanted_state, reply=reply,
                                          decided_at=self.clock.now()))
        return await reply.wait()

    async def refresh_stats(self) -> StatsRefresh:
        """Recount now: the rows are counted inside a commit and compared with the kept
        counts (any difference is drift, corrected and logged); returns once applied.

        Raises:
            MailboxClosed: the runtime is stopping.
        """
        before = self.stats()
        barrier: Reply[str] = Reply()
        await self._syncer_mb.send(Recount())
        await self._syncer_mb.send(SetMeta("stats_refreshed_at", repr(self.clock.now()),
                                           reply=barrier))
        await barrier.wait()  # the recount's update is in the stats mailbox, or applied
        while True:
            changed = self._stats.changed
            if self._stats.loaded and not (len(self._stats_mb) or self._stats_mb.in_flight()):
                return StatsRefresh(before=before, after=self.stats())
            await changed.wait()

    async def health(self) -> Health:
        """Whether the runtime is healthy, and why not (see `syncward.health`).

        Reads the store once (its workers), which is also the proof that it answers.
        """
        store_error: str | None = None
        rows: list[WorkerRow] = []
        if self._store is not None:
            try:
                with anyio.fail_after(_STORE_PROBE_TIMEOUT):
                    rows = await self._store.workers()
            except TimeoutError:
                store_error = f"no answer within {_STORE_PROBE_TIMEOUT:g}s"
            except Exception as exc:
                store_error = f"{type(exc).__name__}: {exc}"
        now = self.clock.now()
        snap = self.stats()
        return Health(
            at=now, reasons=self._assess(now, store_error), counts=snap.counts,
            stats_loaded_at=self._stats_loaded_at(),
            recount=RecountFacts(last_at=self._health.last_check_at,
                                 checks=snap.drift_checks, last_drift=snap.last_drift,
                                 drift_total=snap.drift_total),
            syncer=self._syncer_facts(), paused=self.paused,
            workers=tuple(WorkerFacts(w, w.boot_id == self.boot_id)
                          for w in notable_workers(rows)))

    def _assess(self, now: float, store_error: str | None = None) -> tuple[str, ...]:
        reasons = assess(now=now, running=self._store is not None, store_error=store_error,
                         stats_loaded=self._stats.loaded, syncer=self._syncer_facts(),
                         restarts=self.restarts, policy=self.health_policy)
        return ("the runtime is stopping", *reasons) if self._closing else reasons

    def _syncer_facts(self) -> SyncerFacts:
        h = self._health
        mailbox: Mailbox[SyncerMsg] | None = getattr(self, "_syncer_mb", None)
        return SyncerFacts(commits=h.commits, last_commit_at=h.last_commit_at, error=h.error,
                           error_since=h.error_since, retries=h.retries,
                           queued=len(mailbox) if mailbox is not None else 0,
                           rejected=h.rejected, failures_total=h.failures_total)

    def _stats_loaded_at(self) -> float | None:
        return self._health.last_reset_at if self._stats.loaded else None

    def room(self) -> int:
        """How many more messages the syncer's mailbox takes now without waiting."""
        return max(0, self._syncer_mb.capacity - len(self._syncer_mb))

    async def report(self, *, run_id: int | None = None) -> Report:
        """The health report (see `syncward.report`), with this runtime's live drift."""
        report = await build_report(self.store, run_id=run_id)
        return replace(report, stats_drift=max(report.stats_drift, self._stats.drift_total))


class _StoreHooks:
    """The `StoreHooks` a runtime hands its store's own actors."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    @property
    def boot_id(self) -> str:
        return self._rt.boot_id

    @property
    def worker(self) -> str:
        return self._rt.worker

    @property
    def clock(self) -> Clock:
        return self._rt.clock

    @property
    def closing(self) -> bool:
        return self._rt._closing

    async def send(self, msg: SyncerMsg) -> None:
        rt = self._rt
        if isinstance(msg, Reconcile) and msg.reply is None and not msg.dry_run:
            # Another boot died (the store's keeper saw it): record what this fixes.
            reply: Reply[ReconcileReport] = Reply()
            tracked = Tracked(reply, ReconcileOrigin.LIVENESS, rt.clock.now(),
                              time.perf_counter())
            await rt.send(replace(msg, reply=reply))
            with contextlib.suppress(MailboxFull, MailboxClosed):
                rt._reconcile_mb.send_nowait(tracked)
            return
        await rt.send(msg)

    def wake(self) -> None:
        with contextlib.suppress(MailboxFull, MailboxClosed):
            self._rt._syncer_mb.send_nowait(Wake())  # a full mailbox: the syncer is busy


class _SourcePort:
    """The `SourcePort` a runtime hands its sources: send, room, clock, metadata."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    @property
    def max_attempts(self) -> int:
        return self._rt.max_attempts

    @property
    def clock(self) -> Clock:
        return self._rt.clock

    def limit_key(self, identity: dict[str, Any], payload: dict[str, Any]) -> str | None:
        limits = self._rt.limits
        if not limits:
            return None
        return limit_key_of(limits, JobSpec(identity=identity, payload=payload))

    async def send(self, msg: SyncerMsg) -> None:
        await self._rt.send(msg)

    def room(self) -> int:
        return self._rt.room()

    async def get_meta(self, key: str) -> str | None:
        return await self._rt.store.get_meta(key)


def _twice(items: Sequence[Any]) -> str:
    """The first name among ``items`` (things with a ``name``) that comes twice, quoted."""
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            return repr(item.name)
        seen.add(item.name)
    return "a name"


def _job_key_arg(key: object) -> str:
    """A job key as given by a person: 64 hex digits, any case.

    Raises:
        InvalidJob: anything else.
    """
    text = key.lower() if isinstance(key, str) else ""
    if not _KEY.fullmatch(text):
        raise InvalidJob(f"not a job key (64 hex digits): {str(key)[:80]!r}", field="keys")
    return text


def _cancel_state(state: JobState | str | None) -> JobState | None:
    """``state`` of `Runtime.cancel`: planned, leased or None.

    Raises:
        ConfigError: any other value.
    """
    if state is None:
        return None
    try:
        value = JobState(state)
    except ValueError:
        value = None
    if value not in (JobState.PLANNED, JobState.LEASED):
        raise ConfigError(f"cancel: state must be planned or leased, got {state!r}")
    return value


def _mb_dict(mb: Mailbox[Any]) -> dict[str, object]:
    st = mb.statistics()
    return {"queued": st.queued, "in_flight": st.in_flight, "capacity": st.capacity}


def _fields(report: ReconcileReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}


def _raise_gave_up(group: BaseExceptionGroup[Any]) -> None:
    """Escalation out of the root is one `SupervisorGaveUp`, not a task group's wrapper."""
    gave_up = group.subgroup(SupervisorGaveUp)
    if gave_up is not None:
        exc: BaseException = gave_up
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        raise exc from exc.__cause__


async def _numbered(items: AsyncIterable[Any], line: None) -> Any:
    async for item in items:
        yield line, item


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> Any:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for i, item in enumerate(items):
            if i % _SUBMIT_CHUNK == 0:
                await anyio.lowlevel.checkpoint()
            yield item
