"""Run the benchmark suite: every benchmark module in turn, JSON lines out.

Each module runs in its own process (so peak RSS and event loops do not mix) and prints
one JSON object per line; this collects them on stdout and, with ``--out``, in a file.
A module that cannot run (no Redis or PostgreSQL server, no peers' virtualenvs) ends
with an error line for it, and the suite goes on with the next.

Run: python -m benchmarks [--quick] [--peers] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SUITE: list[tuple[str, list[str], list[str]]] = [
    # (module, full arguments, --quick arguments)
    ("benchmarks.store", [], []),
    ("benchmarks.syncer", [], ["--messages", "20000"]),
    ("benchmarks.importer", [], ["--rows", "20000"]),
    ("benchmarks.runtime", [], ["--jobs", "5000", "--rss-jobs", "100000",
                                "--recover", "20000"]),
    ("benchmarks.latency", [], ["--seconds", "1"]),
    ("benchmarks.http", [], []),
    ("benchmarks.redis_intake", [], []),
    ("benchmarks.postgres", [], ["--quick"]),
    ("benchmarks.web", [], ["--jobs", "10000", "--rounds", "4"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens)")
    parser.add_argument("--peers", action="store_true", help="also run benchmarks.peers")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    suite = list(SUITE)
    if args.peers:
        suite.append(("benchmarks.peers", [], ["--jobs", "5000"]))
    lines: list[str] = []
    failed = 0
    for module, full, quick in suite:
        if not (Path(__file__).parent / (module.split(".")[1] + ".py")).exists() and not (
                Path(__file__).parent / module.split(".")[1]).is_dir():
            lines.append(json.dumps({"bench": module, "skipped": "module not present"}))
            continue
        proc = subprocess.run([sys.executable, "-m", module, *(quick if args.quick else full)],
                              capture_output=True, text=True, check=False)
        out = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0:
            failed += 1
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            out.append(json.dumps({"bench": module, "error": err[:300]}))
        for line in out:
            print(line, flush=True)
        lines.extend(out)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
