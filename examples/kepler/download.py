"""Download Kepler light curves for a list of KIC ids: the pipeline from the incident, done right.

The incident (DESIGN.md, failure 1): download threads pushed records onto a Redis list, a
sync loop wrote them to SQLite and trimmed the list with another batch size, and 4 of
about 1000 light curves vanished without a trace. Here each KIC id is a job named by its
identity; a file is written to a partial file, fsync-ed and renamed, and its SHA-256 is
committed before the job is; nothing is acknowledged before the commit, so the report at
the end accounts for every id: downloaded, failed (with the reason) or skipped (a
duplicate, naming the job with the same bytes). Run it twice: the second run redoes nothing.

Run::

    python examples/kepler/download.py [--kic-file FILE] [--out DIR] [--db URL]
                                       [--archive URL] [--fault-rate R]

Without ``--archive`` the local archive server (`syncward.testing.archive`) is started
in-process with faults on; it holds all but the last two ids of the list (those two
answer 404) and one duplicate. ``--archive URL`` downloads from any server with MAST's
layout (``/pub/kepler/lightcurves/<4 digits>/<9 digits>/kplr..._llc.fits``) instead, e.g.
one started with ``python examples/archive_server.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import anyio

from syncward import JobSpec, JobState, RetryPolicy, Runtime
from syncward.adapters.http import HttpFetcher, part_cleanup
from syncward.testing.archive import ArchiveConfig, ArchiveServer, light_curve_path

HERE = Path(__file__).resolve().parent


def read_kic_ids(path: Path) -> list[int]:
    """KIC ids, one per line; ``#`` starts a comment."""
    ids = []
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            ids.append(int(text))
    return ids


async def download(kic_ids: list[int], out: Path, db: str, *, archive_url: str | None = None,
                   fault_rate: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Download every id's light curve into ``out``; returns the report's JSON object
    (`Report.as_dict`), plus the skipped jobs under ``"skipped"``."""
    async with contextlib.AsyncExitStack() as stack:
        if archive_url is None:
            config = ArchiveConfig(kic_ids=tuple(kic_ids[:-2]), seed=seed, missing=0,
                                   duplicates=1, fault_rate=fault_rate, retry_after=1.0,
                                   max_size=2 * 1024 * 1024)
            archive = await stack.enter_async_context(ArchiveServer(config))
            archive_url = archive.url
        fetcher = await stack.enter_async_context(HttpFetcher())
        runtime = Runtime(fetcher.handler(out), store=db, concurrency=8, max_attempts=5,
                          retry=RetryPolicy(base=0.25, cap=2.0),
                          reconcile_hooks=[part_cleanup(out)])
        async with runtime as rt:
            await rt.submit(JobSpec({"kic": kic}, {"url": archive_url + light_curve_path(kic)})
                            for kic in kic_ids)
            await rt.join()
            report = await rt.report()
            skipped = await rt.store.jobs_in_state(JobState.SKIPPED)
    return {**report.as_dict(),
            "skipped": [{"identity": j.identity, "reason": j.last_error} for j in skipped]}


def summary(report: dict[str, Any], out: Path) -> str:
    c = report["counts"]
    lines = [f"{report['total']} KIC ids -> {out}",
             f"  succeeded {c['succeeded']}, failed {c['failed']}, skipped {c['skipped']}, "
             f"still to do {c['planned'] + c['leased']}"]
    lines += [f"  failed  KIC {f['identity']['kic']} after {f['attempts']} attempt(s): "
              f"{f['error']}" for f in report["failures"]]
    lines += [f"  skipped KIC {s['identity']['kic']}: {s['reason']}" for s in report["skipped"]]
    lines.append(f"  stats drift: {report['stats_drift']} (always 0)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kic-file", type=Path, default=HERE / "kic_ids.txt")
    parser.add_argument("--out", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--db", default=None, help="default: sqlite:///OUT/kepler.db")
    parser.add_argument("--archive", default=None, help="base URL of an archive to use")
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="syncward-kepler-"))
    out.mkdir(parents=True, exist_ok=True)
    db = args.db or f"sqlite:///{out.resolve() / 'kepler.db'}"
    dest = out / "lightcurves"
    report = anyio.run(functools.partial(
        download, read_kic_ids(args.kic_file), dest, db, archive_url=args.archive,
        fault_rate=args.fault_rate))
    print(json.dumps(report, indent=2) if args.json else summary(report, dest))


if __name__ == "__main__":
    main()
