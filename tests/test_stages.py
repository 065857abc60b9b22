"""Declared stage order (`syncward.stages`): refused stages raise and are never committed.

Each runtime test runs on the in-memory store and on SQLite; the store is read through the
`StoreReader` protocol after the runtime has left.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio
import pytest

import syncward
from syncward import (
    ConfigError,
    Context,
    Job,
    JobState,
    RetryPolicy,
    Runtime,
    StageError,
    SyncerConfig,
    SyncwardError,
    stages,
)
from syncward.jobs import job_key
from syncward.stage_order import StageOrder, declared_stages
from syncward.store import JobRow, open_store
from syncward.store.memory import MemoryStore

QUICK = SyncerConfig(idle_poll=0.01, retry_initial=0.001, retry_max=0.01)
AT_ONCE = RetryPolicy(base=0.0, jitter=False)
ORDER = ("HEAD", "DOWNLOADED", "VERIFIED")


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        name = f"stages-{id(tmp_path)}"
        yield f"memory://{name}"
        MemoryStore.forget(name)
    else:
        yield f"sqlite:///{tmp_path / 'jobs.db'}"


async def run_one(store_url: str, handler: Any, *, max_attempts: int = 3,
                  retry: RetryPolicy | None = None) -> JobRow:
    """Run ``handler`` on one job ``{"n": 1}`` to a terminal state; return its row."""
    with anyio.fail_after(10):
        async with Runtime(handler, store=store_url, syncer=QUICK,
                           max_attempts=max_attempts, retry=retry) as rt:
            await rt.submit([{"n": 1}])
            await rt.join()
            row = await rt.store.get_job(job_key({"n": 1}))
    assert row is not None
    return row


# --- the order itself ----------------------------------------------------------------


def test_stage_error_names_the_stage_the_order_and_the_current_stage() -> None:
    order = StageOrder(ORDER)
    with pytest.raises(StageError) as unknown:
        order.check("FINALIZED", "HEAD", job="k")
    assert isinstance(unknown.value, SyncwardError)
    text = str(unknown.value)
    assert "'FINALIZED'" in text and "not a declared stage" in text
    assert "HEAD -> DOWNLOADED -> VERIFIED" in text and "current stage HEAD" in text
    assert (unknown.value.stage, unknown.value.order, unknown.value.current) == (
        "FINALIZED", ORDER, "HEAD")
    with pytest.raises(StageError, match=r"not after the current stage.*current stage VERIFIED"):
        order.check("HEAD", "VERIFIED")
    with pytest.raises(StageError, match=r"current stage \(none: not started\)"):
        order.check("nope", None)


def test_forward_skips_and_repeats_are_allowed() -> None:
    order = StageOrder(ORDER)
    assert order.check("HEAD", None)
    assert order.check("VERIFIED", "HEAD")  # skipping DOWNLOADED
    assert not order.check("DOWNLOADED", "DOWNLOADED")  # a repeat: nothing to commit
    assert order.check("HEAD", "an-old-free-text-stage")  # an undeclared current: the start


@pytest.mark.parametrize("names", [(), ("A", "A"), ("A", ""), ("A", 3)])
def test_a_bad_declaration_is_refused_when_declared(names: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigError, match="stages"):
        stages(*names)


def test_the_decorator_marks_any_callable_and_returns_it() -> None:
    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> None: ...

    class Handler:
        async def __call__(self, job: Job, ctx: Context) -> None: ...

    obj = stages("A", "B")(Handler())
    assert declared_stages(handler) == StageOrder(ORDER)
    assert declared_stages(obj) == StageOrder(("A", "B"))
    assert declared_stages(noop_free) is None
    assert syncward.stages is stages


async def noop_free(job: Job, ctx: Context) -> None: ...


def test_the_http_handler_declares_its_order(tmp_path: Path) -> None:
    from syncward.adapters.http import HttpFetcher, HttpStage

    fetcher = HttpFetcher()
    order = declared_stages(fetcher.handler(tmp_path))
    assert order is not None and order.names == tuple(HttpStage)
    anyio.run(fetcher.aclose)


# --- in a runtime --------------------------------------------------------------------


async def test_an_unknown_stage_is_refused_not_committed_and_fails_the_job(
        store_url: str) -> None:
    seen: list[StageError] = []

    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> None:
        await ctx.stage("HEAD")
        try:
            await ctx.stage("not-a-stage")
        except StageError as exc:
            seen.append(exc)
            raise

    row = await run_one(store_url, handler)
    assert (row.state, row.attempts, row.stage) == (JobState.FAILED, 1, "HEAD")
    assert row.last_error is not None and row.last_error.startswith("StageError: ")
    assert "'not-a-stage'" in row.last_error and "HEAD -> DOWNLOADED -> VERIFIED" in row.last_error
    assert len(seen) == 1  # failed at once: a programming error is not retried


async def test_a_backwards_stage_is_refused_and_the_store_keeps_the_current_one(
        store_url: str) -> None:
    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> str:
        await ctx.stage("DOWNLOADED")
        with pytest.raises(StageError, match="not after the current stage"):
            await ctx.stage("HEAD")
        assert ctx.current_stage == "DOWNLOADED"
        return "caught"

    row = await run_one(store_url, handler)
    assert (row.state, row.stage, row.result) == (JobState.SUCCEEDED, "DOWNLOADED", "caught")


async def test_a_refused_stage_sends_nothing(store_url: str) -> None:
    """Not committed means not sent: the store's stage and its rejections are unchanged."""
    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> None:
        await ctx.stage("VERIFIED")
        for bad in ("HEAD", "DOWNLOADED", "FINALIZED", "HEAD_DONE"):
            with pytest.raises(StageError):
                await ctx.stage(bad)

    row = await run_one(store_url, handler)
    assert (row.state, row.stage) == (JobState.SUCCEEDED, "VERIFIED")
    store = await open_store(store_url, readonly=True)
    try:
        assert await store.rejection_count() == 0
    finally:
        await store.aclose()


