"""Crash loop: SIGKILL `syncward run` at random moments, restart it, then check everything.

Runs ``syncward run`` on a manifest as a subprocess, kills it with SIGKILL at a random
moment K times (restarting it each time), then runs it to completion and checks, from
``syncward report --json`` and the files the effects wrote:

  * nothing missing from the manifest, nothing left planned or leased;
  * every job's output file exists exactly once with the right content;
  * the operation ledger holds one committed result per effect;
  * how many effects ran more than once (at-least-once between an effect and the commit
    that records it: a kill in that window runs it again on restart). Reported, not an
    error; committed results stay unique.

Prints one JSON line and exits 1 if an invariant broke.

Run: python examples/crash_loop/run.py [--jobs 2000] [--kills 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def syncward(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "syncward.cli", *args]


def run_until_killed(cmd: list[str], env: dict[str, str], after: float) -> int | None:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=after)
        return proc.returncode  # finished before the kill
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return None


def check(work: Path, jobs: int, report: dict[str, Any]) -> dict[str, Any]:
    out = work / "out"
    runs = Counter(line for line in (out / "runs.log").read_text().split() if line)
    files = {p.stem: p.read_text() for p in out.glob("*.txt")}
    conn = sqlite3.connect(work / "jobs.db")
    try:
        ops, distinct = conn.execute("SELECT count(*), count(DISTINCT op_key) FROM ops").fetchone()
    finally:
        conn.close()
    manifest = report["manifest"] or {}
    invariants = {
        "nothing_missing": manifest.get("missing") == [] and manifest.get("entries") == jobs,
        "nothing_planned_or_leased": report["counts"]["planned"] == 0
        and report["counts"]["leased"] == 0,
        "all_succeeded": report["counts"]["succeeded"] == jobs,
        "outputs_exactly_once": len(files) == jobs
        and all(files.get(str(n)) == f"output of {n}\n" for n in range(jobs)),
        "ledger_one_result_per_effect": ops == distinct == jobs,
    }
    return {"invariants": invariants,
            "effects_run_more_than_once": sum(1 for c in runs.values() if c > 1),
            "effect_runs": sum(runs.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        (work / "out").mkdir(parents=True, exist_ok=True)
        (work / "out" / "runs.log").touch()
        manifest = work / "manifest.txt"
        manifest.write_text("".join(f"{n}\n" for n in range(args.jobs)))
        env = {**os.environ, "CRASH_LOOP_OUT": str(work / "out")}
        db = f"sqlite:///{work / 'jobs.db'}"
        run = syncward("run", str(manifest), "--handler", f"{HERE / 'handler.py'}:handler",
                       "--db", db, "--concurrency", "32", "--no-progress", "--json", env=env)
        start = time.perf_counter()
        kills = 0
        for _ in range(args.kills):
            if run_until_killed(run, env, rng.uniform(0.3, 1.5)) is None:
                kills += 1
        final = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - start
        report_proc = subprocess.run(syncward("report", "--db", db, "--json", env=env), env=env,
                                     capture_output=True, text=True, timeout=120)
        report = json.loads(report_proc.stdout)
        result = check(work, args.jobs, report)
    result["invariants"]["final_run_exit_0"] = final.returncode == 0
    ok = all(result["invariants"].values())
    print(json.dumps({"harness": "crash_loop", "ok": ok, "jobs": args.jobs, "kills": kills,
                      "seconds": round(elapsed, 1), **result}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
