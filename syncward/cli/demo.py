"""``syncward demo``: download a local archive with faults on, and tell the truth about it.

Owns: one event loop holding the archive server (`syncward.testing.archive`, started
in-process on 127.0.0.1), an `HttpFetcher` and a `Runtime` whose handler downloads each
catalogue file into ``--out``, with the progress bar of ``syncward run``.

The verdict compares the store with what the archive says a correct client ends with:
every file downloaded (and its SHA-256 on disk equal to the archive's) except the
permanent 404s, failed with their errors, and the duplicates, skipped and pointing at the
job holding the same bytes; no entry missing, no stats drift. Exit 0 exactly then, else 1.
Running it again with the same ``--db`` and ``--out`` resumes, and redoes nothing.

The result is a `DemoResult` (frozen): the store's `Report` plus what the demo saw;
``--json`` prints its ``as_dict()``, the report's object with a ``"demo"`` section added.

Design note: the archive server is a module of the package (`syncward.testing.archive`;
its docstring says why there), imported like any other, so the demo works the same from
a source checkout and from an installed wheel. ``examples/archive_server.py`` is only the
script that serves it on its own.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click

from syncward.adapters.http import HttpFetcher, part_cleanup
from syncward.cli.common import ExitCode, check_db_dir, guard, run_async
from syncward.cli.options import stdout
from syncward.cli.progress import Counters, show_progress
from syncward.cli.views import render_report
from syncward.jobs import JobSpec, JobState, job_key
from syncward.report import Report, build_report, dumps
from syncward.retry import RetryPolicy
from syncward.runtime import Runtime
from syncward.store import open_store
from syncward.testing.archive import ArchiveConfig, ArchiveServer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from syncward.adapters.http import FetcherStatistics
    from syncward.messages import ReconcileReport
    from syncward.testing.archive import ArchiveFile

__all__ = ["DEFAULT_FILES", "DemoResult", "demo"]

DEFAULT_FILES = 100


@dataclass(frozen=True, slots=True)
class DemoConfig:
    files: int
    out: Path
    db: str
    seed: int
    fault_rate: float
    concurrency: int
    progress: bool


@dataclass(frozen=True, slots=True)
class SkippedJob:
    """A job the store holds as skipped (a duplicate), and why."""

    key: str
    identity: dict[str, str | int]
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "identity": self.identity, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The store's report and what the demo saw: the verdict, the server, the fetcher.

    ``problems`` lists every difference from what a correct client ends with (see
    ``ArchiveServer.expected``); the demo is right exactly when it is empty.
    """

    report: Report
    problems: tuple[str, ...]
    out: Path
    db: str
    elapsed: float
    files: int
    skipped: tuple[SkippedJob, ...]
    expected: dict[str, Any]
    reconcile: ReconcileReport | None
    requests: int
    faults: dict[str, int]
    fetcher: FetcherStatistics

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """What ``demo --json`` prints: the report's object plus a ``"demo"`` section."""
        f = self.fetcher
        return {**self.report.as_dict(), "demo": {
            "ok": self.ok, "problems": list(self.problems), "out": str(self.out),
            "db": self.db, "elapsed": self.elapsed, "files": self.files,
            "skipped": [s.as_dict() for s in self.skipped], "expected": self.expected,
            "reconcile": self.reconcile.as_dict() if self.reconcile is not None else None,
            "server": {"requests": self.requests, "faults": self.faults},
            "fetcher": {"bytes": f.bytes_received, "resumed": f.resumed,
                        "restarted": f.restarted, "gets": f.gets}}}


async def _run(cfg: DemoConfig, console: Console | None) -> DemoResult:
    config = ArchiveConfig(files=cfg.files, seed=cfg.seed, fault_rate=cfg.fault_rate,
                           retry_after=1.0, slow_seconds=0.5)
    dest = cfg.out / "lightcurves"
    started = time.monotonic()
    async with ArchiveServer(config) as archive, HttpFetcher() as fetcher:
        reconcile = await _download_all(cfg, console, archive, fetcher, dest)
        stats = fetcher.statistics()
        faults = Counter(str(r.fault) for r in archive.requests if r.fault is not None)
        expected = archive.expected()
        checksums = {f.name: archive.sha256(f.name) for f in archive.catalogue
                     if not f.missing}
        requests = len(archive.requests)
    report, states, skipped = await _read_store(cfg.db, archive.catalogue)
    verdict = await anyio.to_thread.run_sync(_verdict, expected, checksums, states, skipped,
                                             report, dest)
    return DemoResult(
        report=report, problems=tuple(verdict), out=dest, db=cfg.db,
        elapsed=round(time.monotonic() - started, 2), files=len(states), skipped=skipped,
        expected=expected, reconcile=reconcile, requests=requests,
        faults=dict(sorted(faults.items())), fetcher=stats)


async def _download_all(cfg: DemoConfig, console: Console | None, archive: ArchiveServer,
                        fetcher: HttpFetcher, dest: Path) -> ReconcileReport | None:
    """Every catalogue file through a runtime; returns its start-up reconciliation."""
    runtime = Runtime(fetcher.handler(dest), store=cfg.db, concurrency=cfg.concurrency,
                      max_attempts=6, lease_seconds=30.0, job_timeout=60.0, grace=5.0,
                      retry=RetryPolicy(base=0.25, cap=2.0),
                      reconcile_hooks=[part_cleanup(dest)])
    async with runtime as rt:
        await rt.submit(JobSpec({"file": f.name}, {"url": archive.file_url(f.name)})
                        for f in archive.catalogue)
        async with anyio.create_task_group() as tg:
            if console is not None:
                tg.start_soon(show_progress, rt, cfg.db, Counters(submitted_all=True), console)
            await rt.join()
            tg.cancel_scope.cancel()
        return rt.reconcile_report


