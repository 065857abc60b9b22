"""``syncward run``: one manifest through the runtime, with signals, progress and a report.

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
from typing import TYPE_CHECKING, Any

import anyio
import click

from syncward._cli_common import ExitCode, Interrupt, RunAborted, check_db_dir, load_handler
from syncward._cli_feed import ManifestFeed
from syncward._cli_progress import show_progress
from syncward.adapters.manifest import STDIN, Entry, Manifest, Rejection, open_manifest
from syncward.errors import ConfigError, MailboxClosed
from syncward.jobs import JobState
from syncward.report import build_report
from syncward.runtime import Runtime
from syncward.store import open_store

if TYPE_CHECKING:
    from rich.console import Console

    from syncward.actors.downloader import Handler

__all__ = ["Prepared", "RunConfig", "RunOutcome", "execute", "exit_code", "prepare"]

_CHUNK = 1000
_STRICT_LISTED = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    source: str
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
    manifest: Manifest
    label: str  # the source as recorded with the run: an absolute path, or "-"
    spool: Any = None  # stdin copied to a temporary file (for --strict)
    reading: bool = False  # the manifest was handed to its reader thread, which closes it

    def close(self) -> None:
        if not self.reading:
            self.manifest.close()
        if self.spool is not None:
            self.spool.close()


@dataclass
class Counters:
    """What the submission has done so far (read by the progress bar)."""

    entries: int = 0
    rejected: int = 0
    new: int = 0
    duplicates: int = 0
    submitted_all: bool = False


@dataclass
class RunOutcome:
    run_id: int | None
    report: dict[str, Any]
    run_states: dict[JobState, int]
    counters: Counters
    finished: bool
    killed: bool
    elapsed: float
    source: str


def prepare(cfg: RunConfig) -> Prepared:
    """Check everything that can be refused before any work (the exit-2 checks).

    Raises:
        ConfigError: unknown handler, bad store URL or directory, unreadable or malformed
            manifest, or (``--strict``) any bad line; the message names the problem.
    """
    check_db_dir(cfg.db)
    handler = load_handler(cfg.handler)
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


def _open(cfg: RunConfig, stdin: Any = None, *, close: bool = False) -> Manifest:
    return open_manifest(cfg.source, fmt=cfg.format, key=cfg.key, stdin=stdin,
                         close_stdin=close)


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
    manifest = outcome.report["manifest"] or {}
    if (outcome.report["rejected"] or outcome.run_states[JobState.FAILED]
            or manifest.get("missing") or manifest.get("not_terminal")):
        return ExitCode.FAILED
    return ExitCode.OK


# --- signals -----------------------------------------------------------------------------


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
                      job_timeout=cfg.job_timeout, grace=cfg.grace)
    async with runtime as rt:
        try:
            with anyio.CancelScope() as body:
                interrupt.attach(rt, body)
                run_id = await rt.start_run(
                    prepared.label, cfg.options(manifest.format.value, manifest.key))
                async with anyio.create_task_group() as tg:
                    if console is not None:
                        tg.start_soon(show_progress, rt, cfg.db, counters, console)
                    prepared.reading = True
                    await _submit(rt, run_id, manifest, counters)
                    counters.submitted_all = True
                    await rt.join()
                    finished = True
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
    return RunOutcome(run_id=run_id, report=report, run_states=states, counters=counters,
                      finished=finished, killed=interrupt.killed,
                      elapsed=time.monotonic() - started, source=cfg.source)


async def _final_report(db: str, run_id: int | None
                        ) -> tuple[dict[str, Any], dict[JobState, int]]:
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
