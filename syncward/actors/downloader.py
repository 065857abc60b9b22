"""The downloader: runs the user's handler for one leased job at a time.

Owns: nothing that outlives it. Jobs come from the work mailbox (owned by the runtime);
a job taken stays in flight under this downloader's name until its outcome is on the
way to the syncer, so a downloader that crashes mid-job has the job delivered again to
the next free downloader, with the same lease, resuming at the last committed stage.
Receives: `Job` from the work mailbox.
Sends: `Stage`, `Effect` (through the handler's `Context`) and one `Outcome` per job to
the syncer, each stamped with the lease's fencing token. Lease renewal is not done here
but by the pool's `LeaseRenewer`, from its own task, whatever the handler is doing.

Outcomes: a JSON-serialisable return value is success; `Retry` or any other exception
is retryable (back-off with jitter; failed once attempts are exhausted, decided at
commit); `Permanent` fails at once; `Skip` skips; a `StageError` (a stage the handler's
declared order refuses, see `syncward.stage_order`) fails at once, as a programming
error. A per-job timeout (the job's own, or the runtime's default) turns a hung handler
into a retryable failure.

Ended leases: a lease can end under an attempt without the handler's doing (a `Cancel`
committed, or the store rejected its renewal: see `syncward.actors.attempts`). The
attempt's cancel scope is then cancelled — the handler sees cancellation at its next
await — and no outcome is sent (it could only be rejected as stale); a job whose lease
ended while it waited in the work mailbox is never started.

Design note: the per-job timeout uses `asyncio.timeout` rather than an anyio cancel
scope: the runtime runs on asyncio (or uvloop) only, and on the hot path of a no-op job
the anyio scope cost a tenth of the job's CPU. That `asyncio.Timeout` (with no deadline
when the job has none) is also the attempt's cancel scope for an ended lease. The
downloader's own stop is still an anyio scope, one per incarnation.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import anyio.to_thread

from syncward.errors import LeaseLost, MailboxClosed, Permanent, Retry, Skip, StageError
from syncward.jobs import Job, op_key
from syncward.messages import (
    Accepted,
    Effect,
    EffectResult,
    Outcome,
    OutcomeKind,
    Rejected,
    Reply,
    Stage,
    SyncerMsg,
)
from syncward.stage_order import declared_stages

if TYPE_CHECKING:
    from syncward.actors.attempts import Attempt, Attempts
    from syncward.actors.mailbox import Mailbox
    from syncward.clock import Clock
    from syncward.retry import RetryPolicy
    from syncward.stage_order import StageOrder
    from syncward.store.base import StoreReader
    from syncward.testing.faults import Faults

__all__ = ["Context", "Downloader", "Handler"]

_TRACEBACK_FRAMES = 4
_ERROR_MAX = 2000


class Context:
    """What a handler may do besides returning: stages, effects, progress.

    Created by the downloader for one attempt of one job; do not construct it yourself
    outside tests (``syncward.testing`` has helpers).
    """

    def __init__(self, job: Job, *, syncer: Mailbox[SyncerMsg], store: StoreReader,
                 stages: StageOrder | None = None) -> None:
        self.job = job
        self._syncer = syncer
        self._store = store
        self._stages = stages
        self._stage = job.stage
        self.progress_done: float = 0
        self.progress_total: float | None = None

    @property
    def current_stage(self) -> str | None:
        """The job's stage now: the one it was leased with, or the last this attempt committed."""
        return self._stage

    async def stage(self, name: str) -> None:
        """Commit a milestone; returns after commit. A retried job sees it as ``job.stage``.

        If the handler declared its stages (`syncward.stages`), ``name`` must be declared
        and not before the current stage; the current stage again does nothing.
        Raises:
            StageError: refused by the declared order; nothing was sent or committed.
            LeaseLost: this attempt's lease is gone; stop working on the job.
        """
        if self._stages is not None and not self._stages.check(name, self._stage,
                                                                 job=self.job.key):
            return
        reply: Reply[Accepted | Rejected] = Reply()
        await self._syncer.send(Stage(self.job.id, self.job.fence, name, reply))
        result = await reply.wait()
        if isinstance(result, Rejected):
            raise LeaseLost(self.job.key, result.reason)
        self._stage = name

    async def effect(self, kind: str, fn: Callable[[], Any], /, **context: str | int) -> Any:
        """Run a side effect at most once per op key and return its committed JSON result.

        If the operation ledger already holds ``op_key(kind, job.key, **context)`` (an
        earlier attempt committed it), its recorded result is returned and ``fn`` is not
        called. Otherwise ``fn`` runs (awaited if it is a coroutine function, in a worker
        thread if it is a plain function), its result is committed to the ledger, and the
        committed result is returned. Between ``fn`` finishing and the commit a crash can
        make ``fn`` run again: effects are at least once, committed results exactly once.
        Raises:
            LeaseLost: the lease is gone; the result was not recorded.
            TypeError: ``fn``'s result is not JSON-serialisable.
        """
        return await self._effect(kind, fn, None, context)

    async def effect_and_stage(self, kind: str, fn: Callable[[], Any], stage: str | None, /,
                               **context: str | int) -> Any:
        """`effect`, and ``stage`` committed in the same commit as its result: one wait
        where `effect` then `stage` take two (None: no stage, as `effect`).

        The stage is checked against the declared order before ``fn`` runs. A recorded
        result whose stage was not reached commits the stage without running ``fn``. If
        the job passed ``stage`` while ``fn`` ran (another task of the handler committed
        a later stage), the result is committed alone: stages never go back.
        Raises:
            LeaseLost: the lease is gone; neither was recorded.
            StageError: ``stage`` is refused by the declared order; nothing ran.
            TypeError: ``fn``'s result is not JSON-serialisable.
        """
        return await self._effect(kind, fn, stage, context)

    async def _effect(self, kind: str, fn: Callable[[], Any], stage: str | None,
                      context: dict[str, str | int]) -> Any:
        key = op_key(kind, self.job.key, **context)
        stage = self._next_stage(stage)
        recorded = await self._store.get_op(key)
        if recorded is not None and stage is None:
            return json.loads(recorded)
        if recorded is not None:
            value = json.loads(recorded)  # committed again below, with the stage
        elif inspect.iscoroutinefunction(fn):
            value = await fn()
        else:
            value = await anyio.to_thread.run_sync(fn)
        return json.loads(await self._record(key, kind, json.dumps(value), stage))

    async def claim(self, namespace: str, value: str, *, stage: str | None = None) -> str:
        """Claim ``value`` in ``namespace`` for this job, first writer wins, across all jobs.

        Returns the key of the job that holds the claim: this job's key if it is the first
        (or already held it), another job's key otherwise — e.g. content-hash dedupe,
        where the second identical artifact learns which job has the first. ``stage``
        also commits that stage, in the same commit as the claim, whoever holds it.
        Raises:
            LeaseLost: the lease is gone; nothing was claimed.
            StageError: ``stage`` is refused by the declared order; nothing was claimed.
        """
        key = op_key(f"claim:{namespace}", value)
        stage = self._next_stage(stage)
        if stage is None:
            recorded = await self._store.get_op(key)
            if recorded is not None:
                return str(json.loads(recorded))
        text = await self._record(key, f"claim:{namespace}", json.dumps(self.job.key), stage)
        return str(json.loads(text))

    def _next_stage(self, stage: str | None) -> str | None:
        """``stage`` if it is to be committed (not the current one), checked; else None."""
        if stage is None or stage == self._stage:
            return None
        if self._stages is not None:
            self._stages.check(stage, self._stage, job=self.job.key)
        return stage

    def _still_ahead(self, stage: str | None) -> str | None:
        """``stage`` unless the job reached it or a later one since it was checked."""
        if stage is None or stage == self._stage:
            return None
        order = self._stages
        if order is not None and order.position(stage) <= order.position(self._stage):
            return None
        return stage

    async def _record(self, key: str, kind: str, text: str, stage: str | None) -> str:
        """Commit a ledger entry (and ``stage``); the entry's committed JSON text."""
        stage = self._still_ahead(stage)
        reply: Reply[EffectResult | Rejected] = Reply()
        await self._syncer.send(Effect(self.job.id, self.job.fence, key, kind, text, reply,
                                       stage=stage))
        result = await reply.wait()
        if isinstance(result, Rejected):
            raise LeaseLost(self.job.key, result.reason)
        if stage is not None:
            self._stage = stage
        return result.result

    def progress(self, done: float, total: float | None = None) -> None:
        """Report progress inside the job (shown by status; not stored)."""
        self.progress_done = done
        self.progress_total = total


