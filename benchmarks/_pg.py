"""PostgreSQL and /proc helpers shared by `benchmarks.postgres` and `benchmarks.peers`.

Nothing here knows syncward's schema: databases are made and dropped, server settings read,
and CPU time taken from /proc (of given processes, or of the PostgreSQL server's). asyncpg
(syncward's ``postgres`` extra) is imported only by the functions that talk to a server, so
the Redis peers' harness can use the /proc helpers without it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["SETTINGS", "PgClient", "cpu_seconds", "database_url", "load", "pg_cpu", "pg_cpu_delta",
           "recreate_database", "server_settings"]

#: What each result line reports about the server (``SHOW`` names).
SETTINGS = ("synchronous_commit", "fsync", "autovacuum", "shared_buffers", "server_version")


def database_url(server: str, database: str, **query: str) -> str:
    """``server`` (``postgresql://user@host:port``) with ``database`` and a query string."""
    parts = urlsplit(server)
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return urlunsplit(parts._replace(path=f"/{database}", query=q))


async def server_settings(server: str, database: str = "postgres") -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(database_url(server, database))
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in SETTINGS}
    finally:
        await conn.close()


async def recreate_database(server: str, name: str, *, drop: bool, create: bool = True) -> None:
    """Create database ``name`` (dropping it first if ``drop``, with its sessions; only
    dropping it if not ``create``)."""
    import asyncpg

    conn = await asyncpg.connect(database_url(server, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and drop:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists and create:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class PgClient:
    """A blocking asyncpg connection for synchronous code (the peers' harness polls)."""

    def __init__(self, url: str) -> None:
        import asyncpg

        self._loop = asyncio.new_event_loop()
        self._conn: Any = self._loop.run_until_complete(asyncpg.connect(url))

    def fetchval(self, sql: str, *args: Any) -> Any:
        return self._loop.run_until_complete(self._conn.fetchval(sql, *args))

    def backend_pid(self) -> int:
        return int(self._conn.get_server_pid())

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._conn.close())
        finally:
            self._loop.close()


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the live processes ``pids`` (their waited-for children too)."""
    ticks = 0
    for pid in pids:
        st = _stat(pid)
        if st is not None:  # fields[11:15]: utime stime cutime cstime (stat(5) 14-17)
            ticks += sum(int(x) for x in st[1][11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def pg_cpu() -> dict[int, float]:
    """CPU seconds of every live PostgreSQL server process, by pid.

    The difference of two snapshots (`pg_cpu_delta`) is what the server spent between them
    on every client, not only the benchmark's: another session's queries count too.
    """
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    for path in Path("/proc").glob("[0-9]*"):
        st = _stat(path.name)
        if st is not None and st[0] == "postgres":
            out[int(path.name)] = (int(st[1][11]) + int(st[1][12])) / tck
    return out


def pg_cpu_delta(before: dict[int, float]) -> float:
    """Server CPU since ``before`` (processes started since then count from zero)."""
    now = pg_cpu()
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in now.items())
