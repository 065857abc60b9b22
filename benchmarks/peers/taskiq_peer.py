"""taskiq with taskiq-redis's stream broker (workers/taskiq_tasks.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.peers._harness import Peer


def pending(r: Any) -> int:
    # entries not yet delivered to the group (lag) + delivered but not acknowledged
    for group in r.xinfo_groups("taskiq"):
        if group["name"] in (b"taskiq", "taskiq"):
            lag = group.get("lag")
            if lag is None:
                lag = int(r.xlen("taskiq")) - int(group.get("entries-read") or 0)
            return int(lag) + int(group["pending"])
    return -1


PEER = Peer(
    name="taskiq",
    db=13,
    requirements=("taskiq==0.13.0", "taskiq-redis==1.2.4", "hiredis", "uvloop"),
    dists=("taskiq", "taskiq-redis", "redis", "hiredis", "uvloop"),
    module="taskiq_tasks",
    worker_argv=lambda bin_dir: [str(bin_dir / "taskiq"), "worker", "taskiq_tasks:broker",
                                 "--workers", "1", "--max-async-tasks", "100",
                                 "--log-level", "WARNING"],
    pending=pending,
    tuning=("RedisStreamBroker (acks), --workers 1 (default 2), --max-async-tasks 100, "
            "ack_type when_saved (default), no result backend, --log-level WARNING, uvloop"),
    crash_guarantee=(
        "at-least-once, delayed, with RedisStreamBroker: the CLI's default ack is "
        "'when_saved' (after the result is saved), so a killed task stays pending in the "
        "stream's consumer group; a worker reclaims it with XAUTOCLAIM once it has been idle "
        "for idle_timeout (10 min by default), and in taskiq-redis 1.2.4 only after one of "
        "its reads returns new messages. With --ack-type when_received, or ListQueueBroker/"
        "PubSubBroker (no acks), a killed task is lost. No de-duplication of effects."
    ),
)
