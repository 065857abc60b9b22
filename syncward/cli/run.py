"""``syncward run``: one manifest through the runtime, with signals, progress and a report.

The command itself is declared here too; a ``redis://`` SOURCE is handed to
`syncward.cli.redis`, everything else is a manifest.

Owns: the run's task group — the signal watcher, the submission (the manifest read by a
`ManifestFeed` thread, each chunk's entries to `Runtime.submit_entries`, its bad lines to
`Runtime.reject_lines`), the wait for completion (`Runtime.join`) and the progress bar.

Order of a run: everything that can be refused is checked before the store is opened
(`prepare`: handler, store URL, manifest and, with ``--strict``, every line of it), so an
exit status of 2 means nothing was done. Then the runtime is entered (which reconciles
the store), the run is recorded, its entries submitted, and the command waits until no
job is planned or leased. The report is built after the runtime has drained, from a
read-only store, so it is the same object ``syncward report --json --run ID`` prints.

Signals (SIGINT, SIGTERM): the first cancels submitting and waiting; leaving the runtime
then stops leasing, lets in-flight jobs finish within ``grace`` and releases the rest
(exit 3, resumable). The second kills the runtime at once, as a crash would; the next
run's start-up reconciliation recovers its leases (exit 3 as well).

With ``--http`` the runtime's operations app (`syncward.web`) is served from the moment
the runtime has started until the run has finished (`syncward.cli.serve.serving`); its
socket is bound before the store is opened, with the other exit-2 checks.

With ``--schedule NAME=CRON`` (repeatable) the runtime also submits each tick of each
schedule as a job (`syncward.schedules`); SOURCE may then be omitted. Such a run does not
finish on its own: after the manifest's jobs (if any) are done it keeps running ticks
until a signal stops it, which drains as above and exits 3, as a ``redis://`` source
without ``--until-empty`` does. A bad expression is refused with the exit-2 checks, in
one line naming the schedule and the field.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import click

from syncward.adapters.manifest import STDIN, Entry, Manifest, Rejection, open_manifest
from syncward.cli.common import (
    ExitCode,
    Interrupt,
    RunAborted,
    check_db_dir,
    guard,
    load_handler,
    run_async,
)
from syncward.cli.feed import ManifestFeed
from syncward.cli.options import (
    EXIT_STATUS,
    FORMATS,
    admin_token_file_option,
    db_option,
    http_option,
    json_option,
    split_key,
    stdout,
)
from syncward.cli.progress import Counters, show_progress
from syncward.cli.redis import RedisRunOptions, is_redis_source, run_redis
from syncward.cli.serve import HttpSetup, prepare_http, serving
from syncward.cli.views import render_summary
from syncward.errors import ConfigError, MailboxClosed
from syncward.jobs import JobState
from syncward.limits import Limit
from syncward.report import Report, build_report, dumps
from syncward.runtime import Runtime
from syncward.schedules import MISSED, Missed, Schedule
from syncward.store import open_store

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import Console

    from syncward.actors.downloader import Handler

__all__ = ["Prepared", "RunConfig", "RunOutcome", "execute", "exit_code", "prepare", "run"]

_CHUNK = 1000
_STRICT_LISTED = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    source: str | None  # None: no manifest (--schedule only)
    handler: str
    db: str
    format: str | None
    key: tuple[str, ...] | None
    concurrency: int
    max_attempts: int
    lease_seconds: float
    job_timeout: float | None
    grace: float
    strict: bool
    progress: bool
    loop: str
    schedules: tuple[Schedule, ...] = ()
    limits: tuple[Limit, ...] = ()
    priority_column: str | None = None

    def options(self, fmt: str, key: tuple[str, ...]) -> dict[str, Any]:
        """What is recorded with the run (enough to re-read its manifest)."""
        return {"handler": self.handler, "format": fmt, "key": list(key),
                "concurrency": self.concurrency, "max_attempts": self.max_attempts,
                "lease_seconds": self.lease_seconds, "job_timeout": self.job_timeout,
                "grace": self.grace, "strict": self.strict, "loop": self.loop}


@dataclass
class Prepared:
    """Everything checked before the store is opened; ``close`` it when done."""

    handler: Handler
    manifest: Manifest | None  # None: no SOURCE (--schedule only)
    label: str  # the source as recorded with the run: an absolute path, or "-"
    spool: Any = None  # stdin copied to a temporary file (for --strict)
    reading: bool = False  # the manifest was handed to its reader thread, which closes it
    http: HttpSetup | None = None  # --http: the bound socket and the admin token

    def close(self) -> None:
        if not self.reading and self.manifest is not None:
            self.manifest.close()
        if self.spool is not None:
            self.spool.close()
        if self.http is not None:
            self.http.close()


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: its report (read after the runtime drained) and what it did."""

    run_id: int | None
    report: Report
    run_states: Mapping[JobState, int]
    counters: Counters
    finished: bool
    killed: bool
    elapsed: float
    source: str


