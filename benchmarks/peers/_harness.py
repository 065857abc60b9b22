"""Running one peer: its virtualenv, the enqueue phase, one timed worker process.

A run (``measure``) is:

1. FLUSHDB on the peer's own Redis database (nothing else is touched); for a PostgreSQL
   peer, its own database dropped and created again, then the library's schema installed
   with its own tool (``<module>.py setup``, not timed);
2. enqueue every job with the peer's own client, in its own virtualenv (timed apart);
3. check that the library's bookkeeping counts them all as pending;
4. start ONE worker process (``t0`` just before it is spawned) and poll, every 5 ms, until
   the library's own bookkeeping says nothing is pending any more (each peer's
   ``pending`` reads it: a queue, an incomplete set, a stream group's lag and pending
   entries, a message hash) and the worker has written its ``ran`` marker (every job's
   handler ran); that instant is ``t_end``;
5. stop the worker (SIGTERM to its process group, SIGKILL after 10 s), always.

The figure is ``jobs / (t_end - t0)``: worker process start, imports included, to last job
done. ``startup_s`` is how much of that went before the first handler call. Because other
processes may share the cores, each run also reports CPU time, which contention inflates
far less than wall time: ``cpu_s`` of the worker's process group (from /proc, at
``t_end``) and, for the peers, ``redis_cpu_s``, what redis-server spent meanwhile (the queue
work they hand to it; another client of that server would be counted too); for a
PostgreSQL peer ``pg_cpu_s``, what every PostgreSQL server process spent meanwhile (the
same caveat: other sessions' queries on the server count too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers"
VENVS = HERE / ".venvs"
REPO = HERE.parent.parent
POLL = 0.005
SYNCWARD_PG_DB = "bench_syncward"  # syncward's runs on PostgreSQL: a schema of their own in it


class RunFailed(Exception):
    """A peer could not be installed, enqueued or run; the message says why."""


@dataclass(frozen=True)
class Peer:
    name: str
    # its own Redis database number (flushed before each run), or for a peer on PostgreSQL
    # the name of its own database (dropped and created before each run)
    db: int | str
    requirements: tuple[str, ...]
    dists: tuple[str, ...]  # distributions whose installed versions are reported
    module: str  # workers/<module>.py: tasks, settings, "enqueue" (and "setup") entry points
    worker_argv: Callable[[Path], list[str]]  # given the venv's bin dir
    pending: Callable[[Any], int]  # given a redis.Redis or a PgClient on the peer's database
    tuning: str
    crash_guarantee: str

    @property
    def backend(self) -> str:
        return "redis" if isinstance(self.db, int) else "postgresql"

    @property
    def venv(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def log(msg: str) -> None:
    sys.stderr.write(f"[peers] {msg}\n")
    sys.stderr.flush()


def install(peer: Peer, *, skip: bool) -> None:
    """Create the peer's virtualenv and install its requirements into it (idempotent)."""
    if skip:
        if not peer.python.exists():
            raise RunFailed(f"--skip-install, but {peer.venv} does not exist")
        return
    VENVS.mkdir(exist_ok=True)
    (VENVS / ".gitignore").write_text("*\n")
    if not peer.python.exists():
        log(f"{peer.name}: creating {peer.venv}")
        _run([sys.executable, "-m", "venv", str(peer.venv)], timeout=300)
    log(f"{peer.name}: pip install {' '.join(peer.requirements)}")
    _run([str(peer.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *peer.requirements], timeout=900)


def versions(peer: Peer) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))")
    out = _run([str(peer.python), "-c", code, *peer.dists], timeout=60)
    return dict(json.loads(out))


