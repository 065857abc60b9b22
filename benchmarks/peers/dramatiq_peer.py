"""dramatiq with its Redis broker and AsyncIO middleware (workers/dramatiq_tasks.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._harness import Peer


def pending(r: Any) -> int:
    # a message's body stays in the queue's hash until it is acked (or dead-lettered)
    return int(r.hlen("dramatiq:default.msgs"))


PEER = Peer(
    name="dramatiq",
    db=14,
    requirements=("dramatiq[redis]==2.2.1", "hiredis", "uvloop"),
    dists=("dramatiq", "redis", "hiredis", "uvloop"),
    module="dramatiq_tasks",
    worker_argv=lambda bin_dir: [str(bin_dir / "dramatiq"), "dramatiq_tasks",
                                 "--processes", "1", "--threads", "100"],
    pending=pending,
    tuning=("Redis broker, AsyncIO middleware (async actors on one event loop thread), "
            "--processes 1 --threads 100 (100 in flight), default middleware, uvloop"),
    crash_guarantee=(
        "at-least-once, delayed: the Redis broker acks after processing; a killed worker's "
        "fetched-but-unacked messages (the running ones and its prefetch: 2 per thread, "
        "200 here) stay in its ack set until a live process's broker call on that queue "
        "happens to run maintenance (1 call in 1000 by default) after the dead worker's "
        "heartbeat is 60 s old, which puts them back on the queue to run again. No "
        "de-duplication of effects."
    ),
)