async def test_forward_skip_and_repeat_for_a_resumed_job(store_url: str) -> None:
    attempts: list[tuple[int, str | None]] = []

    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> str:
        attempts.append((job.attempt, job.stage))
        if job.attempt == 1:
            await ctx.stage("DOWNLOADED")  # HEAD skipped
            raise RuntimeError("crash after DOWNLOADED")
        await ctx.stage("DOWNLOADED")  # the stage it resumes at, again: allowed, a no-op
        await ctx.stage("VERIFIED")
        return "done"

    row = await run_one(store_url, handler, retry=AT_ONCE)
    assert attempts == [(1, None), (2, "DOWNLOADED")]
    assert (row.state, row.stage, row.attempts) == (JobState.SUCCEEDED, "VERIFIED", 2)


async def test_undeclared_handlers_keep_free_stages(store_url: str) -> None:
    async def handler(job: Job, ctx: Context) -> None:
        for name in ("FINALIZED", "HEAD_DONE", "not-a-stage", "HEAD_DONE"):
            await ctx.stage(name)
        assert ctx.current_stage == "HEAD_DONE"

    row = await run_one(store_url, handler)
    assert (row.state, row.stage) == (JobState.SUCCEEDED, "HEAD_DONE")


# --- a stage committed with an effect or a claim -------------------------------------


async def test_an_effect_and_its_stage_commit_together_and_resume_together(
        store_url: str) -> None:
    runs: list[int] = []
    seen: list[tuple[int, str | None, Any]] = []

    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> Any:
        def upload() -> dict[str, int]:
            runs.append(job.attempt)
            return {"bytes": 7}

        result = await ctx.effect_and_stage("upload", upload, "DOWNLOADED", part=1)
        seen.append((job.attempt, ctx.current_stage, result))
        if job.attempt == 1:
            raise RuntimeError("crash after the effect and its stage")
        return result

    row = await run_one(store_url, handler, retry=AT_ONCE)
    assert runs == [1]  # the second attempt read the record
    assert seen == [(1, "DOWNLOADED", {"bytes": 7}), (2, "DOWNLOADED", {"bytes": 7})]
    assert (row.state, row.stage, row.attempts) == (JobState.SUCCEEDED, "DOWNLOADED", 2)


async def test_a_recorded_effect_still_commits_a_stage_it_had_not_reached(
        store_url: str) -> None:
    runs: list[int] = []

    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> Any:
        def upload() -> int:
            runs.append(job.attempt)
            return 7

        if job.attempt == 1:
            await ctx.effect("upload", upload)
            raise RuntimeError("crash before any stage")
        assert job.stage is None
        value = await ctx.effect_and_stage("upload", upload, "VERIFIED")
        assert ctx.current_stage == "VERIFIED"
        return value

    row = await run_one(store_url, handler, retry=AT_ONCE)
    assert runs == [1]
    assert (row.state, row.stage, row.result) == (JobState.SUCCEEDED, "VERIFIED", 7)


async def test_a_refused_stage_on_an_effect_or_claim_runs_and_records_nothing(
        store_url: str) -> None:
    ran: list[str] = []
    refused: list[str] = []

    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> None:
        await ctx.stage("DOWNLOADED")
        for call in (lambda: ctx.effect_and_stage("upload", lambda: ran.append("upload"),
                                                  "HEAD"),
                     lambda: ctx.claim("sha256", "abc", stage="UNKNOWN")):
            with pytest.raises(StageError) as info:
                await call()
            refused.append(info.value.stage)
        holder = await ctx.claim("sha256", "abc", stage="VERIFIED")
        assert (holder, ctx.current_stage) == (job.key, "VERIFIED")

    row = await run_one(store_url, handler)
    assert (ran, refused) == ([], ["HEAD", "UNKNOWN"])
    assert (row.state, row.stage) == (JobState.SUCCEEDED, "VERIFIED")


async def test_a_context_field_named_stage_stays_part_of_the_op_key(store_url: str) -> None:
    """`effect`'s keyword arguments are all context fields: two effects that differ only in
    a field called ``stage`` are two effects, and no job stage is committed."""
    runs: list[str] = []

    async def handler(job: Job, ctx: Context) -> list[str]:
        def upload(part: str) -> str:
            runs.append(part)
            return f"uploaded {part}"

        return [await ctx.effect("upload", functools.partial(upload, part), stage=part)
                for part in "ab"]

    row = await run_one(store_url, handler)
    assert runs == ["a", "b"]
    assert (row.state, row.stage, row.result) == (
        JobState.SUCCEEDED, None, ["uploaded a", "uploaded b"])


async def test_a_stage_reached_while_the_effect_ran_is_not_undone(store_url: str) -> None:
    """Another task of the handler commits a later stage while ``fn`` runs: the result is
    committed without its (now earlier) stage, never moving the job back."""
    later_committed = anyio.Event()

    @stages(*ORDER)
    async def handler(job: Job, ctx: Context) -> Any:
        async def upload() -> int:
            await later_committed.wait()
            return 7

        async def verify() -> None:
            await ctx.stage("VERIFIED")
            later_committed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(verify)
            value = await ctx.effect_and_stage("upload", upload, "DOWNLOADED")
        assert ctx.current_stage == "VERIFIED"
        return value

    row = await run_one(store_url, handler, max_attempts=1)
    assert (row.state, row.stage, row.result) == (JobState.SUCCEEDED, "VERIFIED", 7)