def _run(argv: list[str], *, timeout: float, **kwargs: Any) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise RunFailed(f"{' '.join(argv[:4])}... timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RunFailed(f"{' '.join(argv[:4])}... exited {proc.returncode}: " + " | ".join(tail))
    return proc.stdout


def redis_client(base_url: str, db: int) -> Any:
    import redis  # syncward[redis]; only the harness side uses it

    return redis.Redis.from_url(f"{base_url.rstrip('/')}/{db}")


def measure(peer: Peer, workload: str, jobs: int, *, redis_url: str, pg_url: str,
            timeout: float) -> dict[str, Any]:
    """One timed run of ``workload`` on ``peer``; see the module docstring."""
    if peer.backend == "postgresql":
        return _measure_pg(peer, workload, jobs, pg_url=pg_url, timeout=timeout)
    r = redis_client(redis_url, int(peer.db))
    r.flushdb()
    with tempfile.TemporaryDirectory(prefix=f"peers-{peer.name}-") as tmp:
        marks = Path(tmp)
        env = {**os.environ, "PEER_BENCH_DIR": str(marks), "PEER_BENCH_JOBS": str(jobs),
               "PEER_BENCH_REDIS": f"{redis_url.rstrip('/')}/{peer.db}",
               "PYTHONPATH": str(WORKERS), "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        _run([str(peer.python), str(WORKERS / f"{peer.module}.py"), "enqueue", workload,
              str(jobs)], timeout=timeout, cwd=WORKERS, env=env)
        enqueue_s = time.perf_counter() - start
        backlog = peer.pending(r)
        if backlog != jobs:
            raise RunFailed(f"after enqueueing {jobs}, the library counts {backlog} pending")
        argv = peer.worker_argv(peer.python.parent)
        result = _timed_worker(argv, env, marks, lambda: peer.pending(r) == 0, timeout,
                               cwd=WORKERS, redis_pid=int(r.info("server")["process_id"]))
    r.flushdb()
    r.close()
    return {**result, "enqueue_s": round(enqueue_s, 2)}


def _measure_pg(peer: Peer, workload: str, jobs: int, *, pg_url: str,
                timeout: float) -> dict[str, Any]:
    """`measure` for a peer on PostgreSQL: its own database, made afresh for the run."""
    from benchmarks._pg import PgClient, database_url, recreate_database  # asyncpg: postgres extra

    database = str(peer.db)
    anyio.run(partial(recreate_database, pg_url, database, drop=True))
    with tempfile.TemporaryDirectory(prefix=f"peers-{peer.name}-") as tmp:
        marks = Path(tmp)
        env = {**os.environ, "PEER_BENCH_DIR": str(marks), "PEER_BENCH_JOBS": str(jobs),
               "PEER_BENCH_PG": database_url(pg_url, database),
               "PYTHONPATH": str(WORKERS), "PYTHONUNBUFFERED": "1"}
        script = str(WORKERS / f"{peer.module}.py")
        _run([str(peer.python), script, "setup"], timeout=timeout, cwd=WORKERS, env=env)
        start = time.perf_counter()
        _run([str(peer.python), script, "enqueue", workload, str(jobs)], timeout=timeout,
             cwd=WORKERS, env=env)
        enqueue_s = time.perf_counter() - start
        client = PgClient(database_url(pg_url, database))
        try:
            backlog = peer.pending(client)
            if backlog != jobs:
                raise RunFailed(f"after enqueueing {jobs}, the library counts {backlog} pending")
            result = _timed_worker(peer.worker_argv(peer.python.parent), env, marks,
                                   lambda: peer.pending(client) == 0, timeout, cwd=WORKERS,
                                   pg=True)
        finally:
            client.close()
    anyio.run(partial(recreate_database, pg_url, database, drop=True, create=False))
    return {**result, "enqueue_s": round(enqueue_s, 2)}


