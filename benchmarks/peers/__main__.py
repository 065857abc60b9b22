"""Entry point: python -m benchmarks.peers (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from typing import Any

from benchmarks.peers import (
    arq_peer,
    dramatiq_peer,
    pgqueuer_peer,
    procrastinate_peer,
    saq_peer,
    taskiq_peer,
)
from benchmarks.peers._harness import Peer, RunFailed, install, log, measure, measure_syncward
from benchmarks.peers._harness import versions as peer_versions

PEERS: dict[str, Peer] = {p.name: p for p in (arq_peer.PEER, saq_peer.PEER, taskiq_peer.PEER,
                                              dramatiq_peer.PEER, pgqueuer_peer.PEER,
                                              procrastinate_peer.PEER)}
WORKLOADS = ("noop", "io")
CONCURRENCY = 100
SYNCWARD_GUARANTEE = (
    "a job's outcome is committed exactly once (SQLite, synchronous=FULL; job key UNIQUE; "
    "leases fenced, so a lost owner's late write is rejected). Killed mid-job: the next "
    "start-up on the store takes its OS lock, so the dead boot's leases go back at once, "
    "each counted as an attempt (max_attempts 5): the handler may run again (at-least-once "
    "execution); an effect run through ctx.effect whose result committed is not re-run "
    "(between an effect finishing and its commit it can run twice)."
)
SYNCWARD_PG_GUARANTEE = (
    "a job's outcome is committed exactly once (PostgreSQL; job key UNIQUE; leases fenced, "
    "so a lost owner's late write is rejected). Killed mid-job: its session ends, so its "
    "advisory lock is gone; a live runtime on the store (its liveness keeper looks every "
    "0.5 s) gives the dead boot's leases back within about a second, each counted as an "
    "attempt (max_attempts 5): the handler may run again (at-least-once execution); an "
    "effect run through ctx.effect whose result committed is not re-run. With no live "
    "runtime, the next one to start does it at start-up."
)
SYNCWARD_TUNING = {
    "redis": "concurrency=100, uvloop, SQLite synchronous=FULL in a temp dir",
    "postgresql": "concurrency=100, uvloop, PostgreSQL store (a fresh schema per run), "
                  "server settings as found",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--only", default=None, metavar="PEER[,PEER...]",
                        help=f"run these peers only ({', '.join(PEERS)}; syncward is always "
                             "measured, for the ratio: on SQLite beside the Redis peers, on "
                             "PostgreSQL beside the PostgreSQL ones)")
    parser.add_argument("--skip-install", action="store_true",
                        help="use the virtualenvs under benchmarks/peers/.venvs as they are")
    parser.add_argument("--workload", choices=WORKLOADS, default=None,
                        help="one workload only (default: both)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per (peer, workload); the best one is reported")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server (each peer uses its own database number on it)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL server (each PostgreSQL peer makes its own database "
                             "on it; syncward a schema in bench_syncward)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds allowed for each enqueue and each timed run")
    args = parser.parse_args()

    only = None if args.only is None else set(args.only.split(","))
    if only is not None and only - {*PEERS, "syncward"}:
        parser.error(f"--only: unknown peer(s) {', '.join(sorted(only - {*PEERS, 'syncward'}))}")
    peers = [p for name, p in PEERS.items() if only is None or name in only]
    args.pg_settings = None
    if any(p.backend == "postgresql" for p in peers):
        args.pg_settings = _pg_settings(args.pg)
    workloads = [w for w in WORKLOADS if args.workload in (None, w)]
    failures = 0
    installed: dict[str, dict[str, str] | str] = {}
    for peer in peers:
        try:
            install(peer, skip=args.skip_install)
            installed[peer.name] = peer_versions(peer)
            log(f"{peer.name}: {installed[peer.name]}")
        except RunFailed as exc:
            installed[peer.name] = f"not installed: {exc}"
            log(f"{peer.name}: {installed[peer.name]}")

    for workload in workloads:
        bench = f"peers.{workload}"
        paired: dict[str, list[dict[str, Any]]] = {}
        for peer in peers:
            vers = installed[peer.name]
            extra = {"tuning": peer.tuning, "versions": vers if isinstance(vers, dict) else {},
                     "crash_guarantee": peer.crash_guarantee, "store": peer.backend}
            if isinstance(vers, str):
                emit(bench, peer.name, vers, None, args, **extra)
                failures += 1
                continue
            # syncward runs right before each peer, so that both see the same machine load,
            # on SQLite beside a Redis peer and on the same PostgreSQL server beside the others
            pg = args.pg if peer.backend == "postgresql" else None
            log(f"{bench}: syncward on {peer.backend if pg else 'sqlite'} (paired with "
                f"{peer.name})")
            sw = best(partial(measure_syncward, workload, args.jobs, timeout=args.timeout,
                              pg_url=pg), args.repeat)
            log(f"{bench}: {peer.name}")
            result = best(partial(measure, peer, workload, args.jobs, redis_url=args.redis,
                                  pg_url=args.pg, timeout=args.timeout), args.repeat)
            emit(bench, peer.name, result, sw if isinstance(sw, dict) else None, args, **extra)
            failures += not isinstance(result, dict) or not isinstance(sw, dict)
            if isinstance(sw, dict):
                paired.setdefault(peer.backend, []).append(sw)
        if not peers:
            log(f"{bench}: syncward")
            sw = best(partial(measure_syncward, workload, args.jobs, timeout=args.timeout),
                      args.repeat)
            failures += not isinstance(sw, dict)
            paired = {"redis": [sw]} if isinstance(sw, dict) else {}
        for backend, runs in paired.items():  # syncward's own lines: the median of its runs
            ordered = sorted(runs, key=lambda r: r["value"])
            median = dict(ordered[len(ordered) // 2])
            median["runs"] = [round(r["value"]) for r in runs]
            name = "syncward" if backend == "redis" else "syncward-postgresql"
            emit(bench, name, median, median, args, tuning=SYNCWARD_TUNING[backend],
                 versions={"syncward": _sw_version()},
                 crash_guarantee=SYNCWARD_GUARANTEE if backend == "redis"
                 else SYNCWARD_PG_GUARANTEE,
                 store="sqlite" if backend == "redis" else "postgresql")
    sys.exit(1 if failures else 0)


def best(run: Any, repeat: int) -> dict[str, Any] | str:
    """The fastest of ``repeat`` runs, or why the run failed."""
    results = []
    for _ in range(max(1, repeat)):
        try:
            results.append(run())
        except RunFailed as exc:
            log(f"failed: {exc}")
            return f"run failed: {exc}"
    top = max(results, key=lambda r: r["value"])
    if repeat > 1:
        top["runs"] = [round(r["value"]) for r in results]
    return top


def emit(bench: str, peer: str, result: dict[str, Any] | str, sw: dict[str, Any] | None,
         args: argparse.Namespace, **extra: Any) -> None:
    """One JSON line; ``ratio`` is syncward's jobs/s over the peer's (from the paired run),
    ``cpu_ratio`` the peer's CPU per job (worker + redis-server or PostgreSQL server) over
    syncward's (worker, + PostgreSQL server when syncward ran on it)."""
    line: dict[str, Any] = {"bench": bench, "peer": peer, "unit": "jobs/s"}
    sw_value = sw["value"] if sw else None
    if isinstance(result, dict):
        result = dict(result)
        value = result.pop("value")
        line["value"] = round(value)
        line["syncward"] = round(sw_value) if sw_value else None
        line["ratio"] = round(sw_value / value, 2) if sw_value else None
        if sw and not peer.startswith("syncward"):
            peer_cpu = result["cpu_s"] + result.get("redis_cpu_s", 0.0) + result.get(
                "pg_cpu_s", 0.0)
            sw_cpu = sw["cpu_s"] + sw.get("pg_cpu_s", 0.0)
            line["syncward_cpu_s"] = sw["cpu_s"]
            if "pg_cpu_s" in sw:
                line["syncward_pg_cpu_s"] = sw["pg_cpu_s"]
            line["cpu_ratio"] = round(peer_cpu / sw_cpu, 2) if sw_cpu else None
        line.update(result)
    else:
        line.update(value=None, syncward=round(sw_value) if sw_value else None, ratio=None,
                    error=result)
    line.update(jobs=args.jobs, concurrency=CONCURRENCY, load1=round(os.getloadavg()[0], 2),
                **extra)
    if extra.get("store") == "postgresql" and args.pg_settings:
        line["server"] = args.pg_settings
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _pg_settings(server: str) -> dict[str, str] | None:
    """``SHOW synchronous_commit, fsync, autovacuum, ...`` on the server, for every line."""
    import anyio

    from benchmarks._pg import server_settings

    try:
        return anyio.run(server_settings, server)
    except Exception as exc:  # the runs will say what is wrong; the lines just lack this
        log(f"cannot read the PostgreSQL server's settings: {exc}")
        return None


def _sw_version() -> str:
    from importlib.metadata import version

    return version("syncward")


if __name__ == "__main__":
    main()