# --- the command -------------------------------------------------------------------------


@click.command(epilog=EXIT_STATUS,
               short_help="Run a manifest's jobs (a file, stdin, Redis), or schedules.")
@click.argument("source", metavar="[SOURCE]", required=False)
@click.option("--handler", "handler", required=True, metavar="TARGET",
              help="The async handler(job, ctx): package.module:function or "
                   "path/to/file.py:function.")
@db_option
@click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True,
              help="Jobs run at the same time (downloaders).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Attempts per job before it is failed (the dead-letter set).")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Lease length; renewed while the handler runs.")
@click.option("--job-timeout", type=click.FloatRange(min=0), default=600.0,
              show_default=True, help="Seconds one attempt may take (0: no limit).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="On SIGINT/SIGTERM, seconds in-flight jobs get to finish.")
@click.option("--key", "key", metavar="COL,...",
              help="Identity columns of a .csv (default: id), or the identity field name "
                   "of a .txt (default: id).")
@click.option("--format", "fmt", type=FORMATS,
              help="Manifest format, when the extension does not say (stdin: txt).")
@click.option("--priority-column", "priority_column", metavar="COL",
              help="A .csv column holding each job's priority (an integer, seconds of "
                   "waiting; empty is 0) instead of payload.")
@click.option("--strict", is_flag=True,
              help="Check every manifest line first; any bad line refuses the whole run "
                   "(exit 2) before any work starts.")
@click.option("--until-empty", is_flag=True,
              help="redis:// SOURCE: stop once it is drained and every job has finished "
                   "(a manifest always runs until done).")
@click.option("--no-progress", is_flag=True,
              help="No progress bar (it is only shown when stdout is a terminal).")
@json_option
@click.option("--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto",
              show_default=True, help="Event loop: auto is uvloop when it is installed.")
@http_option(None)
@admin_token_file_option
@click.option("--schedule", "schedule", multiple=True, metavar="NAME=CRON",
              help="Also submit each tick of this cron expression as a job, identity "
                   '{"schedule": NAME, "tick": UTC time} (repeatable; SOURCE may then be '
                   "omitted, and the run goes on until stopped).")
@click.option("--schedule-missed", type=click.Choice(MISSED), default="run_once",
              show_default=True,
              help="Ticks that came due while nothing ran: run the latest once, or skip them.")
@click.option("--schedule-tz", default="UTC", show_default=True, metavar="ZONE",
              help="The time zone --schedule expressions are read in (a zoneinfo name).")
@click.option("--limit", "limit", multiple=True, metavar="FIELD:concurrency=N,rate=R",
              help="At most N jobs at once and R starts per second for each value of the "
                   "job's FIELD (identity, else payload); host is the host of its url "
                   "(repeatable; a job obeys the first that applies; also burst=B).")
@guard
def run(source: str | None, handler: str, db: str, concurrency: int, max_attempts: int,
        lease_seconds: float, job_timeout: float, grace: float, key: str | None,
        fmt: str | None, priority_column: str | None, strict: bool, until_empty: bool,
        no_progress: bool, as_json: bool,
        loop: str, http: str | None, admin_token_file: Path | None,
        schedule: tuple[str, ...], schedule_missed: str, schedule_tz: str,
        limit: tuple[str, ...]) -> None:
    """Run every job of the manifest SOURCE (a file, or - for stdin) through TARGET.

    \b
    Manifest formats, by extension (or --format):
      .txt    one identity per line, {"id": line}; blank lines and # comments ignored
      .csv    a header line; the identity is the --key columns (default id), the other
              columns are the payload (--priority-column COL: that one is the priority)
      .jsonl  one object per line: {"identity": {...}, "payload": {...}, "priority": n}
              (payload and priority optional)

    The manifest is read as a stream. Bad lines (not UTF-8, unparseable, wrong columns,
    empty or invalid identity) are rejected one by one, recorded with the run with their
    line number and reason, and listed in the report; the good lines still run. With
    --strict any bad line refuses the whole run first.

    Running the same command again resumes: committed jobs are not redone, and the
    report compares the store with this run's entries. SIGINT or SIGTERM stops leasing,
    lets in-flight jobs finish within --grace, releases the rest and exits 3; a second
    SIGINT stops at once (the next run recovers its leases).

    At the end: a summary table, or with --json the report object (as `syncward report
    --json --run ID`).

    SOURCE may also be redis://HOST:PORT/DB?stream=NAME&group=G (a Redis stream read
    through a consumer group) or redis://HOST:PORT/DB?list=NAME (a Redis list, drained
    without loss); it runs until stopped (exit 3), or with --until-empty until drained.

    With --http [HOST:]PORT the run serves its dashboard, /health, /metrics and JSON API
    while it lasts; admin routes (POST) need the token of $SYNCWARD_ADMIN_TOKEN or
    --admin-token-file.

    With --limit host:concurrency=4,rate=5 at most 4 jobs per host of the job's url run
    at once, and at most 5 start per second (any FIELD of the job works as well as host).

    With --schedule NAME=CRON (repeatable) each tick of the cron expression is also a
    job, identity {"schedule": NAME, "tick": "2024-05-01T13:00:00Z"}, run once however
    many processes share the store; SOURCE may be left out. The run then goes on until
    SIGINT or SIGTERM (exit 3). Ticks missed while nothing ran: --schedule-missed.
    """
    if admin_token_file is not None and http is None:
        raise ConfigError("--admin-token-file needs --http")
    schedules = _schedules(schedule, schedule_missed, schedule_tz)
    limits = tuple(Limit.from_option(spec) for spec in limit)
    names = [lim.name for lim in limits]
    if twice := next((n for i, n in enumerate(names) if n in names[:i]), None):
        raise ConfigError(f"--limit: the field {twice!r} is given twice")
    if source is None:
        if not schedules:
            raise ConfigError("SOURCE is needed (a manifest file, - for stdin, or a "
                              "redis:// URL) unless --schedule is given")
        if key or fmt or strict or priority_column:
            raise ConfigError("--key, --format, --priority-column and --strict apply to a "
                              "manifest SOURCE")
    elif is_redis_source(source):
        if schedules:
            raise ConfigError("--schedule is not available with redis:// sources yet")
        if key or fmt or strict or priority_column:
            raise ConfigError("--key, --format, --priority-column and --strict apply to "
                              "manifests, not to redis:// sources")
        if http is not None:
            raise ConfigError("--http is not available with redis:// sources yet")
        run_redis(RedisRunOptions(
            source=source, handler=handler, db=db, concurrency=concurrency,
            max_attempts=max_attempts, lease_seconds=lease_seconds,
            job_timeout=job_timeout or None, grace=grace, until_empty=until_empty,
            progress=not no_progress, as_json=as_json, loop=loop, limits=limits))
    cfg = RunConfig(
        source=source, handler=handler, db=db, format=fmt, key=split_key(key),
        concurrency=concurrency, max_attempts=max_attempts, lease_seconds=lease_seconds,
        job_timeout=job_timeout or None, grace=grace, strict=strict,
        progress=not no_progress, loop=loop, schedules=schedules, limits=limits,
        priority_column=priority_column)
    prepared = prepare(cfg)
    try:
        if http is not None:
            prepared.http = prepare_http(http, admin_token_file)
        out = stdout()
        console = out if cfg.progress and out.is_terminal else None
        outcome = run_async(execute, cfg, prepared, console, loop=loop)
    finally:
        prepared.close()
    code = exit_code(outcome)
    if as_json:
        click.echo(dumps(outcome.report.as_dict()))
    else:
        render_summary(stdout(), outcome, int(code))
    sys.exit(int(code))


# --- before any work ---------------------------------------------------------------------


def prepare(cfg: RunConfig) -> Prepared:
    """Check everything that can be refused before any work (the exit-2 checks).

    Raises:
        ConfigError: unknown handler, bad store URL or directory, unreadable or malformed
            manifest, or (``--strict``) any bad line; the message names the problem.
    """
    check_db_dir(cfg.db)
    handler = load_handler(cfg.handler)
    if cfg.source is None:
        names = ", ".join(s.name for s in cfg.schedules)
        return Prepared(handler=handler, manifest=None, label=f"--schedule {names}")
    label = cfg.source if cfg.source == STDIN else str(Path(cfg.source).resolve())
    if cfg.source != STDIN:
        if cfg.strict:
            with _open(cfg) as first:
                _strict_pass(first, cfg)
        return Prepared(handler=handler, manifest=_open(cfg), label=label)
    if not cfg.strict:
        # Our own file object on a copy of fd 0, closed with the manifest: the reader
        # thread may be left blocked in a read of it when a run is interrupted, and must
        # not hold the lock of sys.stdin then (the interpreter's shutdown needs it).
        stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
        return Prepared(handler=handler, manifest=_open(cfg, stdin, close=True), label=label)
    spool = tempfile.TemporaryFile()  # stdin can be read once: keep it for both passes
    try:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.seek(0)
        with _open(cfg, spool) as first:
            _strict_pass(first, cfg)
        spool.seek(0)
        return Prepared(handler=handler, manifest=_open(cfg, spool), label=label, spool=spool)
    except BaseException:
        spool.close()
        raise


def _schedules(specs: tuple[str, ...], missed: str, tz: str) -> tuple[Schedule, ...]:
    """The ``--schedule NAME=CRON`` options as schedules.

    Raises:
        ConfigError: a malformed option, a bad expression or time zone (naming the
            schedule and the field), or a name given twice.
    """
    schedules = []
    for spec in specs:
        try:
            schedules.append(Schedule.from_option(spec, missed=cast("Missed", missed), tz=tz))
        except ConfigError as exc:
            raise ConfigError(f"--schedule: {exc}") from None
    names = [s.name for s in schedules]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--schedule: a name given twice: {', '.join(twice)}")
    return tuple(schedules)


def _open(cfg: RunConfig, stdin: Any = None, *, close: bool = False) -> Manifest:
    assert cfg.source is not None
    return open_manifest(cfg.source, fmt=cfg.format, key=cfg.key, stdin=stdin,
                         close_stdin=close, priority_column=cfg.priority_column)


def _strict_pass(manifest: Manifest, cfg: RunConfig) -> None:
    bad = 0
    for item in manifest:
        if isinstance(item, Rejection):
            bad += 1
            if bad <= _STRICT_LISTED:
                click.echo(f"{cfg.source}:{item.line}: {item.reason}", err=True)
    if bad:
        more = f" ({bad - _STRICT_LISTED} more not listed)" if bad > _STRICT_LISTED else ""
        raise ConfigError(f"--strict: {bad} bad line(s) in manifest {cfg.source}{more}; "
                          "nothing was run")


def exit_code(outcome: RunOutcome) -> ExitCode:
    if not outcome.finished:
        return ExitCode.INTERRUPTED
    report, manifest = outcome.report, outcome.report.manifest
    if (report.rejected or outcome.run_states[JobState.FAILED]
            or (manifest is not None and (manifest.missing or manifest.not_terminal))):
        return ExitCode.FAILED
    return ExitCode.OK


# --- the run -----------------------------------------------------------------------------


async def execute(cfg: RunConfig, prepared: Prepared, console: Console | None) -> RunOutcome:
    """Run the manifest (see the module docstring). ``console`` shows progress, if given.

    Raises:
        StoreLocked, SchemaTooNew, StoreError: the store could not be opened (nothing done).
        RunAborted: the runtime stopped on an error after work had started.
    """
    interrupt = Interrupt()
    async with anyio.create_task_group() as tg:
        await tg.start(interrupt.watch)
        try:
            outcome = await _run(cfg, prepared, interrupt, console)
        finally:
            tg.cancel_scope.cancel()
    return outcome


async def _run(cfg: RunConfig, prepared: Prepared, interrupt: Interrupt,
               console: Console | None) -> RunOutcome:
    started = time.monotonic()
    counters = Counters()
    finished = False
    run_id: int | None = None
    manifest = prepared.manifest
    runtime = Runtime(prepared.handler, store=cfg.db, concurrency=cfg.concurrency,
                      max_attempts=cfg.max_attempts, lease_seconds=cfg.lease_seconds,
                      job_timeout=cfg.job_timeout, grace=cfg.grace, schedules=cfg.schedules,
                      limits=cfg.limits)
    async with runtime as rt, serving(prepared.http, rt):
        try:
            with anyio.CancelScope() as body:
                interrupt.attach(rt, body)
                if manifest is not None:
                    run_id = await rt.start_run(
                        prepared.label, cfg.options(manifest.format.value, manifest.key))
                async with anyio.create_task_group() as tg:
                    if console is not None:
                        tg.start_soon(show_progress, rt, cfg.db, counters, console)
                    if manifest is not None and run_id is not None:
                        prepared.reading = True
                        await _submit(rt, run_id, manifest, counters)
                    counters.submitted_all = True
                    await rt.join()
                    finished = True
                    if cfg.schedules:
                        await anyio.sleep_forever()  # ticks go on until a signal
                    tg.cancel_scope.cancel()
            if run_id is not None and not interrupt.killed:
                with anyio.CancelScope() as body:
                    interrupt.body = body
                    await rt.finish_run(run_id, "finished" if finished else "interrupted")
        except MailboxClosed:
            pass  # the runtime is stopping on its own; leaving it says why
        except Exception as exc:
            raise RunAborted(exc) from exc
    report, states = await _final_report(cfg.db, run_id)
    # A run with schedules never finishes: it was stopped (exit 3), whatever its manifest did.
    return RunOutcome(run_id=run_id, report=report, run_states=states, counters=counters,
                      finished=finished and not cfg.schedules, killed=interrupt.killed,
                      elapsed=time.monotonic() - started, source=cfg.source or prepared.label)


async def _final_report(db: str, run_id: int | None
                        ) -> tuple[Report, dict[JobState, int]]:
    store = await open_store(db, readonly=True)
    try:
        report = await build_report(store, run_id=run_id)
        states = (await store.run_states(run_id) if run_id is not None
                  else dict.fromkeys(JobState, 0))
    finally:
        await store.aclose()
    return report, states


async def _submit(rt: Runtime, run_id: int, manifest: Manifest, counters: Counters) -> None:
    """Submit the manifest a chunk at a time; each chunk returns after its commit.

    Chunks, not one stream: a chunk is whatever the reader has when asked, so lines
    that trickle in on a pipe become jobs at once instead of waiting for a full batch.
    """
    async with ManifestFeed(manifest, chunk=_CHUNK) as feed:
        async with contextlib.aclosing(feed.chunks()) as chunks:
            async for chunk in chunks:
                entries = [item for item in chunk if isinstance(item, Entry)]
                rejects = [item for item in chunk if isinstance(item, Rejection)]
                if rejects:
                    await rt.reject_lines(run_id, rejects)
                    counters.rejected += len(rejects)
                if entries:
                    result = await rt.submit_entries(entries, run_id=run_id)
                    counters.entries += len(entries)
                    counters.new += result.new
                    counters.duplicates += result.duplicates
