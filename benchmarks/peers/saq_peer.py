"""SAQ: asyncio jobs in Redis lists (workers/saq_tasks.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._harness import Peer


def pending(r: Any) -> int:
    # a job leaves "incomplete" when it finishes (complete, failed or aborted)
    return int(r.zcard("saq:default:incomplete"))


PEER = Peer(
    name="saq",
    db=12,
    requirements=("saq[redis,hiredis]==0.26.4", "typing_extensions", "uvloop"),
    dists=("saq", "redis", "hiredis", "uvloop"),
    module="saq_tasks",
    worker_argv=lambda bin_dir: [str(bin_dir / "saq"), "saq_tasks.settings"],
    pending=pending,
    tuning="concurrency=100 (default 10), one process (--workers 1), uvloop",
    crash_guarantee=(
        "at-most-once by default: a job killed mid-run stays 'active' until a live worker's "
        "sweep (every 60 s) finds it stuck (past its timeout, 10 s by default, or a missed "
        "heartbeat if one is set); it is then aborted, and re-queued only if retryable "
        "(retries > attempts; the default retries=1 means it is NOT run again: it ends "
        "'aborted'). With retries > 1: at-least-once. No de-duplication of effects."
    ),
)
