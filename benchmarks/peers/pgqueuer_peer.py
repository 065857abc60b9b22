"""PgQueuer: asyncio jobs in a PostgreSQL table (workers/pgqueuer_tasks.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._harness import Peer


def pending(pg: Any) -> int:
    # a job's row stays in the queue table (queued, then picked) until its outcome is logged:
    # then it is deleted and a row written to pgqueuer_log
    return int(pg.fetchval("SELECT count(*) FROM pgqueuer"))


PEER = Peer(
    name="pgqueuer",
    db="bench_pgqueuer",
    requirements=("pgqueuer==1.6.0", "asyncpg", "uvloop"),
    dists=("pgqueuer", "asyncpg", "uvloop"),
    module="pgqueuer_tasks",
    worker_argv=lambda bin_dir: [str(bin_dir / "python"), "pgqueuer_tasks.py", "worker"],
    pending=pending,
    tuning=("as PgQueuer's own benchmark tool: 5 PgQueuer instances in one process, each on "
            "its own asyncpg connection, batch size 10, continuous mode; "
            "max_concurrent_tasks=20 each (100 in flight; the tool leaves it unlimited), "
            "durability 'durable' (default), heartbeat_timeout 30 s (default), uvloop"),
    crash_guarantee=(
        "at-least-once, delayed: a picked job's row stays in the queue table until its "
        "outcome is logged; while it runs, a heartbeat is written every heartbeat_timeout/2; "
        "once a killed worker's jobs have a heartbeat older than heartbeat_timeout (30 s by "
        "default), any live worker's dequeue picks them again (attempts counted). Outcomes "
        "are written through a buffer flushed every batch or 0.1 s, so a job that finished "
        "just before the kill may run again. No de-duplication of effects."
    ),
)
