"""Stress harness: one runtime, many jobs, handlers and actors that fail on purpose.

Each job's behaviour is fixed by its id and the seed (so the expected end state of every
job is known in advance):

  ok          returns a result
  flaky       raises on its first attempts, then succeeds (or fails if it never gets there)
  permanent   raises Permanent: failed at once
  hang        sleeps past the job timeout on its first attempt, then succeeds
  effect      its effect raises on the first attempt, then the job succeeds

and crashes are injected into every actor kind at random (the supervisor restarts them).
At the end the invariants are checked against the database:

  * every submitted key is in exactly one terminal state, and it is the expected one
    (failures only where injected);
  * the operation ledger has at most one row per op key, and each effect of a succeeded
    job has its row;
  * the stats-keeper's counts equal the database's, and it found no drift;
  * restarts were counted for the crashes injected.

Prints one JSON line (throughput and the invariants) and exits 1 if one broke.

Run: python examples/stress.py [--jobs 100000] [--seed 1] [--db PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import syncward
from syncward.testing import Faults

MAX_ATTEMPTS = 4
CRASH_POINTS = {
    "syncer.before_commit": 0.01,
    "syncer.after_commit": 0.01,
    "downloader.before_handler": 0.0005,
    "downloader.before_outcome": 0.0005,
    "stats.apply": 0.01,
    "reaper.before_reap": 0.2,
}


def behaviour(n: int, seed: int) -> tuple[str, int]:
    """The kind of job ``n`` and, for flaky jobs, how many attempts fail first."""
    r = random.Random(seed * 1_000_003 + n).random()
    if r < 0.05:
        return "flaky", 1 + int(r * 1000) % (MAX_ATTEMPTS + 1)  # 1..MAX_ATTEMPTS+1
    if r < 0.07:
        return "permanent", 0
    if r < 0.0705:
        return "hang", 0
    if r < 0.09:
        return "effect", 0
    return "ok", 0


def expected_state(n: int, seed: int) -> str:
    kind, fails = behaviour(n, seed)
    if kind == "permanent" or (kind == "flaky" and fails >= MAX_ATTEMPTS):
        return "failed"
    return "succeeded"


def make_handler(seed: int) -> syncward.Handler:
    async def handler(job: syncward.Job, ctx: syncward.Context) -> Any:
        n = int(job.identity["n"])
        kind, fails = behaviour(n, seed)
        if kind == "flaky" and job.attempt <= fails:
            raise ValueError(f"flaky job {n}, attempt {job.attempt}")
        if kind == "permanent":
            raise syncward.Permanent(f"job {n} can never work")
        if kind == "hang" and job.attempt == 1:
            await anyio.sleep(60)
        if kind == "effect":
            def effect() -> int:
                if job.attempt == 1:
                    raise OSError(f"effect of job {n} failed")
                return n
            return await ctx.effect("record", effect)
        return n

    return handler


async def run(db: Path, jobs: int, seed: int) -> dict[str, Any]:
    faults = Faults(seed=seed)
    for point, rate in CRASH_POINTS.items():
        faults.rate(point, rate)
    runtime = syncward.Runtime(
        make_handler(seed), store=f"sqlite:///{db}", concurrency=100, max_attempts=MAX_ATTEMPTS,
        job_timeout=0.5, retry=syncward.RetryPolicy(base=0.01, cap=0.1), faults=faults,
        reap_every=0.5, recount_every=1.0,
        intensity=syncward.RestartIntensity(max_restarts=1000, within=1.0),
    )
    start = time.perf_counter()
    async with runtime as rt:
        await rt.submit({"n": n} for n in range(jobs))
        await rt.join()
        elapsed = time.perf_counter() - start
        faults.disarm()
        # A crash that fired just before the disarm is restarted a moment later.
        with anyio.move_on_after(5):
            while len({(r["supervisor"], r["actor"], r["count"]) for r in rt.restarts
                       if r["kind"] == "restarted"}) < sum(faults.fired.values()):
                await anyio.sleep(0.01)
        await rt.wait(lambda s: True)
        stats = rt.stats()
        restarts = len([r for r in rt.restarts if r["kind"] == "restarted"])
    return {"elapsed": elapsed, "stats": stats, "restarts": restarts,
            "crashes": dict(faults.fired)}


def check(db: Path, jobs: int, seed: int, outcome: dict[str, Any]) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        states = {json.loads(i)["n"]: s for i, s in conn.execute(
            "SELECT identity, state FROM jobs")}
        ops, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT op_key) FROM ops").fetchone()
        counts = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
    finally:
        conn.close()
    wrong = [n for n in range(jobs) if states.get(n) != expected_state(n, seed)]
    effect_jobs = {n for n in range(jobs) if behaviour(n, seed)[0] == "effect"}
    stats = outcome["stats"]
    stats_counts = {s.value: c for s, c in stats.counts.items() if c}
    crashes = sum(outcome["crashes"].values())
    invariants = {
        "every_key_once": len(states) == jobs,
        "expected_terminal_states": not wrong,
        "ledger_unique": ops == distinct,
        "effects_recorded": ops == len(effect_jobs),
        "stats_equal_db": stats_counts == counts and stats.drift_total == 0,
        "restarts_counted": outcome["restarts"] >= crashes > 0,
    }
    return {"invariants": invariants, "wrong": wrong[:10], "counts": counts,
            "ops": ops, "effects_expected": len(effect_jobs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "stress.db"
        outcome = anyio.run(run, db, args.jobs, args.seed)
        result = check(db, args.jobs, args.seed, outcome)
    ok = all(result["invariants"].values())
    print(json.dumps({
        "harness": "stress", "ok": ok, "jobs": args.jobs, "seed": args.seed,
        "jobs_per_s": round(args.jobs / outcome["elapsed"]),
        "seconds": round(outcome["elapsed"], 2), "restarts": outcome["restarts"],
        "crashes_injected": outcome["crashes"], **result,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
