"""arq: asyncio jobs in a Redis sorted set (workers/arq_tasks.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._harness import Peer


def pending(r: Any) -> int:
    # arq keeps a job in its queue until it has succeeded or failed ("pessimistic execution")
    return int(r.zcard("arq:queue"))


PEER = Peer(
    name="arq",
    db=11,
    requirements=("arq==0.28.0", "hiredis", "uvloop"),
    dists=("arq", "redis", "hiredis", "uvloop"),
    module="arq_tasks",
    worker_argv=lambda bin_dir: [str(bin_dir / "python"), "arq_tasks.py", "worker"],
    pending=pending,
    tuning="max_jobs=100, poll_delay=0.01 (default 0.5), keep_result default 3600 s, uvloop",
    crash_guarantee=(
        "at-least-once, delayed: a job stays in the queue until it has succeeded or failed "
        "('pessimistic execution', arq docs: 'jobs may be called more than once'); after a "
        "SIGKILL its in-progress key blocks it until that key expires (job_timeout + 10 s, "
        "310 s by default), then a running worker runs it again; each try counts against "
        "max_tries (default 5). Effects are not de-duplicated."
    ),
)
