"""procrastinate: asyncio jobs in a PostgreSQL table (workers/procrastinate_tasks.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._harness import Peer


def pending(pg: Any) -> int:
    # a job is 'todo' until a worker fetches it, 'doing' until its outcome is written
    return int(pg.fetchval("SELECT count(*) FROM procrastinate_jobs"
                           " WHERE status IN ('todo', 'doing')"))


PEER = Peer(
    name="procrastinate",
    db="bench_procrastinate",
    requirements=("procrastinate==3.10.0", "psycopg[binary,pool]", "uvloop"),
    dists=("procrastinate", "psycopg", "psycopg-pool", "uvloop"),
    module="procrastinate_tasks",
    worker_argv=lambda bin_dir: [str(bin_dir / "procrastinate"), "--app=procrastinate_tasks.app",
                                 "worker", "--concurrency=100"],
    pending=pending,
    tuning=("PsycopgConnector (default pool: 4 connections), worker --concurrency=100 "
            "(default 1), LISTEN/NOTIFY on, jobs kept after they finish (defaults), uvloop"),
    crash_guarantee=(
        "at-most-once by default: a job a killed worker was running stays 'doing'; the "
        "dead worker's row is pruned once its heartbeat is 30 s old (stalled_worker_timeout), "
        "but nothing puts its jobs back: the docs' recipe is a periodic task of the "
        "application's own that finds them (get_stalled_jobs) and retries them "
        "(retry_job), which makes it at-least-once, delayed. No de-duplication of effects."
    ),
)