def measure_syncward(workload: str, jobs: int, *, timeout: float,
                     pg_url: str | None = None) -> dict[str, Any]:
    """The same run for syncward: pre-submitted store, one worker process, all done.

    On SQLite the interval ends when the worker's ``join()`` returns (it is the only
    writer, so its counts are exact); on PostgreSQL, when the store's running totals,
    read on a connection of the harness, count every job succeeded (a runtime's own
    ``join()`` adopts other writers' totals only every 2 s, which would add up to 2 s).
    """
    from benchmarks._pg import PgClient, database_url, recreate_database
    from benchmarks.peers._syncward import presubmit, schema_of, succeeded

    with tempfile.TemporaryDirectory(prefix="peers-syncward-") as tmp:
        marks = Path(tmp)
        client = None
        if pg_url is None:
            url = f"sqlite:///{marks / 'jobs.db'}"
        else:
            anyio.run(partial(recreate_database, pg_url, SYNCWARD_PG_DB, drop=False))
            url = database_url(pg_url, SYNCWARD_PG_DB, schema=f"peers_{os.getpid()}")
            client = PgClient(database_url(pg_url, SYNCWARD_PG_DB))
            client.fetchval(f'DROP SCHEMA IF EXISTS "{schema_of(url)}" CASCADE')  # a fresh one
        try:
            start = time.perf_counter()
            presubmit(url, jobs)
            enqueue_s = time.perf_counter() - start
            env = {**os.environ, "PEER_BENCH_DIR": str(marks), "PEER_BENCH_JOBS": str(jobs)}
            argv = [sys.executable, "-m", "benchmarks.peers._syncward", url, workload,
                    str(jobs), str(marks)]
            if client is None:
                drained: Callable[[], bool] = (marks / "drained").exists
            else:
                pg_client = client
                drained = lambda: succeeded(pg_client, schema_of(url)) == jobs  # noqa: E731
            result = _timed_worker(argv, env, marks, drained, timeout, cwd=REPO,
                                   pg=pg_url is not None)
        finally:
            if client is not None:
                client.fetchval(f'DROP SCHEMA IF EXISTS "{schema_of(url)}" CASCADE')
                client.close()
    return {**result, "enqueue_s": round(enqueue_s, 2)}


def _timed_worker(argv: list[str], env: dict[str, str], marks: Path,
                  drained: Callable[[], bool], timeout: float, *, cwd: Path,
                  redis_pid: int | None = None, pg: bool = False) -> dict[str, Any]:
    from benchmarks._pg import pg_cpu, pg_cpu_delta

    ran = marks / "ran"
    redis_cpu = _cpu_seconds(pid=redis_pid) if redis_pid else 0.0
    pg_before = pg_cpu() if pg else {}
    pg_spent = 0.0
    with (marks / "worker.log").open("wb") as out:
        t0 = time.time()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if ran.exists() and drained():
                    t_end = time.time()
                    cpu = _cpu_seconds(pgid=proc.pid)
                    if redis_pid:
                        redis_cpu = _cpu_seconds(pid=redis_pid) - redis_cpu
                    if pg:
                        pg_spent = pg_cpu_delta(pg_before)
                    break
                if proc.poll() is not None:
                    raise RunFailed(f"worker exited {proc.returncode} before the jobs were done: "
                                    + _tail(marks / "worker.log"))
                if time.monotonic() > deadline:
                    raise RunFailed(f"not done after {timeout:.0f} s: "
                                    + _tail(marks / "worker.log"))
                time.sleep(POLL)
        finally:
            _stop(proc)
    first = float((marks / "first").read_text())
    seconds = t_end - t0
    result = {"value": int(ran.read_text().split()[1]) / seconds, "seconds": round(seconds, 3),
              "startup_s": round(first - t0, 3), "cpu_s": round(cpu, 2)}
    if redis_pid:
        result["redis_cpu_s"] = round(redis_cpu, 2)
    if pg:
        result["pg_cpu_s"] = round(pg_spent, 2)
    return result


def _cpu_seconds(*, pid: int | None = None, pgid: int | None = None) -> float:
    """User + system CPU of process ``pid``, or of every live process in group ``pgid``."""
    ticks = 0
    paths = [Path(f"/proc/{pid}/stat")] if pid else Path("/proc").glob("[0-9]*/stat")
    for path in paths:
        try:
            stat = path.read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state is fields[0]: field 3 of stat(5)
        if pgid is None or int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group (it leads its own session), SIGKILL after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure no child of it (taskiq, dramatiq fork) lingers
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
