"""Marks a worker process leaves for the harness, shared by every peer's task module.

Runs inside each peer's own virtualenv, so it imports nothing beyond the standard library
(and never syncward). The harness passes, through the environment:

  PEER_BENCH_DIR   a directory for the marker files
  PEER_BENCH_JOBS  how many jobs were enqueued
  PEER_BENCH_REDIS the peer's Redis database (Redis peers)
  PEER_BENCH_PG    the peer's PostgreSQL database, postgresql://user@host:port/db (PostgreSQL peers)

``job_ran()`` is called once per handler call; it keeps an in-process count (no Redis
round trip, so the no-op handler stays a no-op) and writes two files: ``first`` (wall
clock of the first call) and ``ran`` (wall clock and count once the count reaches the
number of jobs). Completion itself is read from each library's own bookkeeping by the
harness; ``ran`` proves that every job's handler did run in this process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_DIR = Path(os.environ.get("PEER_BENCH_DIR", "."))
_JOBS = int(os.environ.get("PEER_BENCH_JOBS", "0"))
_count = 0


def job_ran() -> None:
    global _count
    _count += 1
    if _count == 1:
        _write("first", f"{time.time()!r}")
    if _count == _JOBS:
        _write("ran", f"{time.time()!r} {_count}")


def _write(name: str, text: str) -> None:
    tmp = _DIR / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(_DIR / name)


def use_uvloop() -> None:
    """Make new asyncio loops uvloop ones, as every peer (and syncward) runs here."""
    try:
        import uvloop
    except ImportError:
        return
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def redis_url() -> str:
    return os.environ.get("PEER_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def pg_dsn() -> str:
    return os.environ.get("PEER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
