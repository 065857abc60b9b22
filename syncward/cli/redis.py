"""``syncward run redis://...``: a Redis stream or list through the runtime.

SOURCE forms (``rediss://`` for TLS; a password as ``redis://:PASSWORD@HOST``)::

    redis://HOST:PORT/DB?stream=NAME&group=G   [&idle=S&claim_every=S&batch=N&block=S
                                                &max_outstanding=N&dead=NAME&delete_acked=1]
    redis://HOST:PORT/DB?list=NAME             [&idle=S&batch=N&block=S&max_outstanding=N
                                                &dead=NAME]

Order, as for a manifest: everything that can be refused is checked before the store is
opened (handler, store directory, the URL, Redis reachable, the key of the right type),
so exit 2 means nothing was done. Then the runtime runs with the source as its child
until a signal or, with ``--until-empty``, until the source is drained (a stream: nothing
undelivered to the group and nothing pending in it; a list: the list and every
processing list empty) and no job is planned or leased.

Exit status: 0 drained and every job of the store succeeded or was skipped; 1 some job
failed, an item was dead-lettered, or Redis lost data (a gap) during the run; 2 nothing
was done; 3 stopped by a signal (run the same command again to go on: what was read and
not acknowledged is read again, and recorded jobs are not redone).

Signals: the first SIGINT/SIGTERM stops waiting; leaving the runtime stops the source
first (it waits briefly for what it submitted to commit, and acknowledges it), lets
in-flight jobs finish within ``grace`` and releases the rest. A second one kills the
runtime at once, as a crash would.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import click

from syncward.cli.common import (
    ExitCode,
    Interrupt,
    RunAborted,
    check_db_dir,
    load_handler,
    run_async,
)
from syncward.cli.options import stdout
from syncward.cli.progress import Counters, show_progress
from syncward.cli.views import render_report
from syncward.errors import ConfigError, MailboxClosed, MissingDependency
from syncward.jobs import JobState
from syncward.report import Report, build_report, dumps
from syncward.runtime import Runtime
from syncward.store import open_store

if TYPE_CHECKING:
    from rich.console import Console

    from syncward.actors.downloader import Handler
    from syncward.adapters.redis import RedisStreamSource
    from syncward.adapters.redis_list import RedisListSource
    from syncward.limits import Limit

__all__ = ["RedisRunOptions", "RedisRunResult", "build_source", "is_redis_source",
           "run_redis"]

_SCHEMES = ("redis://", "rediss://")
_POLL = 0.05


def is_redis_source(source: str) -> bool:
    return source.startswith(_SCHEMES)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisRunOptions:
    source: str
    handler: str
    db: str
    concurrency: int
    max_attempts: int
    lease_seconds: float
    job_timeout: float | None
    grace: float
    until_empty: bool
    progress: bool
    as_json: bool
    loop: str
    limits: tuple[Limit, ...] = ()


@dataclass(frozen=True, slots=True)
class RedisRunResult:
    """The report after the run, the source's status then, and the run's duration.

    ``source`` is the adapter's own status document (`RedisStreamSource.status`).
    """

    report: Report
    source: dict[str, Any]
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        """What ``--json`` prints: the report with ``"source"`` and ``"elapsed"`` added."""
        return {**self.report.as_dict(), "source": self.source, "elapsed": self.elapsed}


def build_source(url: str) -> RedisStreamSource | RedisListSource:
    """The source a ``redis://`` SOURCE names: ``?stream=`` or ``?list=``.

    Raises:
        ConfigError: neither or both given, a bad parameter, or redis-py is missing.
    """
    try:
        from syncward.adapters._redis_base import redact
        from syncward.adapters.redis import RedisStreamSource, StreamConfig
        from syncward.adapters.redis_list import ListConfig, RedisListSource
    except MissingDependency as exc:
        raise ConfigError(str(exc)) from None
    has_stream, has_list = "stream=" in url, "list=" in url
    if has_stream == has_list:
        raise ConfigError(f"{redact(url)}: give ?stream=NAME&group=G or ?list=NAME")
    if has_stream:
        return RedisStreamSource(StreamConfig.from_url(url))
    return RedisListSource(ListConfig.from_url(url))


async def _preflight(src: RedisStreamSource | RedisListSource) -> None:
    """Redis answers, and the key is of the right type (or absent)."""
    from redis.exceptions import RedisError

    from syncward.adapters._redis_base import connect, redact
    from syncward.adapters.redis import RedisStreamSource

    cfg = src.config
    if isinstance(src, RedisStreamSource):
        key, want = src.config.stream, "stream"
    else:
        key, want = src.config.list, "list"
    client = connect(cfg.url, read_timeout=5.0)
    try:
        found = await client.type(key)
    except RedisError as exc:
        raise ConfigError(f"cannot reach Redis at {redact(cfg.url)}: {exc}") from None
    finally:
        await client.aclose()
    found = found.decode() if isinstance(found, bytes) else str(found)
    if found not in ("none", want):
        raise ConfigError(f"Redis key {key!r} at {redact(cfg.url)} is a {found}, not a {want}")


def run_redis(opts: RedisRunOptions) -> NoReturn:
    """Run the command (see the module docstring) and exit with its status.

    Raises:
        ConfigError: something was refused before any work (exit 2 through `guard`).
        RunAborted: the runtime stopped on an error after work had started.
    """
    check_db_dir(opts.db)
    handler = load_handler(opts.handler)
    src = build_source(opts.source)
    out = stdout()
    console = out if opts.progress and out.is_terminal else None
    code, result = run_async(_execute, opts, handler, src, console, loop=opts.loop)
    if opts.as_json:
        click.echo(dumps(result.as_dict()))
    else:
        _render(out, result, code)
    sys.exit(int(code))


async def _execute(opts: RedisRunOptions, handler: Handler,
                   src: RedisStreamSource | RedisListSource, console: Console | None
                   ) -> tuple[ExitCode, RedisRunResult]:
    await _preflight(src)
    started = time.monotonic()
    stop = Interrupt(stopping="what was read is committed and acknowledged, in-flight "
                              "jobs get a grace period")
    finished = False
    runtime = Runtime(handler, store=opts.db, concurrency=opts.concurrency,
                      max_attempts=opts.max_attempts, lease_seconds=opts.lease_seconds,
                      job_timeout=opts.job_timeout, grace=opts.grace, sources=[src],
                      limits=opts.limits)
    async with anyio.create_task_group() as signals:
        await signals.start(stop.watch)
        try:
            async with runtime as rt:
                with anyio.CancelScope() as body:
                    stop.attach(rt, body)
                    async with anyio.create_task_group() as tg:
                        if console is not None:
                            tg.start_soon(_progress, rt, src, opts.db, console)
                        if opts.until_empty:
                            await _until_empty(rt, src)
                            finished = True
                        else:
                            await anyio.sleep_forever()
                        tg.cancel_scope.cancel()
        except MailboxClosed:
            pass  # the runtime is stopping on its own; leaving it says why
        except Exception as exc:
            raise RunAborted(exc) from exc
        finally:
            signals.cancel_scope.cancel()
    status = src.status()
    result = RedisRunResult(report=await _final_report(opts.db), source=status,
                            elapsed=round(time.monotonic() - started, 3))
    if not finished:
        return ExitCode.INTERRUPTED, result
    problems = (result.report.counts[JobState.FAILED] or status["dead_lettered"]
                or status["gaps"])
    return (ExitCode.FAILED if problems else ExitCode.OK), result


async def _until_empty(rt: Runtime, src: RedisStreamSource | RedisListSource) -> None:
    """Until the source is drained and stays so while the jobs it gave finish."""
    while True:
        while not src.status()["drained"]:  # noqa: ASYNC110 - a status, not an event
            await anyio.sleep(_POLL)
        read = src.status()["read"]
        await rt.join()
        status = src.status()
        if status["drained"] and status["read"] == read and rt.stats().active == 0:
            return


async def _progress(rt: Runtime, src: RedisStreamSource | RedisListSource, db: str,
                    console: Console) -> None:
    counters = Counters()
    async with anyio.create_task_group() as tg:
        tg.start_soon(show_progress, rt, db, counters, console)
        while True:
            status = src.status()
            counters.entries = status["read"] - status["dead_lettered"]
            counters.rejected = status["dead_lettered"]
            await anyio.sleep(0.25)


async def _final_report(db: str) -> Report:
    store = await open_store(db, readonly=True)
    try:
        return await build_report(store)
    finally:
        await store.aclose()


def _render(console: Console, result: RedisRunResult, code: int) -> None:
    status = result.source
    verb = {0: "drained", 1: "drained with problems", 3: "stopped"}.get(code, "ended")
    what = (f"stream {status['stream']} (group {status['group']})" if "stream" in status
            else f"list {status['list']}")
    render_report(console, result.report, title=f"{status['redis']} {what}: {verb} in "
                  f"{result.elapsed:,.1f}s (exit {code})", source=None)
    console.print(f"Read {status['read']:,} item(s) as consumer {status['consumer']}: "
                  f"{status['committed']:,} recorded, {status['acked']:,} acknowledged, "
                  f"{status['dead_lettered']:,} dead-lettered, {status['claimed']:,} claimed "
                  "from gone consumers.")
    for gap in status["gaps"]:
        console.print(f"[bold red]Gap[/]: {gap['reason']}", highlight=False)
    for warning in status["warnings"]:
        console.print(f"[yellow]Warning[/]: {warning}", highlight=False)
    if code == 3:
        console.print("Stopped: run the same command again to go on; recorded jobs are not "
                      "redone.")