async def _read_store(db: str, catalogue: Sequence[ArchiveFile]) -> tuple[
        Report, dict[str, tuple[str, str | None]], tuple[SkippedJob, ...]]:
    """The report, each catalogue file's (state, error), and the skipped jobs."""
    store = await open_store(db, readonly=True)
    try:
        report = await build_report(store)
        states: dict[str, tuple[str, str | None]] = {}
        for f in catalogue:
            row = await store.get_job(job_key({"file": f.name}))
            states[f.name] = (row.state.value, row.last_error) if row else ("absent", None)
        skipped = tuple(SkippedJob(key=j.key, identity=j.identity, reason=j.last_error)
                        for j in await store.jobs_in_state(JobState.SKIPPED, limit=1000))
    finally:
        await store.aclose()
    return report, states, skipped


def _verdict(expected: dict[str, Any], checksums: dict[str, str],
             states: dict[str, tuple[str, str | None]], skipped: tuple[SkippedJob, ...],
             report: Report, dest: Path) -> list[str]:
    """Everything that differs from what a correct client ends with (empty: all right)."""
    problems: list[str] = []
    for name in expected["missing"]:
        state, error = states[name]
        if state != "failed" or "404" not in (error or ""):
            problems.append(f"{name}: expected failed with a 404, got {state}: {error}")
    for pair in expected["duplicates"]:
        got = {states[name][0]: name for name in pair}
        if sorted(got) != ["skipped", "succeeded"]:
            problems.append(f"{' / '.join(pair)}: expected one succeeded and one skipped "
                            f"(same bytes), got {[states[n][0] for n in pair]}")
        elif job_key({"file": got["succeeded"]}) not in (states[got["skipped"]][1] or ""):
            problems.append(f"{got['skipped']}: skipped without naming the job of "
                            f"{got['succeeded']}")
    for name in expected["downloaded"]:
        if states[name][0] != "succeeded":
            problems.append(f"{name}: expected succeeded, got {states[name][0]}: "
                            f"{states[name][1]}")
    for name, digest in checksums.items():
        if states[name][0] == "succeeded" and _sha256(dest / name) != digest:
            problems.append(f"{name}: the SHA-256 on disk differs from the archive's")
    if len(skipped) != len(expected["duplicates"]):
        problems.append(f"expected {len(expected['duplicates'])} skipped duplicates, "
                        f"the store has {len(skipped)}")
    if report.stats_drift:
        problems.append(f"stats drift {report.stats_drift} (should be 0)")
    return problems


def _sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _render(console: Console, result: DemoResult) -> None:
    render_report(console, result.report, title=f"syncward demo: {result.files} light curves "
                  f"from the local archive in {result.elapsed:.1f}s", source=None)
    if result.skipped:
        console.print(f"[bold]Skipped[/] ({len(result.skipped)}):", highlight=False)
        for s in result.skipped:
            console.print(f"  {s.identity.get('file', s.key[:16])}: {s.reason}",
                          highlight=False, markup=False)
    faults = ", ".join(f"{k}: {n}" for k, n in sorted(result.faults.items()))
    f = result.fetcher
    console.print(f"Server: {result.requests} requests, faults injected: "
                  f"{faults or 'none'}", highlight=False)
    console.print(f"Fetcher: {f.bytes_received / 1e6:.1f} MB received, {f.resumed} "
                  f"transfer(s) resumed from a partial file, {f.restarted} restarted",
                  highlight=False)
    console.print(f"Files in {result.out}, store {result.db}", highlight=False)
    if result.ok:
        console.print("[bold green]OK[/]: every file downloaded and verified, except the "
                      "permanent 404s (failed) and the duplicates (skipped).")
    else:
        console.print("[bold red]NOT OK[/]:")
        for p in result.problems:
            console.print(f"  {p}", markup=False, highlight=False)


@click.command(short_help="Download a local archive with faults on; watch it recover.")
@click.option("--files", type=click.IntRange(min=1), default=DEFAULT_FILES, show_default=True,
              help="Files in the archive (a few KB to a few MB each).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where the files go (default: a new temporary directory).")
@click.option("--db", default=None, metavar="URL",
              help="The store (default: sqlite:///OUT/demo.db).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the archive: names, sizes, bytes and faults.")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Probability of a transient fault per request (at most 2 per file).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON object: the report plus a \"demo\" section.")
@guard
def demo(files: int, out: str | None, db: str | None, seed: int, fault_rate: float,
         concurrency: int, no_progress: bool, as_json: bool) -> None:
    """Start a local archive of Kepler light curves with faults on (500s, 429s, slow,
    reset and truncated bodies, permanent 404s, duplicate content) and download it.

    Ends with the report: every file downloaded and verified against the archive's
    SHA-256, except the 404s (failed, with their errors) and the duplicates (skipped,
    pointing at the job with the same bytes). Exit 0 when the outcome is exactly that.
    """
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="syncward-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    db_url = db if db is not None else f"sqlite:///{out_dir.resolve() / 'demo.db'}"
    check_db_dir(db_url)
    cfg = DemoConfig(files=files, out=out_dir.resolve(), db=db_url, seed=seed,
                     fault_rate=fault_rate, concurrency=concurrency, progress=not no_progress)
    out_console = stdout()
    console = out_console if cfg.progress and out_console.is_terminal and not as_json else None
    result = run_async(_run, cfg, console)
    if as_json:
        click.echo(dumps(result.as_dict()))
    else:
        _render(out_console, result)
    sys.exit(int(ExitCode.OK if result.ok else ExitCode.FAILED))