Handler: TypeAlias = Callable[[Job, Context], Awaitable[Any]]


def _describe(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__,
                                            limit=-_TRACEBACK_FRAMES))
    text = f"{type(exc).__name__}: {exc}\n{tb}"
    return text if len(text) <= _ERROR_MAX else text[:_ERROR_MAX] + "…"


class Downloader:
    """One incarnation of one downloader actor. See the module docstring."""

    def __init__(self, *, name: str, handler: Handler, work: Mailbox[Job],
                 syncer: Mailbox[SyncerMsg], store: StoreReader, clock: Clock, retry: RetryPolicy,
                 default_timeout: float | None, faults: Faults | None = None,
                 attempts: Attempts | None = None) -> None:
        self.name = name
        self.handler = handler
        self.stages = declared_stages(handler)
        self.attempts = attempts
        self.slot = attempts.slot(name) if attempts is not None else None
        self.work = work
        self.syncer = syncer
        self.store = store
        self.clock = clock
        self.retry = retry
        self.default_timeout = default_timeout
        self.faults = faults
        self.current: Context | None = None
        self._stopping = False
        self._busy = False
        self._scope: anyio.CancelScope | None = None

    def request_stop(self) -> None:
        """Finish the job in hand, if any, then return; an idle downloader returns at once."""
        self._stopping = True
        if not self._busy and self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        # One scope for the whole loop, cancelled by request_stop only while idle (waiting
        # for a job): a scope per job would cost more than a no-op job itself.
        with anyio.CancelScope() as self._scope, contextlib.suppress(MailboxClosed):
            while not self._stopping:
                job = await self.work.receive(self.name)
                self._busy = True
                # The attempt's bookkeeping inline, not in a coroutine of its own: one frame
                # fewer per job on the hot path (a no-op job costs tens of microseconds).
                attempt = self.slot
                if attempt is not None and not attempt.begin(job):
                    outcome = None  # its lease ended while it waited: never started
                else:
                    try:
                        outcome = await self._run_handler(job, attempt)
                    finally:
                        if attempt is not None:
                            attempt.finish()
                    if attempt is not None and attempt.ended is not None:
                        outcome = None  # cancelled, or its lease lost: it would be stale
                if self.faults is not None:
                    self.faults.check("downloader.before_outcome")
                # The job stays in flight until its outcome is in the syncer's mailbox (a send
                # with room does not yield, so the syncer never sees the gap between the two).
                if outcome is not None:  # None: its lease ended under it (nothing to say)
                    await self.syncer.send(outcome)
                self.work.ack(self.name)
                if attempt is not None:  # a mark its lease's end left is done with too
                    attempt.acknowledged()
                self._busy = False

    async def _run_handler(self, job: Job, attempt: Attempt | None) -> Outcome:
        ctx = Context(job, syncer=self.syncer, store=self.store, stages=self.stages)
        self.current = ctx
        timeout = job.timeout if job.timeout is not None else self.default_timeout
        if self.faults is not None:
            self.faults.check("downloader.before_handler")  # a crash of ours, not the handler's
        try:
            if attempt is None and timeout is None:
                value = await self.handler(job, ctx)
            else:
                async with asyncio.timeout(timeout) as limit:
                    if attempt is not None:
                        attempt.enter(limit)
                    value = await self.handler(job, ctx)
        except Retry as exc:
            after = exc.after if exc.after is not None else self.retry.delay(job.attempt)
            return self._retry(job, f"Retry: {exc.reason}", after, hold_key=exc.hold_key)
        except TimeoutError as exc:
            if timeout is not None and limit.expired():
                return self._retry(job, f"timed out after {timeout:g}s",
                                   self.retry.delay(job.attempt))
            return self._retry(job, _describe(exc), self.retry.delay(job.attempt))
        except Permanent as exc:
            return Outcome(job.id, job.fence, OutcomeKind.FAILED, error=f"Permanent: {exc.reason}")
        except StageError as exc:  # a programming error: retrying would meet it again
            return Outcome(job.id, job.fence, OutcomeKind.FAILED, error=f"StageError: {exc}")
        except Skip as exc:
            return Outcome(job.id, job.fence, OutcomeKind.SKIPPED, error=f"Skip: {exc.reason}")
        except Exception as exc:
            return self._retry(job, _describe(exc), self.retry.delay(job.attempt))
        finally:
            self.current = None
        if value is None:
            return Outcome(job.id, job.fence, OutcomeKind.SUCCEEDED, result="null")
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as exc:
            return Outcome(job.id, job.fence, OutcomeKind.FAILED,
                           error=f"handler result is not JSON-serialisable: {exc}")
        return Outcome(job.id, job.fence, OutcomeKind.SUCCEEDED, result=text)

    def _retry(self, job: Job, error: str, after: float, *, hold_key: bool = False
               ) -> Outcome:
        return Outcome(job.id, job.fence, OutcomeKind.RETRY, error=error,
                       retry_at=self.clock.now() + max(0.0, after), hold_key=hold_key)
