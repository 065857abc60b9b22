"""``syncward demo``: download a local archive with faults on, and tell the truth about it.

Owns: one event loop holding the archive server (``examples/archive_server.py``, started
in-process on 127.0.0.1), an `HttpFetcher` and a `Runtime` whose handler downloads each
catalogue file into ``--out``, with the progress bar of ``syncward run``.

The verdict compares the store with what the archive says a correct client ends with:
every file downloaded (and its SHA-256 on disk equal to the archive's) except the
permanent 404s, failed with their errors, and the duplicates, skipped and pointing at the
job holding the same bytes; no entry missing, no stats drift. Exit 0 exactly then, else 1.
Running it again with the same ``--db`` and ``--out`` resumes, and redoes nothing.

Design note: the archive server lives in ``examples/`` (a runnable program of its own),
which a wheel does not ship; the demo loads it from the source checkout next to the
package and says so when it cannot be found.
XX: moving the server into the package (e.g. ``syncward.testing.archive``) would make
the demo work from an installed wheel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click
from rich.console import Console

from syncward._cli_common import ExitCode, check_db_dir, guard, run_async
from syncward._cli_progress import show_progress
from syncward._cli_run import Counters
from syncward._cli_views import render_report
from syncward.adapters.http import HttpFetcher, part_cleanup
from syncward.errors import ConfigError
from syncward.jobs import JobSpec, JobState, job_key
from syncward.report import build_report, dumps
from syncward.retry import RetryPolicy
from syncward.runtime import Runtime
from syncward.store import open_store

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["DEFAULT_FILES", "demo", "load_archive_module"]

DEFAULT_FILES = 100
_ARCHIVE = Path(__file__).resolve().parent.parent / "examples" / "archive_server.py"
_MODULE = "syncward_archive_server"


def load_archive_module() -> ModuleType:
    """``examples/archive_server.py`` as a module (loaded once per process).

    Raises:
        ConfigError: the file is not there (syncward installed without its sources).
    """
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    if not _ARCHIVE.is_file():
        raise ConfigError(f"the demo needs {_ARCHIVE} (from syncward's source checkout); "
                          "install syncward from its repository with pip install -e .")
    spec = importlib.util.spec_from_file_location(_MODULE, _ARCHIVE)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{_ARCHIVE} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return module


@dataclass(frozen=True, slots=True)
class DemoConfig:
    files: int
    out: Path
    db: str
    seed: int
    fault_rate: float
    concurrency: int
    progress: bool


async def _run(cfg: DemoConfig, console: Console | None) -> dict[str, Any]:
    archive_mod = load_archive_module()
    config = archive_mod.ArchiveConfig(files=cfg.files, seed=cfg.seed, fault_rate=cfg.fault_rate,
                                       retry_after=1.0, slow_seconds=0.5)
    dest = cfg.out / "lightcurves"
    started = time.monotonic()
    async with archive_mod.ArchiveServer(config) as archive, HttpFetcher() as fetcher:
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
    return {**report, "demo": {
        "ok": not verdict, "problems": verdict, "out": str(dest), "db": cfg.db,
        "elapsed": round(time.monotonic() - started, 2), "files": len(states),
        "skipped": skipped, "expected": expected, "reconcile": reconcile,
        "server": {"requests": requests, "faults": dict(sorted(faults.items()))},
        "fetcher": {"bytes": stats.bytes_received, "resumed": stats.resumed,
                    "restarted": stats.restarted, "gets": stats.gets}}}


async def _download_all(cfg: DemoConfig, console: Console | None, archive: Any,
                        fetcher: HttpFetcher, dest: Path) -> dict[str, Any] | None:
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
        return rt.reconcile_report.as_dict() if rt.reconcile_report else None


async def _read_store(db: str, catalogue: list[Any]) -> tuple[
        dict[str, Any], dict[str, tuple[str, str | None]], list[dict[str, Any]]]:
    """The report, each catalogue file's (state, error), and the skipped jobs."""
    store = await open_store(db, readonly=True)
    try:
        report = await build_report(store)
        states: dict[str, tuple[str, str | None]] = {}
        for f in catalogue:
            row = await store.get_job(job_key({"file": f.name}))
            states[f.name] = (row.state.value, row.last_error) if row else ("absent", None)
        skipped = [{"key": j.key, "identity": j.identity, "reason": j.last_error}
                   for j in await store.jobs_in_state(JobState.SKIPPED, limit=1000)]
    finally:
        await store.aclose()
    return report, states, skipped


def _verdict(expected: dict[str, Any], checksums: dict[str, str],
             states: dict[str, tuple[str, str | None]], skipped: list[dict[str, Any]],
             report: dict[str, Any], dest: Path) -> list[str]:
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
    if report["stats_drift"]:
        problems.append(f"stats drift {report['stats_drift']} (should be 0)")
    return problems


def _sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _render(console: Console, result: dict[str, Any]) -> None:
    d = result["demo"]
    render_report(console, result, title=f"syncward demo: {d['files']} light curves from the "
                  f"local archive in {d['elapsed']:.1f}s", source=None)
    if d["skipped"]:
        console.print(f"[bold]Skipped[/] ({len(d['skipped'])}):", highlight=False)
        for s in d["skipped"]:
            console.print(f"  {s['identity'].get('file', s['key'][:16])}: {s['reason']}",
                          highlight=False, markup=False)
    faults = ", ".join(f"{k}: {n}" for k, n in sorted(d["server"]["faults"].items()))
    f = d["fetcher"]
    console.print(f"Server: {d['server']['requests']} requests, faults injected: "
                  f"{faults or 'none'}", highlight=False)
    console.print(f"Fetcher: {f['bytes'] / 1e6:.1f} MB received, {f['resumed']} transfer(s) "
                  f"resumed from a partial file, {f['restarted']} restarted", highlight=False)
    console.print(f"Files in {d['out']}, store {d['db']}", highlight=False)
    if d["ok"]:
        console.print("[bold green]OK[/]: every file downloaded and verified, except the "
                      "permanent 404s (failed) and the duplicates (skipped).")
    else:
        console.print("[bold red]NOT OK[/]:")
        for p in d["problems"]:
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
    load_archive_module()
    cfg = DemoConfig(files=files, out=out_dir.resolve(), db=db_url, seed=seed,
                     fault_rate=fault_rate, concurrency=concurrency, progress=not no_progress)
    stdout = Console(highlight=False, soft_wrap=True)
    console = stdout if cfg.progress and stdout.is_terminal and not as_json else None
    result = run_async(_run, cfg, console)
    if as_json:
        click.echo(dumps(result))
    else:
        _render(stdout, result)
    sys.exit(int(ExitCode.OK if result["demo"]["ok"] else ExitCode.FAILED))
